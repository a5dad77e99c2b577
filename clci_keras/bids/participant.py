"""Participant level of the BIDS App: segment each T1w scan and write its derivatives and report.

The weights' model cards are read once per run as ``clci-keras predict`` reads them
(:func:`clci_keras.inference.predict.card_settings`: model, crop, intensity scheme). Per scan
(:class:`clci_keras.bids.derivatives.ScanOutputs` names the files):

1. ``--register auto`` decides from the image's grid and ``space-`` entity
   (:func:`clci_keras.bids.layout.needs_registration`); the scan's space and grid are checked
   against the cards (:func:`clci_keras.models.card.check_card`: a native-space scan left
   unregistered is refused, a non-MNI space or a resampled grid warned);
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
import os
import time

import nibabel as nib
import numpy as np

from clci_keras.bids import derivatives as dv
from clci_keras.bids.layout import find_scans, needs_registration, on_template_grid
from clci_keras.bids.lesion_roi import write_lesion_roi
from clci_keras.data.constants import ATLAS_AFFINE
from clci_keras.data.intensity import normalize_intensity, v2_reference
from clci_keras.data.regions import ATLASES, DEFAULT_ATLAS
from clci_keras.fileio import WRITE_FAILURES, check_writable_folder, exclusive, json_text, remove_leftovers_under
from clci_keras.inference import InputError
from clci_keras.inference.io import load_image, save_atomic
from clci_keras.inference.lesions import FLAGS, lesion_files, lesion_report
from clci_keras.inference.qc import qc_png
from clci_keras.inference.register import RegistrationUnavailable, template
from clci_keras.inference.scaling import INTENSITY_RANGE
from clci_keras.models.card import check_card
from clci_keras.models.manifest import sha256
from clci_keras.models.weights import WeightsMismatchError
from clci_keras.reports import html as rh

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



def _template_image(data, dtype, description):
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), ATLAS_AFFINE)
    img.set_qform(ATLAS_AFFINE, code=4)  # 4: MNI152
    img.set_sform(ATLAS_AFFINE, code=4)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode("ascii")[:79]
    img.header["cal_min"], img.header["cal_max"] = 0, 1
    return img


def intensity_check(data, scheme, source):
    """The intensity check's figures for the report: the scaled 99.5th percentile and the accepted range."""
    ref = float(v2_reference(normalize_intensity(np.asarray(data, np.float32), scheme)))
    lo, hi = INTENSITY_RANGE
    return {"scheme": scheme, "scheme_source": source,
            "p99_5_after_scaling": round(ref, 4),
            "accepted": f"{lo:g}-{hi:g}" if scheme == "r1.1" else "any (v2 scales each scan by its own 99.5th "
                                                                    "percentile)",
            "passed": bool(lo <= ref <= hi) if scheme == "r1.1" else True}



# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------
@dataclasses.dataclass
class _Run:
    """A participant run's settings, shared by its scans; the engine builds its networks at the first
    scan to segment."""

    root: str
    engine: object  # clci_keras.inference.engine.SegmentationEngine
    register: str
    overwrite: bool
    settings: dict  # the sidecars' run-wide fields
    event: object
    atlas: str = DEFAULT_ATLAS  # region atlas of the lesion tables
    lesion_roi: str | None = None  # dataset root to write fMRIPrep's lesion ROIs into, or None

    @property
    def card(self):
        return self.engine.card


@dataclasses.dataclass
class _Job:
    """One scan to segment: its outputs, registration decision, loaded image and warnings so far."""

    scan: object
    outs: dv.ScanOutputs
    register_it: bool
    reason: str
    image: object
    data: np.ndarray
    notes: list


