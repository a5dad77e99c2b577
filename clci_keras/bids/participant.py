"""Participant level of the BIDS App: segment each T1w scan and write its derivatives and report.

Per scan (:class:`clci_keras.bids.derivatives.ScanOutputs` names the files):

1. ``--register auto`` decides from the image's grid and ``space-`` entity
   (:func:`clci_keras.bids.layout.needs_registration`);
2. a registered scan is resampled onto the template grid with its transform and segmented there
   (the path of ``clci-keras predict --register``), the mask mapped back onto the scan's grid with
   nearest neighbour (probabilities trilinear); the template-space mask and probability map are
   written too, with the transform (ITK text and clci-keras JSON);
3. an unregistered scan is segmented as ``clci-keras predict`` does (on the template grid as is,
   reoriented, or resampled with a warning);
4. all images and sidecars are published together, then the HTML report: a scan is finished
   when every file of it exists, and a re-run skips finished scans and redoes the others.

A scan that fails is named and the others go on.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import time
import warnings

import numpy as np

from clci_keras.bids import derivatives as dv
from clci_keras.bids.layout import find_scans, needs_registration
from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE

#: Largest number of lesion components listed in a report (largest first).
MAX_COMPONENT_ROWS = 25


@dataclasses.dataclass
class ParticipantResult:
    """What :func:`run_participant` did: ``done`` and ``skipped`` lists of ``(scan, outputs)``,
    ``failures`` of ``(path, message)`` (each message names the file), the derivative ``root``."""

    root: str
    done: list
    skipped: list
    failures: list
    seconds: float

    @property
    def ok(self):
        return not self.failures


def read_model_card(weights):
    """The weights' model card (``clci_keras.models.card.read_card``) or ``None``: no card, or no card module."""
    if importlib.util.find_spec("clci_keras.models.card") is None:
        return None
    module = importlib.import_module("clci_keras.models.card")  # by name: the module is optional
    return module.read_card(weights)


def _native_like(ref, data, dtype, description):
    """A NIfTI image of ``data`` with ``ref``'s shape, affine, header and sform/qform codes."""
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    header.set_intent("none")
    header["descrip"] = description.encode("ascii")[:79]
    header["cal_min"], header["cal_max"] = 0, 1
    out = type(ref)(np.asarray(data, dtype=dtype).reshape(ref.shape[:3]), ref.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    for code in ("sform_code", "qform_code"):
        out.header[code] = ref.header[code]
    return out


def _template_image(data, dtype, description):
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), ATLAS_AFFINE)
    img.set_qform(ATLAS_AFFINE, code=4)  # 4: MNI152
    img.set_sform(ATLAS_AFFINE, code=4)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode("ascii")[:79]
    img.header["cal_min"], img.header["cal_max"] = 0, 1
    return img


