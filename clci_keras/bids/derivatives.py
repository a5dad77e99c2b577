"""The derivative dataset ``OUTPUT_DIR/clci_keras/``: names, dataset description, sidecars, transform.

Names follow the BIDS derivatives rules (checked against the schema of BIDS 1.11, the one the
``bids-validator-deno`` 3.0 validator carries; each choice is argued in docs/bids.md):

* lesion mask: ``<source entities>[_space-<s>]_label-L_desc-lesion_mask.nii.gz`` (``label-L``:
  the lesion label of ATLAS 2.0's masks; ``desc-lesion`` describes the whole segmentation);
* probability map: the same with ``_probseg`` (probabilistic segmentation of the lesion label);
* on the input's grid the input's own ``space-`` entity is kept (none for a scan in its own
  space); in the template: ``space-MNI152NLin2009aAsym`` (:data:`TEMPLATE_SPACE`: nilearn's
  MNI152 template is the ICBM 2009a nonlinear *asymmetric* template, say nilearn's docs);
* transform: ``<source entities>_from-<input space or T1w>_to-MNI152NLin2009aAsym_mode-image_xfm``
  ``.txt`` (ITK affine, the format ANTs and fMRIPrep read) and ``.json`` (clci-keras's, for
  ``clci-keras predict --transform``): BIDS has no name for transforms yet, so ``*_xfm.*`` is
  listed in ``.bidsignore``, with the reports (``*.html``) and ``group/`` (the scan table and the
  overlap figure);
* per-lesion table ``<source entities>_desc-lesion_lesions.tsv`` and lesion load
  ``<source entities>_space-MNI152NLin2009aAsym_desc-lesion_load.tsv``, each with a JSON sidecar
  describing its columns (:mod:`clci_keras.inference.lesions`); BIDS has no suffix for them, so
  they are in ``.bidsignore`` too;
* ``descriptions.tsv`` (BIDS 1.11) says what each ``desc-`` label means.
"""
from __future__ import annotations

import datetime
import importlib.metadata as md
import os

import numpy as np

from clci_keras.bids.layout import SOURCE_ENTITIES
from clci_keras.fileio import atomic_text, json_text, read_json
from clci_keras.version import __version__

#: Folder of the derivative dataset under OUTPUT_DIR (BIDS Apps: one folder per pipeline).
PIPELINE_NAME = "clci_keras"
#: ``space-`` label of nilearn's MNI152 template (ICBM 2009a nonlinear asymmetric), the ATLAS grid.
TEMPLATE_SPACE = "MNI152NLin2009aAsym"
#: ``label-`` of the lesion (ATLAS 2.0's masks: ``label-L_desc-T1lesion_mask``).
LESION_LABEL = "L"
#: ``desc-`` of the per-scan lesion outputs and of the group overlap map.
LESION_DESC = "lesion"
OVERLAP_DESC = "overlap"
#: BIDS version of the schema the names were checked against.
BIDS_VERSION = "1.10.0"
#: Where the code lives (GeneratedBy.CodeURL).
CODE_URL = "https://github.com/YH0517/CLCI_Net"
#: Patterns of files the specification has no name for (``.bidsignore``).
BIDSIGNORE = ("*.html", "*_xfm.txt", "*_xfm.json", "*_lesions.tsv", "*_lesions.json", "*_load.tsv", "*_load.json",
              "group")
#: What each ``desc-`` label means (``descriptions.tsv``).
DESCRIPTIONS = {
    LESION_DESC: "stroke lesion segmented by CLCI-Net (clci-keras) from the T1w image: binary mask "
                 "(_mask) and lesion probability (_probseg)",
    OVERLAP_DESC: "lesion overlap: per voxel of the template, the fraction of the scans whose lesion mask "
                  "covers it",
}
#: Template description for sidecars.
TEMPLATE_DESCRIPTION = ("MNI152 ICBM 2009a nonlinear asymmetric T1 template as shipped with nilearn "
                        "(nilearn.datasets.load_mni152_template(resolution=1)): 197 x 233 x 189 voxels of 1 mm, "
                        "the grid of ATLAS and of the synthetic data")