def run_participant(bids_dir, output_dir, weights, *, participant_labels=None, session_labels=None,
                    register="auto", model=None, threshold=0.5, tta="none", precision="fp32",
                    intensity=None, batch_size=4, min_lesion_size=0.0, skip_empty_slices=True,
                    check_intensity=True, registration_options=None, overwrite=False, on_event=None,
                    threads=None, atlas=DEFAULT_ATLAS, lesion_roi=None):
    """Segment the T1w scans of a BIDS dataset into ``OUTPUT_DIR/clci_keras/`` (BIDS derivatives).

    The weights' model cards fix the model, crop and intensity scheme as for ``clci-keras predict``
    (:func:`clci_keras.inference.predict.card_settings`); each scan's ``space-`` and grid are
    checked against them (:func:`clci_keras.models.card.check_card`).

    Args:
        bids_dir: the input BIDS dataset.
        output_dir: BIDS Apps' output folder; the derivative dataset is ``output_dir/clci_keras``.
        weights: a weights path or a list of them (several: an ensemble, mean probability).
        participant_labels, session_labels: restrict to these labels (with or without ``sub-``/``ses-``).
        register: ``"auto"``, ``"always"`` or ``"never"`` (:func:`~clci_keras.bids.layout.needs_registration`).
        model: registered model name; ``None``: the architecture of the weights' model card, else ``clci_net``.
        threshold, tta, precision, intensity, batch_size, min_lesion_size, skip_empty_slices,
            check_intensity: as ``clci-keras predict`` (``intensity=None``: the model card's scheme,
            else the weights' training record).
        registration_options: ``register_to_mni`` keywords (``resolution``, ``iterations``).
        overwrite: redo finished scans too.
        on_event: called as ``on_event(kind, scan, text)``, kind ``"skip"``, ``"done"``, ``"failed"``.
        threads: TensorFlow intra-op threads (``None``: all cores).
        atlas: region atlas of the per-lesion table and the lesion load (:data:`clci_keras.data.regions.ATLASES`).
        lesion_roi: a BIDS dataset root (the input dataset itself, or a copy) into which each scan's
            mask is also written as fMRIPrep's lesion ROI (:mod:`clci_keras.bids.lesion_roi`: beside
            the T1w, never over an existing one); ``None``: not written.

    Returns:
        :class:`ParticipantResult`.

    Raises:
        ValueError: bad arguments, a bad dataset or label (named); weights that do not load, a corrupt
            model card, or a ``model`` that is not their card's (``CardMismatchError``), naming the weights;
        OSError: the output folder cannot be written;
        clci_keras.bids.layout.BidsUnavailable: pybids is missing;
        clci_keras.inference.RegistrationUnavailable: a scan needs registration and dipy is missing.
        A failure of one scan is not raised: it is in ``failures`` (a scan its weights' card
        refuses, e.g. a native-space scan left unregistered, included).
    """
    start = time.perf_counter()
    weights, bids_dir, output_dir = _check_arguments(weights, threshold, bids_dir, output_dir)
    if atlas not in ATLASES:
        raise ValueError(f"unknown atlas {atlas!r}; known atlases: {', '.join(ATLASES)}")
    refused = []  # scans whose name disagrees with their folders: named, not segmented
    scans = find_scans(bids_dir, participant_labels, session_labels, refused=refused)
    root = os.path.join(output_dir, dv.PIPELINE_NAME)
    check_writable_folder(root)
    event = on_event or (lambda *a: None)
    for path, message in refused:
        event("failed", None, message)
    # The output's lock before Keras starts (a second run fails at once); what killed runs left goes.
    with exclusive(root, what="BIDS output folder", inside=True):
        remove_leftovers_under(root)
        from clci_keras.inference.engine import SegmentationEngine  # starts Keras and its backend

        engine = SegmentationEngine(weights, model=model, intensity=intensity, precision=precision, threads=threads,
                                    batch_size=batch_size, threshold=threshold, tta=tta,
                                    min_lesion_size=min_lesion_size, skip_empty_slices=skip_empty_slices,
                                    check_intensity=check_intensity,
                                    registration_options=registration_options)  # refuses what cannot fit
        dv.write_dataset_files(root, bids_dir)
        run = _Run(root=root, engine=engine, register=register, overwrite=overwrite,
                   settings=_run_settings(engine), event=event, atlas=atlas,
                   lesion_roi=None if lesion_roi is None else os.path.abspath(os.fspath(lesion_roi)))
        done, skipped, failures = _process_scans(scans, run)
    return ParticipantResult(root, done, skipped, list(refused) + failures, time.perf_counter() - start)


