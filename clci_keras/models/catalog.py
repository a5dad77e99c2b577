"""Catalogue of published third-party weights for the models of this package.

Each entry says where a weight file comes from, which architecture, input
size, crop window, intensity scaling and split it was trained and scored
with, and the scores its publishers report, so that ``clci-keras evaluate
--preset NAME --weights FILE --h5 DATA.h5 --out DIR`` can regenerate them
(:mod:`clci_keras.evaluation.published`).  The files themselves are not
shipped (their licence and ATLAS's data-use agreement are the publishers'
business): the user downloads them as the source says.

``spin_clcinet``: CLCI-Net (Yang et al., MICCAI 2019) retrained by Wong et
al. with the original Keras 2.2 code on ATLAS R1.2 for "Small Lesion
Segmentation in Brain MRIs with Subpixel Embedding" (MICCAI BrainLes 2021,
arXiv:2109.08791).  Facts from their repository
``alexklwong/subpixel-embedding-segmentation`` (commit ``aa3ac951``):

* README, "Downloading our pretrained models": ``gdown
  https://drive.google.com/uc?id=1ZSeLeNT-LX1n4QR-r8fVzHk3KmufSps_`` then
  ``unzip pretrained_models.zip`` (the README also gives the page
  https://drive.google.com/file/d/1ZSeLeNT-LX1n4QR-r8fVzHk3KmufSps_/view);
* ``bash/CLCI-Net/predict.sh``: the file is
  ``pretrained_models/clci-net/clcinet_atlas_traintest.h5``, loaded with
  ``--input_shape 224 176 1`` by ``external_src/CLCI-Net/eval.py``
  (``CLCI_Net()`` then ``model.load_weights``: the Keras 2 ``save_weights``
  layout);
* ``external_src/CLCI-Net/data.py``: slices cropped to rows 5:229, columns
  11:187 of the generator's 233 x 197 slices;
* ``external_src/generate_h5/generate_h5.py``: slices are the R1.2 T1
  ``transpose(2, 1, 0) / 100``;
* ``data_split/atlas/traintest``: 212 training and 27 test scans;
* README tables (the paper's Tables 2 and 3): CLCI-Net DSC 0.599, IoU 0.469,
  precision 0.741, recall 0.536 on the test scans; 0.246 / 0.178 / 0.662 /
  0.215 on their small-lesion subset.

The repository holds the same data as ``weights/catalog.json``
(:func:`catalog_json`; a test keeps the two equal). :func:`catalog_card` gives
each entry's model card (:mod:`clci_keras.models.card`), generated from the
entry and :data:`CARD_FACTS`.
"""
from __future__ import annotations

import copy
import os

from clci_keras.fileio import write_json
from clci_keras.models.card import LAYOUT_SPACES, make_card

CATALOG_FORMAT = 1

_SPIN_REPO = "https://github.com/alexklwong/subpixel-embedding-segmentation"

CATALOG = {
    "spin_clcinet": {
        "name": "spin_clcinet",
        "description": "CLCI-Net retrained by Wong et al. (SPiN paper) with the original Keras 2.2 code on "
                       "ATLAS R1.2, 212 training scans",
        "file": "clcinet_atlas_traintest.h5",
        "source": {
            "repository": _SPIN_REPO,
            "commit": "aa3ac951cc10b7e7e3ae4e31800ef7ba2a1fd719",
            "download": "gdown https://drive.google.com/uc?id=1ZSeLeNT-LX1n4QR-r8fVzHk3KmufSps_ && "
                        "unzip pretrained_models.zip",
            "download_page": "https://drive.google.com/file/d/1ZSeLeNT-LX1n4QR-r8fVzHk3KmufSps_/view?usp=sharing",
            "path_in_archive": "pretrained_models/clci-net/clcinet_atlas_traintest.h5",
            "readme_section": "Downloading our pretrained models",
            "paper": "A. Wong, A. Chen, Y. Wu, S. Cicek, A. Tiard, B.-W. Hong, S. Soatto, 'Small Lesion "
                     "Segmentation in Brain MRIs with Subpixel Embedding', MICCAI Brain Lesion Workshop 2021, "
                     "arXiv:2109.08791",
            "code": ["external_src/CLCI-Net/eval.py", "external_src/CLCI-Net/data.py",
                     "external_src/CLCI-Net/run_val_prediction_CLCI.py", "src/eval_utils.py",
                     "external_src/generate_h5/generate_h5.py", "bash/CLCI-Net/predict.sh",
                     "bash/CLCI-Net/eval.sh"],
        },
        "sha256": None,  # the publishers give none; `clci-keras evaluate --preset` records the file's hash
        "format": "keras2_legacy_h5",
        "framework": "Keras 2.2.0 / TensorFlow 1.10 (the original CLCI-Net code, YH0517/CLCI_Net)",
        "architecture": "clci_net",
        "input_shape": [224, 176, 1],
        "num_class": 1,
        "crop": "spin",
        "crop_window": {"rows": [5, 229], "cols": [11, 187]},
        "intensity": "T1 / 100 (generator slices: volume.transpose(2, 1, 0) / 100)",
        "training_data": {
            "dataset": "ATLAS R1.2 (standard MNI)",
            "split": "spin_traintest",
            "part": "train",
            "scans": 212,
        },
        "evaluation": {
            "split": "spin_traintest",
            "part": "test",
            "crop": "spin",
            "slices": "all",
            "threshold": 0.5,
            "binarize": "prob >= 0.5",
            "scores": "spin",
            "aggregate": "mean over patients of per-patient 3D scores",
        },
        "published_scores": {
            "test": {"dsc": 0.599, "iou": 0.469, "precision": 0.741, "recall": 0.536, "patients": 27,
                     "where": "Wong et al. 2021, Table 2 (README: 'Running SPiN')"},
            "small_lesion": {"dsc": 0.246, "iou": 0.178, "precision": 0.662, "recall": 0.215, "patients": 27,
                             "where": "Wong et al. 2021, Table 3 (README: 'Running SPiN')"},
        },
    },
}