def lesion_table(mask, affine, to_mni=None):
    """``(summary, components)`` of a mask on its own grid.

    ``summary``: volume (mL, from the voxel size), number of 26-connected components, the volume
    on each side of the template midline (voxel by voxel; template x < 0: left) and the hemisphere
    (``left``, ``right``, ``bilateral`` when the smaller side holds >= 10 % of the volume, ``none``).
    ``components``: one row per component, largest first: volume (mL), centre (template mm) and
    hemisphere of its centre (template x < 0: left). ``to_mni`` maps the image's world mm to the
    template's (a registration's ``native_to_mni``); ``None``: the image's world is the template's.
    """
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    affine = np.asarray(affine, np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    to_mni = np.eye(4) if to_mni is None else np.asarray(to_mni, np.float64)
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    rows, sides = [], {"left": 0.0, "right": 0.0}
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        centres = ndimage.center_of_mass(mask, labels, range(1, n + 1))
        for k in np.argsort(-sizes):
            world = to_mni @ affine @ np.r_[centres[k], 1.0]
            side = "left" if world[0] < 0 else "right"
            ml = float(sizes[k]) * voxel_ml
            rows.append({"component": len(rows) + 1, "volume_ml": round(ml, 4), "voxels": int(sizes[k]),
                         "centre_mm": [round(float(c), 1) for c in world[:3]], "hemisphere": side})
    total = float(mask.sum()) * voxel_ml
    if n:  # each voxel on its side of the template midline
        ijk = np.argwhere(mask).T.astype(np.float64)
        x = ((to_mni @ affine)[0, :3] @ ijk) + (to_mni @ affine)[0, 3]
        sides["left"] = float(np.count_nonzero(x < 0)) * voxel_ml
        sides["right"] = total - sides["left"]
    if total == 0:
        hemisphere = "none"
    elif min(sides.values()) >= 0.1 * total:
        hemisphere = "bilateral"
    else:
        hemisphere = max(sides, key=sides.get)
    summary = {"volume_ml": round(total, 4), "components": int(n), "hemisphere": hemisphere,
               "left_ml": round(sides["left"], 4), "right_ml": round(sides["right"], 4)}
    return summary, rows


def intensity_check(data, scheme, source):
    """The intensity check's figures for the report: the scaled 99.5th percentile and the accepted range."""
    from clci_keras.data.intensity import normalize_intensity, v2_reference
    from clci_keras.inference.scaling import INTENSITY_RANGE

    ref = float(v2_reference(normalize_intensity(np.asarray(data, np.float32), scheme)))
    lo, hi = INTENSITY_RANGE
    return {"scheme": scheme, "scheme_source": source,
            "p99_5_after_scaling": round(ref, 4),
            "accepted": f"{lo:g}-{hi:g}" if scheme == "r1.1" else "any (v2 scales each scan by its own 99.5th "
                                                                    "percentile)",
            "passed": bool(lo <= ref <= hi) if scheme == "r1.1" else True}


def run_participant(bids_dir, output_dir, weights, *, participant_labels=None, session_labels=None,
                    register="auto", model="clci_net", threshold=0.5, tta="none", precision="fp32",
                    intensity=None, batch_size=4, min_lesion_size=0.0, skip_empty_slices=True,
                    check_intensity=True, registration_options=None, overwrite=False, on_event=None,
                    threads=None):
    """Segment the T1w scans of a BIDS dataset into ``OUTPUT_DIR/clci_keras/`` (BIDS derivatives).

    Args:
        bids_dir: the input BIDS dataset.
        output_dir: BIDS Apps' output folder; the derivative dataset is ``output_dir/clci_keras``.
        weights: a weights path or a list of them (several: an ensemble, mean probability).
        participant_labels, session_labels: restrict to these labels (with or without ``sub-``/``ses-``).
        register: ``"auto"``, ``"always"`` or ``"never"`` (:func:`~clci_keras.bids.layout.needs_registration`).
        model, threshold, tta, precision, intensity, batch_size, min_lesion_size, skip_empty_slices,
            check_intensity: as ``clci-keras predict`` (``intensity=None``: the weights' record).
        registration_options: ``register_to_mni`` keywords (``resolution``, ``iterations``).
        overwrite: redo finished scans too.
        on_event: called as ``on_event(kind, scan, text)``, kind ``"skip"``, ``"done"``, ``"failed"``.
        threads: TensorFlow intra-op threads (``None``: all cores).

    Returns:
        :class:`ParticipantResult`.

    Raises:
        ValueError: bad arguments, weights that do not load, a bad dataset or label (named);
        OSError: the output folder cannot be written;
        clci_keras.bids.layout.BidsUnavailable: pybids is missing;
        clci_keras.inference.RegistrationUnavailable: a scan needs registration and dipy is missing.
        A failure of one scan is not raised: it is in ``failures``.
    """
    from clci_keras.fileio import check_writable_folder
    from clci_keras.inference.io import load_image
    from clci_keras.inference.scaling import resolve_intensity
    from clci_keras.models.manifest import sha256

    start = time.perf_counter()
    weights = [os.fspath(w) for w in ([weights] if isinstance(weights, (str, os.PathLike)) else list(weights))]
    if not weights:
        raise ValueError("give the weights: --weights W (several for an ensemble)")
    for w in weights:
        if not os.path.isfile(w):
            raise ValueError(f"{w}: weights file not found")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold!r}")
    bids_dir = os.path.abspath(os.fspath(bids_dir))
    output_dir = os.path.abspath(os.fspath(output_dir))
    if output_dir == bids_dir or output_dir.startswith(bids_dir + os.sep) and not output_dir.startswith(
            os.path.join(bids_dir, "derivatives") + os.sep):
        raise ValueError(f"{output_dir}: the output folder must not lie inside the input dataset {bids_dir} "
                         "(except under its derivatives/ folder)")
    scans = find_scans(bids_dir, participant_labels, session_labels)
    root = os.path.join(output_dir, dv.PIPELINE_NAME)
    check_writable_folder(root)
    scheme, scheme_source = resolve_intensity(weights, intensity)
    dv.write_dataset_files(root, bids_dir)
    event = on_event or (lambda *a: None)

    weights_info = [{"file": os.path.abspath(w), "sha256": sha256(w)} for w in weights]
    cards, card_notes = [], []
    for w in weights:
        try:
            cards.append(read_model_card(w))
        except (OSError, ValueError) as e:
            cards.append(None)
            card_notes.append(f"{w}: model card not readable ({e})")
    settings = {"Model": model, "Weights": weights_info, "Threshold": float(threshold), "TTA": tta,
                "Precision": precision, "IntensityScheme": scheme, "IntensitySchemeSource": scheme_source,
                "MinLesionSize_mm3": float(min_lesion_size), "AllSlices": not skip_empty_slices,
                "Template": dv.TEMPLATE_DESCRIPTION, "SoftwareUsed": dv.software_versions(),
                "ModelCards": cards}
    seg_opts = dict(threshold=float(threshold), intensity=scheme, batch_size=int(batch_size),
                    skip_empty_slices=skip_empty_slices, tta=tta, min_lesion_size=float(min_lesion_size),
                    check_intensity=check_intensity)
    models = []
    done, skipped, failures = [], [], []
    for scan in scans:
        try:
            import nibabel as nib

            try:
                header_img = nib.load(scan.path)
                shape, affine = header_img.shape, header_img.affine
            except Exception:  # unreadable: load_image below names the problem
                shape, affine = (1, 1, 1), np.eye(4)
            register_it, reason = needs_registration(register, scan.space, shape, affine)
            outs = dv.ScanOutputs(root, scan, register_it)
            if not overwrite and not outs.missing():
                skipped.append((scan, outs))
                event("skip", scan, f"{scan.relpath}: finished earlier, skipped")
                continue
            image, data = load_image(scan.path)
            if register_it:
                from clci_keras.inference.register import require_dipy

                require_dipy()
            if not models:
                from clci_keras.hardware import resolve_precision
                from clci_keras.inference import build_inference_model, configure_threads

                configure_threads(intra_op=threads, inter_op=1, warn=threads is not None)
                prec = resolve_precision(precision)
                models.extend(build_inference_model(model, w, precision=prec) for w in weights)
                settings["Precision"] = prec
            text = _segment_scan(models if len(models) > 1 else models[0], scan, outs, image, data,
                                 register_it=register_it, reason=reason, seg_opts=seg_opts,
                                 reg_opts=registration_options or {}, settings=settings,
                                 card=cards[0], notes=list(card_notes))
            done.append((scan, outs))
            event("done", scan, text)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            from clci_keras.inference.register import RegistrationUnavailable
            from clci_keras.models.weights import WeightsMismatchError

            if isinstance(e, (RegistrationUnavailable, WeightsMismatchError)):
                raise  # the run's problem, not the scan's
            msg = str(e) if scan.path in str(e) else f"{scan.path}: {type(e).__name__}: {e}"
            failures.append((scan.path, msg))
            event("failed", scan, msg)
    return ParticipantResult(root, done, skipped, failures, time.perf_counter() - start)


