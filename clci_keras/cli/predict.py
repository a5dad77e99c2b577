"""`clci-keras predict`: segment NIfTI T1 scans into NIfTI lesion masks.

Examples::

    clci-keras predict sub01_T1w.nii.gz -o masks/ --weights clci_net.h5
    clci-keras predict ATLAS_R1.1/ -o masks/ --weights clci_net.h5 --prob
    clci-keras predict scans/ -o masks/ --weights w.h5 --precision bf16
    clci-keras predict native_t1.nii.gz -o out/ --weights w.h5 --register
    clci-keras predict scans/ -o out/ --ensemble fold0.h5 fold1.h5 fold2.h5 --tta flip

For each input ``NAME.nii[.gz]`` the mask is written as
``OUT/NAME_lesion_mask.nii.gz`` (uint8 0/1) and, with ``--prob``, the
probability map as ``OUT/NAME_lesion_prob.nii.gz`` (float32), both with the
input's shape, affine and header. Files found in a folder keep their
sub-folder under OUT. With one input file, OUT may be the mask's file name.
Beside each mask: ``NAME_qc.png`` (axial montage with the mask outline; not
with ``--no-qc``; each lesion component numbered), the per-lesion table
``NAME_lesions.tsv`` and the lesion load per atlas region and corticospinal tract
``NAME_lesion_load.tsv``, each with a JSON sidecar describing its columns (not with
``--no-lesions``; docs/lesions.md) and, with ``--register``, ``NAME_to_mni152.json`` (the
affine transform); ``OUT/predict_summary.csv`` has one row per input (rows of
earlier runs into OUT are kept). Bad inputs are reported at the end; the exit
status is 0 if every input was segmented, 1 if some failed, 2 for bad arguments
or weights, 130 after Ctrl-C. ``--continue`` re-runs an interrupted batch: the
inputs whose outputs are complete are skipped, the others done. One run at a
time writes OUT (a second fails at once, naming the first's process).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from clci_keras.cli import nonnegative_float, positive_float, positive_int, positive_ints
from clci_keras.data.intensity import SCHEMES
from clci_keras.data.regions import ATLASES, DEFAULT_ATLAS
from clci_keras.fileio import exclusive, remove_leftovers_under
from clci_keras.inference import plan_outputs, segment_files
from clci_keras.inference.batch import add_side_outputs, check_output_targets
from clci_keras.inference.ensemble import TTA_CHOICES
from clci_keras.inference.io import is_nifti_name
from clci_keras.inference.qc import SUMMARY_NAME
from clci_keras.inference.register import Registration, RegistrationUnavailable, require_dipy
from clci_keras.precision import INFERENCE_PRECISIONS


def add_arguments(parser):
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
    parser.add_argument("--weights", metavar="W", help="trained weights (.h5, .weights.h5, .keras)")
    parser.add_argument("--ensemble", nargs="+", metavar="W", default=None,
                        help="several weight files of the same model (e.g. the five folds): mean probability")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="test-time augmentation: flip also predicts the left-right mirror image and "
                        "averages (twice the model work)")
    parser.add_argument("--min-lesion-size", type=nonnegative_float, default=0.0, metavar="MM3",
                        help="drop lesion components smaller than MM3 mm^3 (on the 1 mm template grid; "
                        "default 0: off)")
    _add_registration_arguments(parser)
    _add_model_arguments(parser)


def _add_registration_arguments(parser):
    """``--register`` and its options (part of :func:`add_arguments`)."""
    parser.add_argument("--register", action="store_true",
                        help="affine registration of each scan to the MNI152 1 mm template first (native-space "
                        "scans; needs dipy: pip install -e \".[register]\"); the mask comes back on the scan's grid "
                        "and the transform is saved beside it")
    parser.add_argument("--transform", metavar="T.json", default=None,
                        help="reuse a transform saved by --register (skips the registration)")
    parser.add_argument("--reg-resolution", type=positive_float, default=None, metavar="MM",
                        help="working voxel size of the registration in mm (default 3)")
    parser.add_argument("--reg-iterations", type=positive_ints, default=None, metavar="N,N",
                        help="optimiser iterations per pyramid level, coarse to fine (default 100,30)")


def _add_model_arguments(parser):
    """The options about outputs, the model, its precision and its input (part of :func:`add_arguments`)."""
    parser.add_argument("--no-qc", action="store_true", help="do not write the QC montage PNGs")
    parser.add_argument("--no-lesions", action="store_true",
                        help="do not write the per-lesion table and the lesion load (NAME_lesions.tsv, "
                        "NAME_lesion_load.tsv; docs/lesions.md)")
    parser.add_argument("--atlas", choices=ATLASES, default=DEFAULT_ATLAS,
                        help=f"region atlas of the lesion tables (default: {DEFAULT_ATLAS})")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="registered model name (default: the weights' model card's, else clci_net)")
    parser.add_argument("--prob", "--save-probabilities", dest="prob", action="store_true",
                        help="also write the float32 probability map")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask = probability > THRESHOLD (default: 0.5)")
    parser.add_argument(
        "--batch-size", type=int, default=None, metavar="B", help="slices per model call (default: 4)"
    )
    parser.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
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
        default=None,
        help="intensity scaling: r1.1 (divide by 100, the original's) or v2 (divide each scan by its "
        "99.5th percentile; also the fix for scans on another scale). Default: the scheme in the "
        "weights' model card, else their training record (run folder result.json, weights manifest, "
        "catalogue), else r1.1",
    )
    parser.add_argument("--no-intensity-check", action="store_true",
                        help="segment scans whose intensities are far from the training scale anyway")
    parser.add_argument(
        "--threads", type=positive_int, default=None, metavar="N",
        help="TensorFlow intra-op threads (default: all cores)"
    )
    redo = parser.add_mutually_exclusive_group()
    redo.add_argument("--overwrite", action="store_true", help="replace existing output files")
    redo.add_argument("--continue", dest="resume", action="store_true",
                      help="skip inputs whose outputs a previous run finished; do the others "
                           "(re-running an interrupted batch)")
    parser.add_argument("--quiet", action="store_true", help="print only failures")


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _predict(args)
    except RegistrationUnavailable as e:  # an ImportError: one line saying how to install dipy, exit 2
        from clci_keras.cli import report

        return report("predict", e)


def _predict(args) -> int:
    """Plan the outputs, lock the output folder, segment; bad arguments raise ValueError (exit 2)."""
    weights = ([args.weights] if args.weights else []) + list(args.ensemble or [])
    if not weights:
        raise ValueError("give the weights: --weights W, or --ensemble W1 W2 ...")
    # Run-time checks, not argparse types: callers of main() get 2 back with these messages, not SystemExit.
    if not 0.0 <= args.threshold < 1.0:
        raise ValueError(f"--threshold must lie in [0, 1), got {args.threshold}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size}")
    jobs, failures, transform, summary = _plan(args)
    folder = os.path.dirname(os.path.abspath(summary))
    # The output's lock before the start-up (a second run fails at once); what killed runs left goes.
    with exclusive(folder, what="output folder", inside=True):
        remove_leftovers_under(folder)
        return _segment(args, weights, jobs, failures, transform, summary)


def _segment(args, weights, jobs, failures, transform, summary):
    """Set up the engine, segment the planned jobs and print; the exit code."""
    from clci_keras.inference.engine import SegmentationEngine

    engine = SegmentationEngine(
        weights, model=args.model, intensity=args.intensity, precision=args.precision, force_bf16=args.force_bf16,
        threads=args.threads, threshold=args.threshold, tta=args.tta, min_lesion_size=args.min_lesion_size,
        skip_empty_slices=not args.all_slices, check_intensity=not args.no_intensity_check,
        registration_options=_registration_options(args), progress=not args.quiet and sys.stderr.isatty(),
        **({} if args.batch_size is None else {"batch_size": args.batch_size}))
    for note in engine.notes:  # the cards' notes, before the networks are built
        print(f"warning: {note}", file=sys.stderr)
    printed = len(engine.notes)
    engine.build()
    for note in engine.notes[printed:]:
        print(f"warning: {note}", file=sys.stderr)
    registered = args.register or transform is not None
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    say(f"model {engine.model_name} ({engine.precision}) with weights {', '.join(weights)}; {len(jobs)} input(s); "
        f"{'all slices' if args.all_slices else 'brain slices only'}, batch size {engine.options['batch_size']}; "
        f"intensity {engine.intensity} ({engine.intensity_source})" + (f"; tta {args.tta}" if args.tta != "none" else "")
        + ("; registration to MNI152" if registered else ""))

    def done(n, job, seg):
        for note in seg.notes:
            print(f"warning: {note}", file=sys.stderr)
        reg = seg.registration
        say(f"[{n}/{len(jobs)}] {job.input} -> {job.mask} (grid: {seg.grid}, {seg.slices_computed} slices, "
            f"{int(np.asarray(seg.mask.dataobj).sum())} lesion voxels, {seg.seconds:.1f} s"
            + (f"; registration similarity {reg.similarity:.3f} (before {reg.similarity_before:.3f}), "
               f"{reg.seconds:.1f} s" if reg is not None else "") + ")")

    def failed(n, path, msg):
        print(f"[{n}/{len(jobs)}] FAILED {msg}", file=sys.stderr)

    result = segment_files(
        engine, jobs, overwrite=args.overwrite, resume=args.resume, on_done=done,
        on_skip=lambda n, job: say(f"[{n}/{len(jobs)}] {job.input}: finished earlier, skipped"),
        on_failure=failed, register=args.register, transform=transform, summary=summary,
        intensity_source=engine.intensity_source,
    )
    failures += result.failures
    total = len(result.done) + len(result.skipped) + len(failures)
    say(f"segmented {len(result.done)} of {total} input(s) in {result.seconds:.1f} s"
        + (f" ({len(result.skipped)} finished earlier, skipped)" if result.skipped else "") + f"; summary {summary}")
    if failures:
        print(f"{len(failures)} of {total} input(s) failed:", file=sys.stderr)
        for _, msg in failures:
            print(f"  {msg}", file=sys.stderr)
        return 1
    return 0


def _plan(args):
    """``(jobs, failures, transform, summary path)``; ValueError for a run that cannot start."""
    transform = Registration.load(args.transform) if args.transform else None
    if args.register and transform is None:
        require_dipy()  # before any work
    skipped = []
    jobs, failures = plan_outputs(args.inputs, args.output, prob=args.prob, skipped=skipped)
    if not args.quiet:
        for path, reason in skipped:
            print(f"skipped {path}: {reason}")
    if not jobs:
        for _, msg in failures:
            print(f"FAILED {msg}", file=sys.stderr)
        raise ValueError(f"{', '.join(args.inputs)}: no input to segment (no NIfTI T1 image found"
                         + (f"; {len(skipped)} NIfTI file(s) skipped by their names" if skipped else "") + ")")
    if transform is not None and len(jobs) > 1:
        raise ValueError(f"--transform {args.transform} belongs to one scan; give one input, got {len(jobs)}")
    add_side_outputs(jobs, transform=args.register or transform is not None, qc=not args.no_qc,
                     lesions=None if args.no_lesions else args.atlas)
    problems = check_output_targets(jobs, overwrite=args.overwrite)
    if problems:
        raise ValueError(problems[0])
    one_file = len(args.inputs) == 1 and os.path.isfile(args.inputs[0]) and is_nifti_name(args.output)
    folder = os.path.dirname(os.path.abspath(args.output)) if one_file else args.output
    return jobs, failures, transform, os.path.join(folder, SUMMARY_NAME)


def _registration_options(args):
    """``register_to_mni`` keyword arguments of the options given."""
    return {k: v for k, v in (("resolution", args.reg_resolution), ("iterations", args.reg_iterations))
            if v is not None}
