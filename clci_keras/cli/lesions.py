"""`clci-keras lesions`: per-lesion table and lesion load of existing binary lesion masks.

Examples::

    clci-keras lesions sub-r001s001_lesion_mask.nii.gz -o tables/
    clci-keras lesions masks/*_mask.nii.gz -o tables/ --atlas aal
    clci-keras lesions native_mask.nii.gz -o tables/ --t1 native_T1w.nii.gz

A mask on the template grid (197 x 233 x 189, 1 mm MNI152, as ATLAS's own masks) needs no T1;
a mask on another grid needs its T1 (``--t1``, one per mask in the same order, on the mask's
grid), which is registered to the template (needs dipy). For each ``MASK.nii[.gz]``:
``OUT/MASK_lesions.tsv`` and ``OUT/MASK_lesion_load.tsv`` with JSON sidecars, and
``OUT/lesion_load.tsv`` gathering every mask's load. Columns, flags and atlases: docs/lesions.md.
A bad mask (unreadable; not binary: values other than 0 and 1, as a probability map; not on its
T1's grid) ends the command with one line naming it and exit status 2, before anything is
written; an empty mask is reported and gives an empty table. A mask's existing tables are kept
unless ``--overwrite``; ``OUT/lesion_load.tsv`` keeps the rows of masks of earlier runs.
"""
from __future__ import annotations

import sys

from clci_keras.cli import positive_float, positive_ints, report
from clci_keras.data.regions import DEFAULT_ATLAS
from clci_keras.inference.lesions import report_masks
from clci_keras.inference.register import RegistrationUnavailable


def add_arguments(parser):
    parser.add_argument("masks", nargs="+", metavar="MASK", help="binary lesion masks (.nii, .nii.gz; 0 and 1)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--t1", nargs="+", default=None, metavar="T1",
                        help="the masks' T1 images, one per mask in the same order (masks not on the template grid); "
                             "give the masks first")
    parser.add_argument("--atlas", default=None, metavar="NAME",
                        help="atlas of the region columns and the lesion load (default: "
                             "harvard_oxford+juelich_wm+aal_cerebellum; others: aal, harvard_oxford, juelich, ... "
                             "listed in docs/lesions.md)")
    parser.add_argument("--reg-resolution", type=positive_float, default=None, metavar="MM",
                        help="working voxel size of the registration in mm (default 3)")
    parser.add_argument("--reg-iterations", type=positive_ints, default=None, metavar="N,N",
                        help="optimiser iterations per pyramid level, coarse to fine (default 100,30)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="print only problems")


def run(args) -> int:
    options = {k: v for k, v in (("resolution", args.reg_resolution), ("iterations", args.reg_iterations))
               if v is not None}
    try:
        results = report_masks(args.masks, args.output, t1s=args.t1, atlas=args.atlas or DEFAULT_ATLAS,
                               overwrite=args.overwrite, registration_options=options)
    except RegistrationUnavailable as e:  # an ImportError: one line saying how to install dipy
        return report("lesions", e)
    for r in results:
        for note in r.notes:
            print(note, file=sys.stderr if "empty mask" in note else sys.stdout)
        if not args.quiet:
            s = r.report.summary
            print(f"{r.mask}: {s['lesions']} lesion(s), {s['total_ml']:g} ml, {s['flagged']} flagged -> "
                  f"{r.files[0]}")
    return 0
