"""`clci-keras evaluate`: per-patient 3D scores of trained weights on a split part,
or of published weights with their publishers' protocol (``--preset``)."""
from __future__ import annotations

import os
import sys

from clci_keras.cli import eval_slices_arg, positive_int, report
from clci_keras.data.splits import PARTS
from clci_keras.evaluation.published import evaluate_published
from clci_keras.fileio import check_writable_folder
from clci_keras.run_layout import scores_file


# Options a preset fixes; their defaults without a preset.
PRESET_FIXED = {"model": "clci_net", "split": None, "part": "test", "threshold": 0.5, "slices": "all", "fold": None}


def add_arguments(parser):
    p = parser
    p.add_argument("--preset", metavar="NAME",
                   help="published weights of the catalogue (`clci-keras weights`), e.g. spin_clcinet: fixes the "
                        "model, crop, split, part, slices, threshold and score formulas of their publishers")
    p.add_argument("--weights", required=True, metavar="W", help="weights (.h5 legacy, .weights.h5, .keras)")
    p.add_argument("--model", default=None, help="architecture of the weights (default: clci_net)")
    p.add_argument("--h5", required=True, metavar="DATA.h5", help="HDF5 slice file")
    p.add_argument("--split", default=None, metavar="SPLIT",
                   help="split file, or a published split name (spin_traintest); required without --preset")
    p.add_argument("--part", default=None, choices=PARTS, help="(default: test)")
    p.add_argument("--fold", type=int, default=None, help="fold number (k-fold split files)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the weights' folder)")
    p.add_argument("--crop", default=None,
                   help="crop window (default: clci = 224x176; with --preset the preset's, and another one "
                        "departs from the published protocol)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="prediction batch (default: 8)")
    p.add_argument("--threshold", type=float, default=None, help="probability threshold (default: 0.5)")
    p.add_argument("--slices", type=eval_slices_arg, default=None, metavar="all|brain|A:B",
                   help="all 189 slices (original; default), only the MNI brain z-range (faster), or a slab "
                        "A:B of each subject's slices (quick checks; the rest count as no lesion)")
    p.add_argument("--allow-missing", action="store_true",
                   help="a split naming subject ids the HDF5 file lacks: score the ids present and say how many "
                        "are missing (default: fail and list them)")
    p.add_argument("--max-subjects", type=positive_int, default=None, metavar="N",
                   help="DRY RUN: score only the first N subjects of the part (recorded as a partial "
                        "evaluation in summary_<part>.json; tables mark it)")
    p.add_argument("--manifest", help="weights manifest whose entry gets the scores")
    p.add_argument("--name", help="manifest entry name")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (default: a bar on a terminal, plain lines in a log file)")


def _run_preset(args):
    given = [f"--{k}" for k in PRESET_FIXED if getattr(args, k) is not None]
    if given:
        raise ValueError(f"--preset {args.preset} fixes {', '.join(given)}; leave them out")
    if args.max_subjects is not None:
        raise ValueError(f"--preset {args.preset} scores its whole published test set; leave out --max-subjects")
    if args.manifest or args.name:
        raise ValueError("--manifest / --name do not apply to --preset (published weights are catalogued, "
                         "see `clci-keras weights`)")
    out = args.out or os.path.dirname(os.path.abspath(args.weights))
    s = evaluate_published(args.preset, args.weights, args.h5, out, allow_missing=args.allow_missing,
                           batch_size=args.batch_size, crop=args.crop, progress=not args.quiet)
    m, pub = s["means"], s["published"]
    for part, label in (("test", "test"), ("small_lesion", "small-lesion subset")):
        if part not in pub:
            continue
        ours = " | ".join(f"{k} {'n/a' if m[part][k] is None else format(m[part][k], '.3f')}"
                          for k in ("dsc", "iou", "precision", "recall"))
        theirs = " | ".join(f"{k} {pub[part][k]:.3f}" for k in ("dsc", "iou", "precision", "recall"))
        print(f"{args.preset} {label}, {m[part]['patients']} patients: {ours}   (published: {theirs})")
    if s["missing_ids"]:
        print(f"warning: {len(s['missing_ids'])} of the {s['expected_ids']} {s['part']} ids are not in {args.h5}; "
              f"scored the {len(s['subjects'])} present (--allow-missing)", file=sys.stderr)
    print(f"wrote {os.path.join(out, scores_file(s['part']))} and comparison_{s['part']}.md "
          f"({s['seconds']['wall_per_scan']:.1f} s per scan)")
    return 0


def run(args) -> int:
    try:
        out = args.out or os.path.dirname(os.path.abspath(args.weights))
        check_writable_folder(out, what="output folder" if args.out else "output folder (the weights' folder; "
                              "choose another with --out)")
        if args.preset:
            return _run_preset(args)
        from clci_keras.data.constants import DEFAULT_CROP
        from clci_keras.evaluation.evaluate import evaluate_run, format_summary

        if args.split is None:
            raise ValueError("--split is required (a split file or a published split name) unless --preset is given")
        opts = {k: (v if getattr(args, k) is None else getattr(args, k)) for k, v in PRESET_FIXED.items()}
        s = evaluate_run(args.weights, opts["model"], args.h5, args.split, part=opts["part"], out_dir=args.out,
                         fold=args.fold, crop=args.crop or DEFAULT_CROP, batch_size=args.batch_size,
                         threshold=opts["threshold"], slices=opts["slices"], progress=not args.quiet,
                         manifest=args.manifest, manifest_name=args.name, allow_missing=args.allow_missing,
                         max_subjects=args.max_subjects)
    except (OSError, ValueError) as e:
        return report("evaluate", e)
    partial = (f" (PARTIAL, --max-subjects {args.max_subjects}: {len(s['subjects'])} of {s['part_subjects']})"
               if s["partial"] else "")
    print(f"{opts['model']} on {len(s['subjects'])} {opts['part']} patients{partial}: {format_summary(s['scores'])}")
    return 0