def _check_arguments(weights, threshold, bids_dir, output_dir):
    """``(weights, bids_dir, output_dir)``: the weights as a list of existing files, the folders absolute.

    Raises:
        ValueError: no weights, a missing weights file, a threshold outside [0, 1), an output folder
            inside the input dataset (but not under its ``derivatives/``); the message echoes it.
    """
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
    rb, ro = os.path.realpath(bids_dir), os.path.realpath(output_dir)  # links followed
    if ro == rb or ro.startswith(rb + os.sep) and not ro.startswith(os.path.join(rb, "derivatives") + os.sep):
        raise ValueError(f"{output_dir}: the output folder must not lie inside the input dataset {bids_dir} "
                         "(except under its derivatives/ folder)" + (f" (resolved: {ro})" if ro != output_dir else ""))
    return weights, bids_dir, output_dir


def _run_settings(engine):
    """The run-wide fields of every sidecar (``Precision`` is updated once the networks are built)."""
    opts = engine.options
    return {"Model": engine.model_name,
            "Weights": [{"file": os.path.abspath(w), "sha256": sha256(w)} for w in engine.weights],
            "Threshold": opts["threshold"], "TTA": opts["tta"], "Precision": engine.precision_asked,
            "IntensityScheme": engine.intensity, "IntensitySchemeSource": engine.intensity_source,
            "MinLesionSize_mm3": opts["min_lesion_size"], "AllSlices": not opts["skip_empty_slices"],
            "Template": dv.TEMPLATE_DESCRIPTION, "SoftwareUsed": dv.software_versions(),
            "ModelCards": [engine.card["cards"].get(w) for w in engine.weights]}


def _process_scans(scans, run):
    """Segment each scan in turn; ``(done, skipped, failures)`` as in :class:`ParticipantResult`.

    A scan's failure is recorded and reported (``failed`` event) and the next scan goes on; the
    run's problems are raised: a missing dipy, and whatever stops the models from being built.
    """
    done, skipped, failures = [], [], []
    for scan in scans:
        try:
            outs, job = _open_scan(scan, run)
        except Exception as e:
            _scan_failed(scan, e, run, failures)
            continue
        if job is None:
            skipped.append((scan, outs))
            run.event("skip", scan, f"{scan.relpath}: finished earlier, skipped")
            continue
        if not run.engine.models:
            run.engine.build()  # weights, model name or card that do not fit: the run's problem
            run.settings["Precision"] = run.engine.precision
        try:
            text = _segment_scan(run, job)
        except Exception as e:
            _scan_failed(scan, e, run, failures)
            continue
        done.append((scan, outs))
        run.event("done", scan, text)
    return done, skipped, failures


def _scan_failed(scan, error, run, failures):
    """Record a scan's failure, its message naming the scan; re-raise the run's problems (no dipy, weights)."""
    if isinstance(error, (RegistrationUnavailable, WeightsMismatchError)) or (
            isinstance(error, OSError) and error.errno in WRITE_FAILURES):
        raise error  # the run's problem, not the scan's (a full or read-only disk names the output)
    msg = str(error) if scan.path in str(error) else f"{scan.path}: {type(error).__name__}: {error}"
    failures.append((scan.path, msg))
    run.event("failed", scan, msg)


def _open_scan(scan, run):
    """``(outputs, job)`` of one scan; ``job`` None when it is finished (and not ``overwrite``).

    Raises (the scan's failure): the image cannot be read; its weights' card refuses it
    (:class:`clci_keras.models.card.CardMismatchError`, e.g. a native-space scan not registered).
    RegistrationUnavailable: the scan needs registration and dipy is missing (the run's problem).
    """
    try:
        header_img = nib.load(scan.path)
        shape, affine = header_img.shape, header_img.affine
    except Exception:  # unreadable: load_image below names the problem
        shape, affine = (1, 1, 1), np.eye(4)
    register_it, reason = needs_registration(run.register, scan.space, shape, affine)
    outs = dv.ScanOutputs(run.root, scan, register_it)
    if not run.overwrite and not outs.missing():
        return outs, None
    image, data = load_image(scan.path)
    # How the scan reaches the weights' grid (segment_image's GridMap decides the same way).
    grid = "registered" if register_it else "atlas" if on_template_grid(data.shape, image.affine) else "resampled"
    notes = list(run.card["warnings"])
    for path, card in run.card["cards"].items():
        notes += check_card(card, path, space=scan.space, grid=grid)
    if register_it:
        from clci_keras.inference.register import require_dipy

        require_dipy()
    return outs, _Job(scan, outs, register_it, reason, image, data, notes)


