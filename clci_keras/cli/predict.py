"""`clci-keras predict`: segment NIfTI T1 scans into NIfTI lesion masks.

Examples::

    clci-keras predict sub01_T1w.nii.gz -o masks/ --weights clci_net.h5
    clci-keras predict ATLAS_R1.1/ -o masks/ --weights clci_net.h5 --prob
    clci-keras predict scans/ -o masks/ --weights w.h5 --precision bf16

For each input ``NAME.nii[.gz]`` the mask is written as
``OUT/NAME_lesion_mask.nii.gz`` (uint8 0/1) and, with ``--prob``, the
probability map as ``OUT/NAME_lesion_prob.nii.gz`` (float32), both with the
input's shape, affine and header. Files found in a folder keep their
sub-folder under OUT. With one input file, OUT may be the mask's file name.
Bad inputs are reported at the end; the exit status is 0 if every input was
segmented, 1 if some failed, 2 for bad arguments or weights.
"""
from __future__ import annotations

import os
import sys

HELP = "segment NIfTI T1 scans into NIfTI lesion masks"


def add_arguments(parser):
    from clci_keras.data.intensity import SCHEMES

    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="T1 NIfTI files (.nii, .nii.gz) or folders (searched recursively; in an ATLAS "
        "R1.1/2.0 tree the T1 images are taken and the lesion masks skipped)",
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output folder (or, for a single input file, the mask's .nii/.nii.gz path)",
    )
    parser.add_argument("--weights", required=True, metavar="W", help="trained weights (.h5, .weights.h5, .keras)")
    parser.add_argument("--model", default="clci_net", metavar="NAME", help="registered model name (default: clci_net)")
    parser.add_argument("--prob", action="store_true", help="also write the float32 probability map")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask = probability > THRESHOLD (default: 0.5)")
    parser.add_argument(
        "--batch-size", type=int, default=None, metavar="B", help="slices per model call (default: 4)"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default), or bf16: Keras mixed_bfloat16 policy with batch norm folded, ~1.9x "
        "faster on CPUs with AVX-512 BF16/AMX; masks may differ from fp32 at a few boundary voxels",
    )
    parser.add_argument(
        "--force-bf16", action="store_true",
        help="use bf16 even on a CPU without native BF16 (by default such CPUs fall back to fp32, "
        "since emulated bf16 is slower)",
    )
    parser.add_argument(
        "--all-slices",
        action="store_true",
        help="compute all 189 axial slices (default: only the 155 that contain brain in the "
        "MNI152 brain mask; the others are background)",
    )
    parser.add_argument(
        "--intensity",
        choices=tuple(s for s in SCHEMES if s != "none"),
        default="r1.1",
        help="intensity scaling the weights were trained with: r1.1 (divide by 100, the "
        "original's; default) or v2 (ATLAS 2.0: divide by the 99.5th percentile)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="TensorFlow intra-op threads (default: all cores)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="print only failures")


def _error(msg):
    print(f"clci-keras predict: error: {msg}", file=sys.stderr)
    return 2


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from clci_keras.inference import (
        DEFAULT_BATCH_SIZE,
        WeightsError,
        build_inference_model,
        configure_threads,
        plan_outputs,
        segment_files,
    )

    if not 0.0 <= args.threshold < 1.0:
        return _error(f"--threshold must lie in [0, 1), got {args.threshold}")
    batch_size = DEFAULT_BATCH_SIZE if args.batch_size is None else args.batch_size
    if batch_size < 1:
        return _error(f"--batch-size must be a positive integer, got {batch_size}")
    if args.threads is not None and args.threads < 1:
        return _error(f"--threads must be a positive integer, got {args.threads}")
    if os.path.exists(args.output) and not os.path.isdir(args.output) and not (
        len(args.inputs) == 1 and os.path.isfile(args.inputs[0])
    ):
        return _error(f"output {args.output} exists and is not a folder")

    jobs, failures = plan_outputs(args.inputs, args.output, prob=args.prob)
    if not jobs:
        for _, msg in failures:
            print(f"FAILED {msg}", file=sys.stderr)
        return _error("no input to segment")

    configure_threads(intra_op=args.threads, inter_op=1, warn=args.threads is not None)
    from clci_keras.hardware import resolve_precision

    args.precision = resolve_precision(args.precision, force=args.force_bf16)
    try:
        model = build_inference_model(args.model, args.weights, precision=args.precision)
    except (WeightsError, ValueError) as e:
        return _error(str(e))

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    say(
        f"model {args.model} ({args.precision}) with weights {args.weights}; {len(jobs)} input(s); "
        f"{'all slices' if args.all_slices else 'brain slices only'}, batch size {batch_size}"
    )

    def done(n, job, seg):
        for note in seg.notes:
            print(f"warning: {note}", file=sys.stderr)
        say(
            f"[{n}/{len(jobs)}] {job.input} -> {job.mask} (grid: {seg.grid}, "
            f"{seg.slices_computed} slices, {int(np.asarray(seg.mask.dataobj).sum())} lesion voxels, "
            f"{seg.seconds:.1f} s)"
        )

    def failed(n, path, msg):
        print(f"[{n}/{len(jobs)}] FAILED {msg}", file=sys.stderr)

    result = segment_files(
        model, jobs, overwrite=args.overwrite, on_done=done, on_failure=failed,
        threshold=args.threshold, intensity=args.intensity, batch_size=batch_size,
        skip_empty_slices=not args.all_slices, progress=not args.quiet and sys.stderr.isatty(),
    )
    failures += result.failures
    total = len(result.done) + len(failures)
    say(f"segmented {len(result.done)} of {total} input(s) in {result.seconds:.1f} s")
    if failures:
        print(f"{len(failures)} of {total} input(s) failed:", file=sys.stderr)
        for _, msg in failures:
            print(f"  {msg}", file=sys.stderr)
        return 1
    return 0
