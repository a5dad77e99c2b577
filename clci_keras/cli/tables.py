"""`clci-keras tables`: the paper's Tables 1 and 2 from run folders."""
from __future__ import annotations

import os
import sys

from clci_keras.cli import report
from clci_keras.fileio import check_writable_folder
from clci_keras.reports.tables import write_tables


def add_arguments(parser):
    parser.add_argument("runs", metavar="RUNS_DIR", help="folder searched for run folders with summary_<part>.json")
    parser.add_argument("-o", "--output", required=True, metavar="TABLES_DIR", help="output folder")
    parser.add_argument("--part", default="test", help="evaluated split part (default: test)")
    parser.add_argument("--table", type=int, choices=(1, 2), action="append",
                        help="only this table (repeatable; default: both)")


def run(args) -> int:
    if not os.path.isdir(args.runs):
        print(f"clci-keras tables: error: {args.runs} is not a folder", file=sys.stderr)
        return 2

    broken = []
    try:
        check_writable_folder(args.output, what="tables folder")
        written = write_tables(args.runs, args.output, part=args.part, tables=tuple(args.table or (1, 2)),
                               broken=broken)
    except (OSError, ValueError) as e:
        return report("tables", e)
    for name in sorted(written):
        if name.endswith(".md"):
            print(open(written[name]).read())
    print("wrote " + ", ".join(sorted(written.values())))
    for run, _, message in broken:
        print(f"clci-keras tables: error: left out {run}: {message}", file=sys.stderr)
    return 1 if broken else 0