#: What a model card needs that the catalogue entry says in words: the intensity scheme of
#: ``intensity`` ("T1 / 100" is r1.1) and the space of ``training_data.dataset`` (R1.2 standard MNI).
CARD_FACTS = {
    "spin_clcinet": {"intensity": "r1.1", "space": LAYOUT_SPACES["r1.2"]},
}


def catalog_card(name):
    """The model card of the catalogue entry ``name`` (a new dict; ValueError for an unknown name)."""
    e = get_weights_entry(name)
    facts = CARD_FACTS[name]
    return make_card(
        name=e["name"], description=e["description"], architecture=e["architecture"],
        input_shape=e["input_shape"], num_class=e["num_class"], crop=e["crop"], intensity=facts["intensity"],
        space=facts["space"],
        weights={"file": e["file"], "format": e["format"], "sha256": e["sha256"], "bytes": None},
        training=e["training_data"],
        metrics={"published": e["published_scores"], "evaluation": e["evaluation"]},
        software={"framework": e["framework"]},
        source=e["source"],
        origin="published catalogue entry (clci_keras.models.catalog)",
    )


def list_weights(manifest=None):
    """Published weights of the catalogue, then (if ``manifest`` exists) the trained ones it lists.

    Returns a list of dicts, each with ``name``, ``kind`` (``"published"`` or
    ``"trained"``), ``architecture``, ``input_shape`` and the entry's other
    fields.
    """
    out = [{"kind": "published", **copy.deepcopy(e)} for _, e in sorted(CATALOG.items())]
    if manifest is not None and os.path.exists(manifest):
        from clci_keras.models.manifest import read_manifest

        for e in read_manifest(manifest)["weights"]:
            out.append({"kind": "trained", "manifest": os.fspath(manifest), **e})
    return out


def get_weights_entry(name):
    """The catalogue entry ``name`` (a copy); ValueError naming the known ones otherwise."""
    if name not in CATALOG:
        raise ValueError(f"Unknown weights preset {name!r}; the catalogue holds {sorted(CATALOG)}.")
    return copy.deepcopy(CATALOG[name])


def catalog_json():
    """The catalogue as written to ``weights/catalog.json``."""
    return {"format": CATALOG_FORMAT, "weights": [copy.deepcopy(CATALOG[k]) for k in sorted(CATALOG)]}


def write_catalog_json(path):
    """Write :func:`catalog_json` to ``path`` (atomically)."""
    path = os.fspath(path)
    write_json(path, catalog_json())
    return path


def describe(entry):
    """A few human-readable lines about one :func:`list_weights` entry."""
    lines = [f"{entry['name']} ({entry.get('kind', 'published')}): {entry.get('description', '')}".rstrip(": ")]
    shape = entry.get("input_shape")
    lines.append(f"  architecture {entry.get('architecture')}, input {'x'.join(map(str, shape)) if shape else '?'}"
                 + (f", crop {entry['crop']}" if entry.get("crop") else ""))
    if entry.get("kind", "published") == "published":
        src = entry["source"]
        td = entry["training_data"]
        lines.append(f"  file {entry['file']} ({entry['format']}, {entry['framework']})")
        lines.append(f"  source {src['repository']} ({src['path_in_archive']}); download: {src['download']}")
        lines.append(f"  trained on {td['dataset']}, {td['scans']} scans ({td['split']} {td['part']})")
        for part, s in entry["published_scores"].items():
            lines.append(f"  published {part}: DSC {s['dsc']:.3f}, IoU {s['iou']:.3f}, precision "
                         f"{s['precision']:.3f}, recall {s['recall']:.3f} ({s['patients']} patients; {s['where']})")
        lines.append(f"  regenerate: clci-keras evaluate --preset {entry['name']} --weights {entry['file']} "
                     "--h5 ATLAS_R12.h5 --out DIR")
    else:
        lines.append(f"  file {entry.get('file')} (manifest {entry.get('manifest')})")
    return "\n".join(lines)
