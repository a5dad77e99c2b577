"""`clci-keras prep`: convert an ATLAS tree (R1.1, R1.2 or 2.0) into the HDF5 slice file."""
from __future__ import annotations

import sys

HELP = "convert an ATLAS tree (R1.1, R1.2 or 2.0) into the HDF5 slice file"


def add_arguments(parser):
    parser.add_argument("src", metavar="SRC",
                        help="release root (R1.1: folder with the metadata CSV; R1.2: folder with c0001/, "
                             "c0002/, ... of the unpacked standard_MNI release; 2.0: BIDS tree)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="output HDF5 file")
    parser.add_argument("--layout", choices=("auto", "r1.1", "r1.2", "v2"), default="auto",
                        help="source layout (default: auto)")
    parser.add_argument("--workers", type=int, default=1, help="parallel reader/compressor processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--intensity", choices=("r1.1", "v2", "none"), default=None,
                        help="intensity scheme (default: r1.1 = /100 for R1.1 and R1.2, v2 for 2.0)")
    parser.add_argument("--compression-level", type=int, default=1, help="deflate level 0-9 (default: 1)")
    parser.add_argument("--max-subjects", type=int, default=None, help="convert only the first N subjects")
    parser.add_argument("--affine-atol", type=float, default=1e-3,
                        help="tolerance when comparing mask and T1 affines (default: 1e-3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from clci_keras.data.atlas import AtlasDataError
    from clci_keras.data.preprocess import prepare_h5

    try:
        out = prepare_h5(
            args.src, args.output, layout=args.layout, workers=args.workers, overwrite=args.overwrite,
            intensity=args.intensity, compression_level=args.compression_level, progress=not args.quiet,
            max_subjects=args.max_subjects, affine_atol=args.affine_atol,
        )
    except (AtlasDataError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"clci-keras prep: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {out['path']}: {out['n_subjects']} subjects ({out['layout']}), {out['n_slices']} slices, "
        f"{out['bytes'] / 1e6:.1f} MB in {out['seconds']:.1f} s"
    )
    return 0