def _segment_scan(model, scan, outs, image, data, *, register_it, reason, seg_opts, reg_opts, settings, card,
                  notes):
    """Segment one scan, publish its images, sidecars and transform, then its report; returns a summary line."""
    from clci_keras.inference import GridWarning, InputError, segment_image
    from clci_keras.inference.io import save_atomic
    from clci_keras.inference.qc import qc_png
    from clci_keras.inference.register import register_to_mni, template
    from clci_keras.reports import html as rh

    t0 = time.perf_counter()
    affine = np.asarray(image.affine, np.float64)
    registration = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GridWarning)
        try:
            if register_it:
                registration = register_to_mni(image, data, **reg_opts)
                tpl_data = registration.to_template(data, affine, order=1)
                tpl_in = _template_image(tpl_data, np.float32, "registered T1w")
                seg = segment_image(model, tpl_in, data=tpl_data, return_probabilities=True, **seg_opts)
                mask_t = np.asanyarray(seg.mask.dataobj) > 0
                prob_t = np.asarray(seg.probabilities.dataobj, np.float32)
                mask_n = registration.to_native(mask_t.astype(np.float32), affine, data.shape, order=0) > 0.5
                prob_n = np.clip(registration.to_native(prob_t, affine, data.shape, order=1), 0.0, 1.0)
                grid = "registered"
            else:
                seg = segment_image(model, image, data=data, return_probabilities=True, **seg_opts)
                mask_n = np.asanyarray(seg.mask.dataobj) > 0
                prob_n = np.asarray(seg.probabilities.dataobj, np.float32)
                grid = seg.grid
        except InputError as e:
            text = str(e).replace("<in-memory image>", scan.path)
            raise InputError(text if scan.path in text else f"{scan.path}: {text}") from e
    notes += [str(w.message) for w in caught if issubclass(w.category, GridWarning)]
    notes += [n for n in seg.notes if n not in notes]
    thr = seg_opts["threshold"]
    images = [(_native_like(image, mask_n, np.uint8, f"clci-keras lesion mask (p > {thr:g})"), outs.mask),
              (_native_like(image, prob_n, np.float32, "clci-keras lesion probability"), outs.prob)]
    if outs.template_mask:
        images += [(_template_image(mask_t, np.uint8, f"clci-keras lesion mask (p > {thr:g})"), outs.template_mask),
                   (_template_image(prob_t, np.float32, "clci-keras lesion probability"), outs.template_prob)]
    lesion, components = lesion_table(mask_n, affine, registration.native_to_mni if registration else None)
    check = intensity_check(data, settings["IntensityScheme"], settings["IntensitySchemeSource"])
    if not check["passed"]:
        notes.append(f"intensity check: 99.5th percentile {check['p99_5_after_scaling']} after scaling is outside "
                     f"{check['accepted']} (--no-intensity-check was given)")
    reg_info = None
    if registration is not None:
        reg_info = {"similarity": round(float(registration.similarity), 4),
                    "similarity_before": round(float(registration.similarity_before), 4),
                    "seconds": round(float(registration.seconds), 2), "reason": reason,
                    **{k: v for k, v in registration.settings.items() if k in ("library", "resolution_mm",
                                                                                "iterations", "kept")}}
        if registration.similarity < 0.7:
            notes.append(f"registration similarity {registration.similarity:.2f} is low: check the registration picture")
    raw = "bids:raw:" + scan.relpath.replace(os.sep, "/")
    rel = lambda p: os.path.relpath(p, outs.root).replace(os.sep, "/")  # noqa: E731
    common = {**settings, "Grid": grid, "RegistrationDecision": reason, "Registration": reg_info,
              "Lesion": lesion, "IntensityCheck": check, "Warnings": notes, "Created": dv.now()}
    xfm = ["bids::" + rel(outs.transform_itk)] if outs.transform_itk else []
    sidecars = {
        outs.mask: {"Type": "Lesion", "Description": f"stroke lesion mask (probability > {thr:g}) on the grid of the "
                    "T1w image", "Sources": [raw, "bids::" + rel(outs.prob)], "SpatialReference": raw},
        outs.prob: {"Description": "stroke lesion probability (CLCI-Net) on the grid of the T1w image",
                    "Sources": [raw], "SpatialReference": raw},
    }
    if outs.template_mask:
        sidecars[outs.template_mask] = {"Type": "Lesion", "Description": f"stroke lesion mask (probability > {thr:g}) "
                                        "in template space", "Sources": [raw] + xfm,
                                        "SpatialReference": dv.TEMPLATE_DESCRIPTION}
        sidecars[outs.template_prob] = {"Description": "stroke lesion probability (CLCI-Net) in template space",
                                        "Sources": [raw] + xfm, "SpatialReference": dv.TEMPLATE_DESCRIPTION}
    for img_path, extra in sidecars.items():
        images.append(((json.dumps({**extra, **common}, indent=2, default=str) + "\n").encode("utf8"),
                       outs.sidecar(img_path)))
    if registration is not None:
        images.append((dv.itk_affine_text(registration.mni_to_native).encode("ascii"), outs.transform_itk))
        images.append(((json.dumps({**registration.to_dict(), "source": raw}, indent=2) + "\n").encode("utf8"),
                       outs.transform_json))
    save_atomic(images)

    overlay = qc_png(image, data, mask_n, title=f"{scan.key}: lesion outline (red) on the scan's grid ({grid})")
    reg_png = None
    if registration is not None:
        tpl, _ = template()
        reg_png = rh.outline_montage_png(tpl_data, outlines=[(tpl > 0.25, "cyan")],
                                         title=f"{scan.key}: registered scan, template brain outline (cyan)")
    summary = {"input": scan.relpath, "subject": scan.subject, "session": scan.session or "",
               "grid": grid, "registration": reason, "model": settings["Model"],
               "weights": ", ".join(f"{os.path.basename(w['file'])} (sha256 {w['sha256'][:12]}...)"
                                    for w in settings["Weights"]),
               "threshold": thr, "tta": settings["TTA"], "precision": settings["Precision"],
               "clci-keras": settings["SoftwareUsed"].get("clci-keras"), "created": common["Created"]}
    shown = components[:MAX_COMPONENT_ROWS]
    if len(components) > len(shown):
        shown.append({"component": f"... {len(components) - len(shown)} smaller component(s) not listed"})
    page = rh.subject_report(title=scan.key, summary=summary, overlay_png=overlay, lesion=lesion,
                             components=shown, intensity=check, card=card, registration=reg_info,
                             registration_png=reg_png, warnings=notes,
                             outputs=[rel(p) for p in outs.all if p != outs.report])
    rh.write_html(outs.report, page)
    return (f"{scan.relpath}: {lesion['volume_ml']:.2f} mL in {lesion['components']} component(s), "
            f"{lesion['hemisphere']}; grid {grid}" + (f", registration similarity {registration.similarity:.3f}"
                                                      if registration else "")
            + f"; {time.perf_counter() - t0:.1f} s")
