#!/usr/bin/env python
"""Convert an ATLAS release (R1.1 or 2.0) into the HDF5 slice file used for training.

Same as ``clci-keras prep`` (and, with ``--split``, ``clci-keras split DATA.h5
--mode kfold``); see data_prep/README.md for obtaining ATLAS and for what each
step does.

Examples::

    python data_prep/prepare_atlas.py /data/ATLAS_R1.1 -o /data/ATLAS_R1.1.h5 --workers 2
    python data_prep/prepare_atlas.py /data/ATLAS_2.0 -o /data/ATLAS_2.0.h5 --layout v2
    python data_prep/prepare_atlas.py /data/ATLAS_R1.1 -o /data/ATLAS_R1.1.h5 --split splits/fold0.json --fold 0
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clci_keras.cli import prep, report  # noqa: E402


def write_fold(h5, path, folds=5, fold=0, overwrite=False):
    """Write fold ``fold`` of X-Net's ``folds``-fold split of ``h5``'s subjects to ``path``; returns the split.

    The file ``clci-keras split H5 -o PATH --mode kfold --folds N --fold K`` writes.

    Raises:
        FileExistsError: ``path`` exists and not ``overwrite``.
        ValueError: a bad ``folds`` / ``fold`` or an unreadable ``h5`` (the message says which).
    """
    from clci_keras.data import make_kfold_split, read_subjects, save_split

    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists (use --overwrite)")
    split = make_kfold_split([s["subject_id"] for s in read_subjects(h5)], k=folds, fold=fold)
    split["h5"] = os.path.abspath(h5)
    save_split(split, path)
    return split


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
    try:
        split = write_fold(args.output, args.split, folds=args.folds, fold=args.fold, overwrite=args.overwrite)
    except (OSError, ValueError) as e:
        return report("split", e)
    print(f"wrote {args.split}: kfold, train {len(split['train'])}, val {len(split['val'])}, "
          f"test {len(split['test'])} subjects")
    return 0


if __name__ == "__main__":  # the guard matters: --workers starts processes
    sys.exit(main())
