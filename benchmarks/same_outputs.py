"""Outputs of ``predict`` and the BIDS App on fixed synthetic data, to compare two commits byte for byte.

    PYTHONPATH=/path/to/old/checkout python3 benchmarks/same_outputs.py OLD_OUT
    python3 benchmarks/same_outputs.py NEW_OUT [--no-lesions]
    diff -r OLD_OUT/pout NEW_OUT/pout   # and bout, bout2, pout2

A stand-in network (two 1x1 convolutions: a band of scaled intensity) on the synthetic BIDS dataset
(:func:`clci_keras.bids.synthetic.write_synthetic_bids`, seed 0: a template-grid scan, a native
scan, two sessions, a truncated file): ``bids participant`` with one network and with a 2-network
ensemble + flip TTA (the native scan registered), ``predict`` of every T1w, and ``predict`` of
one scan with an ensemble, TTA, registration and ``--min-lesion-size``. Masks, probability maps and
QC pictures must be equal; sidecars differ only by paths, times and dates. Extra arguments go to
the ``predict`` runs (``--no-lesions``: the outputs an older commit writes).
"""
import os
import sys

import keras
import numpy as np

from clci_keras.bids.synthetic import write_synthetic_bids
from clci_keras.cli import main
from clci_keras.models import register_model, save_weights_legacy

MODEL = "same_outputs_band"
FAST = ["--reg-resolution", "6", "--reg-iterations", "20,10", "--intensity", "v2"]


def _band(input_shape=(224, 176, 1), num_class=1, name=MODEL, scale=1.0):
    x = keras.Input(input_shape)
    h = keras.layers.Conv2D(2, 1, activation="relu", kernel_initializer=keras.initializers.Constant(1.0),
                            bias_initializer=keras.initializers.Constant([-0.1, -0.35]))(x)
    k = np.array([400.0, -4000.0]).reshape(1, 1, 2, 1) * scale
    y = keras.layers.Conv2D(num_class, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(k),
                            bias_initializer=keras.initializers.Constant(-4.0))(h)
    return keras.Model(x, y, name=name)


def main_(out, extra):
    register_model(MODEL, _band, description="stand-in", reference="benchmarks/same_outputs.py")
    ds = os.path.join(out, "ds")
    write_synthetic_bids(ds, seed=0)
    w1, w2 = os.path.join(out, "w1.h5"), os.path.join(out, "w2.h5")
    save_weights_legacy(_band(), w1)
    save_weights_legacy(_band(scale=0.5), w2)
    common = ["--model", MODEL]
    print("bids", main(["bids", ds, os.path.join(out, "bout"), "participant", "--weights", w1, *common, *FAST]))
    print("bids ensemble", main(["bids", ds, os.path.join(out, "bout2"), "participant", "--weights", w1, w2, *common,
                                 "--tta", "flip", *FAST]))
    t1s = sorted(os.path.join(r, f) for r, _, fs in os.walk(ds) for f in fs
                 if f.endswith("T1w.nii.gz") and "sub-04" not in f)
    print("predict", main(["predict", *t1s, "-o", os.path.join(out, "pout"), "--weights", w1, *common, "--prob",
                           "--intensity", "v2", *extra]))
    print("predict ensemble", main(["predict", t1s[0], "-o", os.path.join(out, "pout2"), "--ensemble", w1, w2,
                                    *common, "--prob", "--tta", "flip", "--register", "--min-lesion-size", "20",
                                    *FAST, *extra]))


if __name__ == "__main__":
    main_(sys.argv[1], sys.argv[2:])