# --------------------------------------------------------------------------
# One scan
# --------------------------------------------------------------------------
def _segment_scan(run, job):
    """Segment one scan, publish its images, sidecars and transform, then its report; returns a summary line."""
    t0 = time.perf_counter()
    seg = _segment(run.engine, job)
    notes = job.notes + [n for n in seg.notes if n not in job.notes]
    thr = run.engine.threshold
    registration = seg.registration
    report = lesion_report(np.asanyarray(seg.mask.dataobj) > 0, job.image.affine, to_mni=seg.to_mni,
                           probability=np.asanyarray(seg.probabilities.dataobj), members=seg.members,
                           threshold=thr, template_mask=seg.template_mask, atlas=run.atlas)
    lesion = report.summary
    check = intensity_check(job.data, run.settings["IntensityScheme"], run.settings["IntensitySchemeSource"])
    if not check["passed"]:
        notes.append(f"intensity check: 99.5th percentile {check['p99_5_after_scaling']} after scaling is outside "
                     f"{check['accepted']} (--no-intensity-check was given)")
    reg_info = _registration_info(registration, job.reason, notes)
    common = {**run.settings, "Grid": seg.grid, "RegistrationDecision": job.reason, "Registration": reg_info,
              "Lesion": lesion, "IntensityCheck": check, "Warnings": notes, "Created": dv.now()}
    save_atomic(_scan_images(job, seg, thr) + _sidecar_files(job, thr, common, registration)
                + lesion_files(report, job.outs.lesions, job.outs.load))
    roi_note = _write_lesion_roi(run, job, seg)
    _write_report(job, seg, common, report)
    return (f"{job.scan.relpath}: {lesion['volume_ml']:.2f} mL in {lesion['components']} component(s), "
            f"{lesion['hemisphere']}; grid {seg.grid}" + (f", registration similarity {registration.similarity:.3f}"
                                                          if registration else "")
            + f"; {time.perf_counter() - t0:.1f} s" + (f"; {roi_note}" if roi_note else ""))


def _segment(engine, job):
    """Segment one scan with the engine, registered first or not (a
    :class:`~clci_keras.inference.predict.Segmentation`); an InputError is raised again naming the scan's file."""
    path = job.scan.path
    try:
        return engine.segment(job.image, data=job.data, register=job.register_it)
    except InputError as e:
        text = str(e).replace("<in-memory image>", path)
        raise InputError(text if path in text else f"{path}: {text}") from e


def _registration_info(registration, reason, notes):
    """The sidecars' ``Registration`` (None when not registered); a low similarity is added to ``notes``."""
    if registration is None:
        return None
    info = {"similarity": round(float(registration.similarity), 4),
            "similarity_before": round(float(registration.similarity_before), 4),
            "seconds": round(float(registration.seconds), 2), "reason": reason,
            **{k: v for k, v in registration.settings.items() if k in ("library", "resolution_mm",
                                                                        "iterations", "kept")}}
    if registration.similarity < 0.7:
        notes.append(f"registration similarity {registration.similarity:.2f} is low: check the registration picture")
    return info


def _scan_images(job, seg, thr):
    """``(image, path)`` of the mask and probability map on the scan's grid and, when registered, the template's."""
    outs = job.outs
    images = [(seg.mask, outs.mask), (seg.probabilities, outs.prob)]
    if outs.template_mask:
        images += [(_template_image(seg.template_mask, np.uint8, f"clci-keras lesion mask (p > {thr:g})"),
                    outs.template_mask),
                   (_template_image(seg.template_probabilities, np.float32, "clci-keras lesion probability"),
                    outs.template_prob)]
    return images


