"""`clci-keras synth`: write a synthetic ATLAS-like dataset (R1.1, R1.2 or 2.0 layout).

A new output folder appears only once complete (it is written as a temporary
folder beside it); an existing empty one is filled in place and marked
unfinished until the end, and the same command completes it after an
interrupt. One run per output folder at a time.
"""
from __future__ import annotations

import os

from clci_keras.cli import set_interrupt_note
from clci_keras.data.constants import LAYOUTS
from clci_keras.data.synthetic import generate_dataset


def add_arguments(parser):
    parser.add_argument("out", metavar="OUT_DIR",
                        help="output folder (created, or an empty one; an unfinished one of the same arguments "
                             "is completed)")
    parser.add_argument("--layout", choices=LAYOUTS, default="r1.1", help="release layout (default: r1.1)")
    parser.add_argument("--subjects", type=int, default=8,
                        help="number of subjects (default: 8; r1.2: the first N published SPiN test ids, "
                             "then their training ids)")
    parser.add_argument("--ids", nargs="+", metavar="ID", default=None,
                        help="r1.2 only: scan ids to write (cSSSSsNNNNtNN), instead of --subjects")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    if os.path.lexists(args.out):
        set_interrupt_note(f"the subjects written so far are kept in {args.out}, marked unfinished; "
                           "run the same command again to complete it")
    else:
        set_interrupt_note(f"nothing was written to {args.out}; run the same command again")
    try:
        recs = generate_dataset(
            args.out, layout=args.layout, n_subjects=args.subjects, seed=args.seed,
            overwrite=args.overwrite, progress=not args.quiet, subject_ids=args.ids,
        )
    except (OSError, ValueError) as e:
        from clci_keras.cli import report

        return report("synth", e)
    n_two = sum(len(r["mask_paths"]) > 1 or len(r["lesion_volumes"]) > 1 for r in recs)
    print(f"wrote {len(recs)} synthetic subjects ({args.layout} layout, seed {args.seed}, "
          f"{n_two} with two lesions) to {args.out}")
    return 0
