"""`clci-keras bids`: the BIDS App (BIDS Apps command line; docs/bids.md).

Examples::

    clci-keras bids /data/ds /data/out participant --weights clci_net.h5
    clci-keras bids /data/ds /data/out participant --participant-label 01 02 --weights w.h5 --tta flip
    clci-keras bids /data/ds /data/out group

The participant level writes the derivative dataset ``OUTPUT_DIR/clci_keras/`` (masks and
probability maps on each scan's grid and, when registered, in template space; sidecars;
transforms; one HTML report per scan); the group level adds the table of every scan and the
lesion-overlap map. The weights' model cards are checked as by ``clci-keras predict``, and each
scan's space against them. Exit status: 0 all scans done (or skipped as finished), 1 some failed
(a scan its weights' card refuses included), 2 bad arguments, dataset or weights (a card that
does not fit them).
"""
from __future__ import annotations

import os
import sys

from clci_keras.bids.group import run_group
from clci_keras.bids.layout import REGISTER_CHOICES, BidsUnavailable
from clci_keras.bids.participant import run_participant
from clci_keras.cli import nonnegative_float, positive_float, positive_int, positive_ints, report
from clci_keras.data.intensity import SCHEMES
from clci_keras.data.regions import ATLASES, DEFAULT_ATLAS
from clci_keras.inference.ensemble import TTA_CHOICES
from clci_keras.inference.register import RegistrationUnavailable
from clci_keras.precision import INFERENCE_PRECISIONS


def add_arguments(parser):
    parser.add_argument("bids_dir", metavar="BIDS_DIR", help="the input BIDS dataset (raw T1w images)")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR",
                        help="output folder; the derivative dataset is OUTPUT_DIR/clci_keras")
    parser.add_argument("analysis_level", choices=("participant", "group"), metavar="{participant,group}",
                        help="participant: segment each scan; group: table of all scans and lesion-overlap map")
    parser.add_argument("--participant-label", "--participant_label", dest="participant_label", nargs="+",
                        metavar="LABEL", default=None, help="participants to process (01 or sub-01); default all")
    parser.add_argument("--session-label", "--session_label", dest="session_label", nargs="+", metavar="LABEL",
                        default=None, help="sessions to process (1 or ses-1); default all")
    parser.add_argument("--weights", nargs="+", metavar="W", default=None,
                        help="trained weights (.h5, .weights.h5, .keras); several: an ensemble (mean probability)")
    parser.add_argument("--register", choices=REGISTER_CHOICES, default="auto",
                        help="registration to the MNI152 template: auto (default) registers the scans that are "
                        "neither on the template grid nor in an MNI152 space-; needs dipy")
    parser.add_argument("--reg-resolution", type=positive_float, default=None, metavar="MM",
                        help="working voxel size of the registration in mm (default 3)")
    parser.add_argument("--reg-iterations", type=positive_ints, default=None, metavar="N,N",
                        help="optimiser iterations per pyramid level, coarse to fine (default 100,30)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="registered model name (default: the weights' model card's, else clci_net)")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none", help="flip: also predict the mirror image")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask = probability > THRESHOLD (default 0.5)")
    parser.add_argument("--min-lesion-size", type=nonnegative_float, default=0.0, metavar="MM3",
                        help="drop lesion components smaller than MM3 mm^3 (default 0: off)")
    parser.add_argument("--precision", choices=INFERENCE_PRECISIONS, default="fp32", help="fp32 (default) or bf16")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="B", help="slices per model call")
    parser.add_argument("--all-slices", action="store_true", help="compute all 189 axial slices")
    parser.add_argument("--intensity", choices=tuple(s for s in SCHEMES if s != "none"), default=None,
                        help="intensity scaling r1.1 or v2 (default: the weights' model card's, else their "
                        "training record, else r1.1)")
    parser.add_argument("--no-intensity-check", action="store_true",
                        help="segment scans whose intensities are far from the training scale anyway")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help="TensorFlow intra-op threads")
    parser.add_argument("--atlas", choices=ATLASES, default=DEFAULT_ATLAS,
                        help=f"region atlas of the per-lesion table and the lesion load (default: {DEFAULT_ATLAS})")
    parser.add_argument("--lesion-roi", nargs="?", const="", default=None, metavar="DIR",
                        help="also write each mask as fMRIPrep's lesion ROI (sub-<label>[_ses-<label>]_label-lesion_roi"
                        ".nii.gz beside the T1w, never over an existing one) into BIDS_DIR, or into the copy of the "
                        "raw dataset DIR (docs/bids.md)")
    parser.add_argument("--overwrite", action="store_true", help="redo scans whose outputs are complete")
    parser.add_argument("--quiet", action="store_true", help="print only failures")


def run(args) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _group(args) if args.analysis_level == "group" else _participant(args)
    except (BidsUnavailable, RegistrationUnavailable) as e:  # ImportErrors: one line saying what to install
        return report("bids", e)


def _say(args):
    return (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))


def _participant(args) -> int:
    if not args.weights:
        raise ValueError("the participant level needs --weights W (several for an ensemble)")
    if not 0.0 <= args.threshold < 1.0:
        raise ValueError(f"--threshold must lie in [0, 1), got {args.threshold}")
    say = _say(args)
    options = {k: v for k, v in (("resolution", args.reg_resolution), ("iterations", args.reg_iterations))
               if v is not None}

    def event(kind, scan, text):
        if kind == "failed":
            print(f"FAILED {text}", file=sys.stderr, flush=True)
        else:
            say(text if kind == "skip" else f"done {text}")

    result = run_participant(
        args.bids_dir, args.output_dir, args.weights, participant_labels=args.participant_label,
        session_labels=args.session_label, register=args.register, model=args.model, threshold=args.threshold,
        tta=args.tta, precision=args.precision, intensity=args.intensity, batch_size=args.batch_size,
        min_lesion_size=args.min_lesion_size, skip_empty_slices=not args.all_slices,
        check_intensity=not args.no_intensity_check, registration_options=options, overwrite=args.overwrite,
        on_event=event, threads=args.threads, atlas=args.atlas,
        lesion_roi=None if args.lesion_roi is None else (args.lesion_roi or args.bids_dir))
    total = len(result.done) + len(result.skipped) + len(result.failures)
    say(f"{len(result.done)} segmented, {len(result.skipped)} finished earlier, {len(result.failures)} failed of "
        f"{total} scan(s) in {result.seconds:.1f} s; derivatives in {result.root}")
    if result.failures:
        print(f"{len(result.failures)} of {total} scan(s) failed:", file=sys.stderr)
        for _, msg in result.failures:
            print(f"  {msg}", file=sys.stderr)
        return 1
    return 0


def _group(args) -> int:
    say = _say(args)
    result = run_group(args.output_dir, on_event=lambda kind, path, text: print(f"warning: {text}", file=sys.stderr))
    say(f"group: {len(result.rows)} scan(s); table {result.table}; overlap map {result.overlap}; page {result.page}")
    return 0