def _rel(outs, path):
    """``path`` relative to the derivative root, with ``/``."""
    return os.path.relpath(path, outs.root).replace(os.sep, "/")


def _sidecar_files(job, thr, common, registration):
    """``(bytes, path)`` of each image's JSON sidecar (its own fields, then ``common``) and of the transform."""
    outs = job.outs
    raw = "bids:raw:" + job.scan.relpath.replace(os.sep, "/")
    xfm = ["bids::" + _rel(outs, outs.transform_itk)] if outs.transform_itk else []
    sidecars = {
        outs.mask: {"Type": "Lesion", "Description": f"stroke lesion mask (probability > {thr:g}) on the grid of the "
                    "T1w image", "Sources": [raw, "bids::" + _rel(outs, outs.prob)], "SpatialReference": raw},
        outs.prob: {"Description": "stroke lesion probability (CLCI-Net) on the grid of the T1w image",
                    "Sources": [raw], "SpatialReference": raw},
    }
    if outs.template_mask:
        sidecars[outs.template_mask] = {"Type": "Lesion", "Description": f"stroke lesion mask (probability > {thr:g}) "
                                        "in template space", "Sources": [raw] + xfm,
                                        "SpatialReference": dv.TEMPLATE_DESCRIPTION}
        sidecars[outs.template_prob] = {"Description": "stroke lesion probability (CLCI-Net) in template space",
                                        "Sources": [raw] + xfm, "SpatialReference": dv.TEMPLATE_DESCRIPTION}
    files = [(json_text({**extra, **common}).encode("utf8"), outs.sidecar(path))
             for path, extra in sidecars.items()]
    if registration is not None:
        files.append((dv.itk_affine_text(registration.mni_to_native).encode("ascii"), outs.transform_itk))
        files.append((json_text({**registration.to_dict(), "source": raw}).encode("utf8"), outs.transform_json))
    return files


def _write_lesion_roi(run, job, seg):
    """Write the scan's mask as fMRIPrep's lesion ROI into ``run.lesion_roi`` (when asked); a line saying what
    happened, or None."""
    if run.lesion_roi is None:
        return None

    path, written, message = write_lesion_roi(seg.mask, job.scan, run.lesion_roi)
    return f"lesion ROI {path}" if written else message


def _write_report(job, seg, common, report):
    """Publish the scan's HTML report (after its images and sidecars: it marks the scan finished)."""
    scan, outs = job.scan, job.outs
    overlay = qc_png(job.image, job.data, np.asanyarray(seg.mask.dataobj) > 0, lesions=report,
                     title=f"{scan.key}: lesion outline (red) on the scan's grid ({seg.grid})")
    reg_png = None
    if seg.registration is not None:
        tpl, _ = template()
        reg_png = rh.outline_montage_png(seg.template_image, outlines=[(tpl > 0.25, "cyan")],
                                         title=f"{scan.key}: registered scan, template brain outline (cyan)")
    summary = {"input": scan.relpath, "subject": scan.subject, "session": scan.session or "",
               "grid": seg.grid, "registration": common["RegistrationDecision"], "model": common["Model"],
               "weights": ", ".join(f"{os.path.basename(w['file'])} (sha256 {w['sha256'][:12]}...)"
                                    for w in common["Weights"]),
               "threshold": common["Threshold"], "tta": common["TTA"], "precision": common["Precision"],
               "clci-keras": common["SoftwareUsed"].get("clci-keras"), "created": common["Created"]}
    components = report.lesions
    shown = components[:MAX_COMPONENT_ROWS]
    if len(components) > len(shown):
        shown.append({"lesion_id": f"... {len(components) - len(shown)} smaller component(s) not listed here "
                                   f"(all in {_rel(outs, outs.lesions)})"})
    page = rh.subject_report(title=scan.key, summary=summary, overlay_png=overlay, lesion=common["Lesion"],
                             components=shown, load=report.load, flags=FLAGS,
                             intensity=common["IntensityCheck"], card=common["ModelCards"][0],
                             registration=common["Registration"], registration_png=reg_png,
                             warnings=common["Warnings"], outputs=[_rel(outs, p) for p in outs.all if p != outs.report])
    rh.write_html(outs.report, page)