def entity_name(entities, suffix, extension):
    """``sub-01_ses-1_label-L_mask.nii.gz`` from ordered ``{key: value}`` (``None`` values left out)."""
    parts = [f"{k}-{v}" for k, v in entities.items() if v is not None]
    return "_".join(parts + [suffix]) + extension


def source_entities(scan):
    """The entities a derivative keeps from ``scan`` (:data:`clci_keras.bids.layout.SOURCE_ENTITIES`)."""
    return {k: scan.entities[k] for k in SOURCE_ENTITIES if k in scan.entities}


class ScanOutputs:
    """Every path the participant level writes for one scan (absolute, under the derivative root)."""

    def __init__(self, root, scan, registered):
        self.root = os.fspath(root)
        self.scan = scan
        self.registered = bool(registered)
        base = source_entities(scan)
        folder = os.path.join(self.root, f"sub-{scan.subject}", *( [f"ses-{scan.session}"] if scan.session else []),
                              "anat")

        def path(space, suffix, ext):
            ents = dict(base)
            ents.update(space=space, label=LESION_LABEL, desc=LESION_DESC)
            return os.path.join(folder, entity_name(ents, suffix, ext))

        self.mask = path(scan.space, "mask", ".nii.gz")
        self.prob = path(scan.space, "probseg", ".nii.gz")
        self.template_mask = self.template_prob = self.transform_itk = self.transform_json = None
        if self.registered and scan.space != TEMPLATE_SPACE:
            self.template_mask = path(TEMPLATE_SPACE, "mask", ".nii.gz")
            self.template_prob = path(TEMPLATE_SPACE, "probseg", ".nii.gz")
        if self.registered:
            ents = dict(base)
            ents.update({"from": scan.space or "T1w", "to": TEMPLATE_SPACE, "mode": "image"})
            self.transform_itk = os.path.join(folder, entity_name(ents, "xfm", ".txt"))
            self.transform_json = os.path.join(folder, entity_name(ents, "xfm", ".json"))
        ents = dict(base)
        ents.update(desc=LESION_DESC)
        self.lesions = os.path.join(folder, entity_name(ents, "lesions", ".tsv"))
        ents = dict(base)
        ents.update(space=TEMPLATE_SPACE, desc=LESION_DESC)
        self.load = os.path.join(folder, entity_name(ents, "load", ".tsv"))
        self.report = os.path.join(self.root, scan.key + ".html")

    @staticmethod
    def sidecar(path):
        """``X.nii.gz`` or ``X.tsv`` -> ``X.json``."""
        return path[: -len(".nii.gz" if path.endswith(".nii.gz") else ".tsv")] + ".json"

    @property
    def images(self):
        return [p for p in (self.mask, self.prob, self.template_mask, self.template_prob) if p]

    @property
    def all(self):
        """Every file of the scan; the scan is finished when all exist (the report is written last)."""
        out = []
        for p in self.images:
            out += [p, self.sidecar(p)]
        out += [self.lesions, self.sidecar(self.lesions), self.load, self.sidecar(self.load)]
        return out + [p for p in (self.transform_itk, self.transform_json) if p] + [self.report]

    def missing(self):
        return [p for p in self.all if not os.path.exists(p)]


