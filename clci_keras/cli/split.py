"""`clci-keras split`: write a subject-level split file (hold-out or k-fold)."""
from __future__ import annotations

import sys

HELP = "write a subject-level split file (hold-out or 5-fold)"


def add_arguments(parser):
    parser.add_argument("h5", metavar="DATA.h5", help="HDF5 slice file from `clci-keras prep`")
    parser.add_argument("-o", "--output", required=True, metavar="SPLIT.json", help="output split file")
    parser.add_argument("--mode", choices=("holdout", "kfold"), default="holdout", help="split kind (default: holdout)")
    parser.add_argument("--val", type=float, default=None,
                        help="validation fraction (default: 0.1 for holdout, 0 for kfold)")
    parser.add_argument("--test", type=float, default=0.2, help="holdout test fraction (default: 0.2)")
    parser.add_argument("--folds", type=int, default=5, help="kfold: number of folds (default: 5)")
    parser.add_argument("--fold", default="0",
                        help="kfold: fold index K, or 'all' for every fold in one file (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="holdout seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split file")


def run(args) -> int:
    import os

    from clci_keras.data.preprocess import read_subjects
    from clci_keras.data.splits import make_holdout_split, make_kfold_split, make_kfold_splits, save_split

    if os.path.exists(args.output) and not args.overwrite:
        print(f"clci-keras split: error: {args.output} exists (use --overwrite)", file=sys.stderr)
        return 2
    try:
        ids = [s["subject_id"] for s in read_subjects(args.h5)]
        if args.mode == "holdout":
            split = make_holdout_split(ids, val=0.1 if args.val is None else args.val, test=args.test, seed=args.seed)
        elif str(args.fold).lower() == "all":
            split = make_kfold_splits(ids, k=args.folds, val=args.val or 0.0)
        else:
            try:
                fold = int(args.fold)
            except ValueError:
                raise ValueError(f"--fold must be an integer or 'all', got {args.fold!r}") from None
            split = make_kfold_split(ids, k=args.folds, fold=fold, val=args.val or 0.0)
        split["h5"] = os.path.abspath(args.h5)
        save_split(split, args.output)
    except (OSError, ValueError) as e:
        print(f"clci-keras split: error: {e}", file=sys.stderr)
        return 2
    folds = f" ({len(split['folds'])} folds; fold 0 shown)" if "folds" in split else ""
    print(f"wrote {args.output}: {args.mode}{folds}, train {len(split['train'])}, val {len(split['val'])}, "
          f"test {len(split['test'])} subjects")
    return 0
