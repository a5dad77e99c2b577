"""`clci-keras prep`: convert an ATLAS tree (R1.1, R1.2 or 2.0) into the HDF5 slice file."""
from __future__ import annotations

import sys
import warnings

from clci_keras.cli import int_in, positive_int, report
from clci_keras.data.constants import LAYOUT_CHOICES
from clci_keras.data.intensity import SCHEMES
from clci_keras.data.preprocess import StaleTemporaryWarning, prepare_h5


def add_arguments(parser):
    parser.add_argument("src", metavar="SRC",
                        help="release root (R1.1: folder with the metadata CSV; R1.2: folder with c0001/, "
                             "c0002/, ... of the unpacked standard_MNI release; 2.0: BIDS tree)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="output HDF5 file")
    parser.add_argument("--layout", choices=LAYOUT_CHOICES, default="auto",
                        help="source layout (default: auto)")
    parser.add_argument("--workers", type=positive_int, default=1, help="parallel reader/compressor processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--intensity", choices=SCHEMES, default=None,
                        help="intensity scheme (default: r1.1 = /100 for R1.1 and R1.2, v2 for 2.0)")
    parser.add_argument("--compression-level", type=int_in(0, 9), default=1, help="deflate level 0-9 (default: 1)")
    parser.add_argument("--max-subjects", type=positive_int, default=None, metavar="N",
                        help="convert only the first N subjects (N >= 1)")
    parser.add_argument("--affine-atol", type=float, default=1e-3,
                        help="tolerance when comparing mask and T1 affines (default: 1e-3)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress output (default: a bar on a terminal, plain lines in a log file)")


def run(args) -> int:
    show = warnings.showwarning

    def one_line(message, category, *rest, **kw):  # a removed temporary: one plain line, at once
        if issubclass(category, StaleTemporaryWarning):
            print(f"note: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **kw)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            out = prepare_h5(
                args.src, args.output, layout=args.layout, workers=args.workers, overwrite=args.overwrite,
                intensity=args.intensity, compression_level=args.compression_level, progress=not args.quiet,
                max_subjects=args.max_subjects, affine_atol=args.affine_atol,
            )
    except (OSError, ValueError) as e:  # AtlasDataError is a ValueError
        return report("prep", e)
    print(
        f"wrote {out['path']}: {out['n_subjects']} subjects ({out['layout']}), {out['n_slices']} slices, "
        f"{out['bytes'] / 1e6:.1f} MB in {out['seconds']:.1f} s"
    )
    return 0
