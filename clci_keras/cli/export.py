"""`clci-keras export`: trained weights as an ONNX file or a TensorFlow SavedModel folder.

Examples::

    clci-keras export --weights runs/clci_net/fold0/clci_net_weights.h5 --format onnx -o clci_net.onnx
    clci-keras export --weights w.h5 --model baseline --format savedmodel -o baseline_savedmodel

Through Keras' own ``model.export``; the artifact is checked against Keras on a
seeded batch (``--no-check`` skips it) and gets a model card beside it
(``PATH.card.json``). Needs ``pip install -e ".[export]"`` (docs/export.md).
"""
from __future__ import annotations

import os

from clci_keras.cli import report
from clci_keras.data.constants import CROPS
from clci_keras.inference.export import FORMATS, ExportUnavailable, export_model


def add_arguments(parser):
    parser.add_argument("--weights", required=True, metavar="W", help="trained weights (.h5, .weights.h5, .keras)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="registered model name (default: the weights' model card's, else clci_net)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="onnx (a .onnx file: ONNX Runtime, OpenVINO...) or savedmodel (a TensorFlow "
                             "SavedModel folder: TensorFlow Serving, OpenVINO...)")
    parser.add_argument("-o", "--output", required=True, metavar="PATH", help="the .onnx file or SavedModel folder")
    parser.add_argument("--crop", default=None, choices=CROPS,
                        help="input window (default: the weights' model card's, else clci = 224x176)")
    parser.add_argument("--no-optimize", action="store_true",
                        help="export the model layer for layer as trained (default: the exact zero-state "
                             "ConvLSTM rewrite, no ONNX loop, 19%% fewer FLOPs)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not compare the artifact's outputs with Keras' on a seeded batch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        info = export_model(args.weights, args.output, model=args.model, fmt=args.format, crop=args.crop,
                            optimize=not args.no_optimize, check=not args.no_check, overwrite=args.overwrite)
    except ExportUnavailable as e:  # an ImportError: one line saying what to install, exit 2
        return report("export", e)
    diff = info["max_abs_diff"]
    checked = ("not checked" if args.no_check else "not checked: no runtime for it installed" if diff is None
               else f"max |Keras - {args.format}| = {diff:.2g} on 2 slices")
    print(f"exported {info['model']} ({'x'.join(map(str, info['input_shape']))}, crop {info['crop']}) from "
          f"{args.weights} on the {info['backend']} backend to {info['path']} ({args.format}, "
          f"{info['bytes'] / 1e6:.1f} MB, {info['seconds']:.1f} s; {checked}); card {info['card']}")
    return 0
