"""`clci-keras split`: write a subject-level split file (hold-out, k-fold, published preset or id lists)."""
from __future__ import annotations

import argparse
import os
import sys

from clci_keras.cli import report
from clci_keras.data.preprocess import read_subjects
from clci_keras.data.splits import (
    make_holdout_split,
    make_kfold_split,
    make_kfold_splits,
    missing_summary,
    preset_split,
    resolve_split,
    save_split,
    split_from_lists,
)
from clci_keras.fileio import check_not_an_input, check_writable_folder


def add_arguments(parser):
    parser.add_argument("h5", metavar="DATA.h5", nargs="?", default=None,
                        help="HDF5 slice file from `clci-keras prep` (optional with --preset / --from-lists: "
                             "without it the file lists subject ids, resolved when it is used)")
    parser.add_argument("-o", "--output", required=True, metavar="SPLIT.json", help="output split file")
    parser.add_argument("--mode", choices=("holdout", "kfold"), default="holdout", help="split kind (default: holdout)")
    parser.add_argument("--val", type=float, default=None,
                        help="validation fraction (default: 0.1 for holdout, 0 for kfold)")
    parser.add_argument("--test", type=float, default=0.2, help="holdout test fraction (default: 0.2)")
    parser.add_argument("--folds", type=int, default=5, help="kfold: number of folds (default: 5)")
    parser.add_argument("--fold", type=_fold_arg, default=0,
                        help="kfold: fold index K, or 'all' for every fold in one file (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="holdout seed (default: 0)")
    g = parser.add_argument_group("published splits and id lists (subjects matched by id, not position)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--preset", metavar="NAME",
                   help="a published split by name: spin_traintest (Wong et al. 2021, ATLAS R1.2, 212 train / 27 test)")
    x.add_argument("--from-lists", nargs=2, metavar=("TRAIN.txt", "TEST.txt"),
                   help="plain subject lists, one per line: an id (c0008s0028t01) or a path through the "
                        "subject's folder (c0008/c0008s0028t01/c0008s0028t01_t1w_stx.npy)")
    g.add_argument("--val-list", metavar="VAL.txt", help="with --from-lists: a validation list")
    g.add_argument("--allow-missing", action="store_true",
                   help="with DATA.h5: keep the ids the file holds and record the missing ones "
                        "(default: fail and list them)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing split file")


def _fold_arg(value):
    """argparse ``type``: a fold number or ``all``."""
    if str(value).lower() == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'all', got {value!r}") from None


def _id_split(args):
    if args.preset:
        return preset_split(args.preset)
    return split_from_lists(args.from_lists[0], args.from_lists[1], val=args.val_list)


def run(args) -> int:
    by_id = bool(args.preset or args.from_lists)
    try:
        check_not_an_input(args.output, [args.h5, *(args.from_lists or ()), args.val_list], what="split file")
        if os.path.exists(args.output) and not args.overwrite:
            raise FileExistsError(f"{args.output} exists (use --overwrite)")
        check_writable_folder(os.path.dirname(os.path.abspath(args.output)), what="folder of the split file")
        if args.val_list and not args.from_lists:
            raise ValueError("--val-list needs --from-lists")
        if by_id:
            split = _id_split(args)
            if args.h5 is not None:
                ids = [s["subject_id"] for s in read_subjects(args.h5)]
                split = resolve_split(split, ids, allow_missing=args.allow_missing,
                                      source=args.preset or " + ".join(args.from_lists), h5=args.h5)
            save_split(split, args.output)
        else:
            if args.h5 is None:
                raise ValueError("DATA.h5 is required for --mode holdout / kfold")
            ids = [s["subject_id"] for s in read_subjects(args.h5)]
            if args.mode == "holdout":
                split = make_holdout_split(ids, val=0.1 if args.val is None else args.val, test=args.test,
                                           seed=args.seed)
            elif args.fold == "all":
                split = make_kfold_splits(ids, k=args.folds, val=args.val or 0.0)
            else:
                split = make_kfold_split(ids, k=args.folds, fold=args.fold, val=args.val or 0.0)
            split["h5"] = os.path.abspath(args.h5)
            save_split(split, args.output)
    except (OSError, ValueError) as e:
        return report("split", e)
    if by_id:
        kind = f"preset {args.preset}" if args.preset else "id lists"
        counts = ", ".join(f"{p} {len(split['ids'][p])}" for p in ("train", "val", "test"))
        if args.h5 is None:
            print(f"wrote {args.output}: {kind}, {counts} subject ids (resolved by id against the HDF5 file "
                  "when used)")
        else:
            present = ", ".join(f"{p} {len(split[p])}" for p in ("train", "val", "test"))
            print(f"wrote {args.output}: {kind} resolved against {args.h5}: {present} subjects")
            for line in missing_summary(split):
                print(f"warning: {line} from {args.h5} (--allow-missing)", file=sys.stderr)
        return 0
    folds = f" ({len(split['folds'])} folds; fold 0 shown)" if "folds" in split else ""
    print(f"wrote {args.output}: {args.mode}{folds}, train {len(split['train'])}, val {len(split['val'])}, "
          f"test {len(split['test'])} subjects")
    return 0
