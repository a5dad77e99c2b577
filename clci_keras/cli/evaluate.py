"""`clci-keras evaluate`: per-patient 3D scores of trained weights on a split part."""
from __future__ import annotations

import sys

HELP = "per-patient 3D scores of trained weights"


def add_arguments(parser):
    p = parser
    p.add_argument("--weights", required=True, metavar="W", help="weights (.h5 legacy, .weights.h5, .keras)")
    p.add_argument("--model", default="clci_net", help="architecture of the weights (default: clci_net)")
    p.add_argument("--h5", required=True, metavar="DATA.h5", help="HDF5 slice file")
    p.add_argument("--split", required=True, metavar="SPLIT.json", help="split file")
    p.add_argument("--part", default="test", choices=("test", "val", "train"), help="(default: test)")
    p.add_argument("--fold", type=int, default=None, help="fold number (k-fold split files)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the weights' folder)")
    p.add_argument("--crop", default="clci", help="crop window (default: clci = 224x176)")
    p.add_argument("--batch-size", type=int, default=8, help="prediction batch (default: 8)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: 0.5)")
    p.add_argument("--slices", choices=("all", "brain"), default="all",
                   help="all 189 slices (original) or only the MNI brain z-range (faster)")
    p.add_argument("--manifest", help="weights manifest whose entry gets the scores")
    p.add_argument("--name", help="manifest entry name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    try:
        from clci_keras.evaluation.evaluate import evaluate_run, format_summary

        s = evaluate_run(args.weights, args.model, args.h5, args.split, part=args.part, out_dir=args.out,
                         fold=args.fold, crop=args.crop, batch_size=args.batch_size,
                         threshold=args.threshold, slices=args.slices, progress=not args.quiet,
                         manifest=args.manifest, manifest_name=args.name)
    except (OSError, ValueError) as e:
        print(f"clci-keras evaluate: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.model} on {len(s['subjects'])} {args.part} patients: {format_summary(s['scores'])}")
    return 0