def dataset_description(bids_dir, weights=()):
    """The derivative dataset's ``dataset_description.json`` (a dict).

    ``GeneratedBy`` names clci-keras, its version and code URL; ``SourceDatasets`` the input
    dataset (its DOI when its own description has one, else its ``file://`` URL); ``DatasetLinks``
    defines ``raw``, the prefix of the sidecars' ``Sources`` (``bids:raw:sub-01/anat/...``).
    """
    bids_dir = os.path.abspath(os.fspath(bids_dir))
    source = {"URL": "file://" + bids_dir}
    try:
        raw = read_json(os.path.join(bids_dir, "dataset_description.json"))
        if raw.get("DatasetDOI"):
            source["DOI"] = raw["DatasetDOI"]
        if raw.get("Name"):
            source["Version"] = str(raw.get("Version", raw.get("BIDSVersion", "")))
    except (OSError, ValueError, AttributeError):
        pass
    return {
        "Name": "clci-keras stroke lesion segmentation (CLCI-Net)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "clci-keras",
            "Version": __version__,
            "Description": "CLCI-Net (Yang et al., MICCAI 2019) lesion segmentation of T1w images, Keras 3 "
                           "reproduction; BIDS App `clci-keras bids`",
            "CodeURL": CODE_URL,
        }],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": "file://" + bids_dir},
        "HowToAcknowledge": "Cite Yang et al., CLCI-Net, MICCAI 2019 (arXiv:1907.07008).",
    }


def write_dataset_files(root, bids_dir):
    """Write (or refresh) ``dataset_description.json``, ``descriptions.tsv``, ``.bidsignore``, ``README.md``."""
    files = {
        "dataset_description.json": json_text(dataset_description(bids_dir)),
        "descriptions.tsv": "desc_id\tdescription\n" + "".join(f"desc-{k}\t{v}\n" for k, v in DESCRIPTIONS.items()),
        ".bidsignore": "".join(p + "\n" for p in BIDSIGNORE),
        "README.md": (
            "# clci-keras lesion masks\n\nStroke-lesion masks (`*_label-L_desc-lesion_mask.nii.gz`) and probability "
            "maps (`*_probseg.nii.gz`) segmented by CLCI-Net from the T1w images of the source dataset "
            "(`dataset_description.json`, SourceDatasets) with `clci-keras bids`. One HTML report per scan "
            "(`sub-*.html`), `group.html` and `group/lesions.tsv` for all scans, and the lesion-overlap map "
            f"`anat/space-{TEMPLATE_SPACE}_label-L_desc-overlap_probseg.nii.gz`.\n"
        ),
    }
    os.makedirs(root, exist_ok=True)
    for name, text in files.items():
        path = os.path.join(root, name)
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except OSError:
            pass
        with atomic_text(path) as f:
            f.write(text)


def itk_affine_text(mni_to_native):
    """ITK text of the affine that maps template points to the scan's (LPS), as ANTs/fMRIPrep store it.

    ``mni_to_native`` is RAS world mm -> RAS world mm (:class:`clci_keras.inference.Registration`);
    ITK works in LPS, so both sides are flipped in x and y. Resampling the scan with it onto the
    template grid (``antsApplyTransforms -i scan -r template -t this``) gives the registered scan.
    """
    m = np.asarray(mni_to_native, dtype=np.float64)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = flip @ m @ flip
    params = list(lps[:3, :3].ravel()) + list(lps[:3, 3])
    return ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            "Parameters: " + " ".join(f"{v:.10g}" for v in params) + "\nFixedParameters: 0 0 0\n")


def read_itk_affine(path):
    """The RAS template -> scan matrix of an ITK affine text written by :func:`itk_affine_text`."""
    params = None
    with open(path) as f:
        for line in f:
            if line.startswith("Parameters:"):
                params = [float(v) for v in line.split(":", 1)[1].split()]
    if params is None or len(params) != 12:
        raise ValueError(f"{path}: not an ITK 3D affine transform text")
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(params[:9], (3, 3))
    lps[:3, 3] = params[9:]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def software_versions():
    """``{package: version}`` of what produced the outputs (clci-keras, Keras and its backend, ...)."""
    out = {"clci-keras": __version__}
    for name in ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch", "numpy", "scipy", "nibabel", "nilearn",
                 "dipy", "pybids"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    out["keras_backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    try:
        import keras

        out["keras_backend"] = keras.backend.backend()
    except ImportError:  # pragma: no cover
        pass
    return out


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
