#!/usr/bin/env python
"""Convert an ATLAS release (R1.1 or 2.0) into the HDF5 slice file used for training.

Same as ``clci-keras prep``; see data_prep/README.md for obtaining ATLAS and
for what each step does.

Examples::

    python data_prep/prepare_atlas.py /data/ATLAS_R1.1 -o /data/ATLAS_R1.1.h5 --workers 2
    python data_prep/prepare_atlas.py /data/ATLAS_2.0 -o /data/ATLAS_2.0.h5 --layout v2
    python data_prep/prepare_atlas.py /data/ATLAS_R1.1 -o /data/ATLAS_R1.1.h5 --split splits/fold0.json --fold 0
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clci_keras.cli import prep, split  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prep.add_arguments(parser)
    parser.add_argument("--split", metavar="SPLIT.json", default=None,
                        help="also write the X-Net 5-fold split file for --fold (after conversion)")
    parser.add_argument("--fold", type=int, default=0, help="fold for --split (default: 0)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds for --split (default: 5)")
    args = parser.parse_args(argv)
    rc = prep.run(args)
    if rc or not args.split:
        return rc
    split_args = argparse.Namespace(
        h5=args.output, output=args.split, mode="kfold", val=None, test=0.2, folds=args.folds, fold=args.fold,
        seed=0, overwrite=args.overwrite,
    )
    return split.run(split_args)


if __name__ == "__main__":  # the guard matters: --workers starts processes
    sys.exit(main())
