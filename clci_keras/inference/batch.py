"""Segment many NIfTI files: output naming, per-file isolation of failures.

:func:`plan_outputs` maps inputs (files or folders) to output paths;
:func:`segment_files` segments them one by one with a built model, writes
each output atomically and collects failures instead of stopping the batch.
``clci-keras predict`` only parses its arguments, calls these and prints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time

import numpy as np

from clci_keras.fileio import WRITE_FAILURES, check_not_an_input, exclusive, json_text
from clci_keras.inference.io import (
    MASK_SUFFIX,
    find_inputs,
    is_nifti_name,
    load_image,
    output_paths,
    save_atomic,
    strip_nifti_suffix,
)
from clci_keras.inference.lesions import LESIONS_SUFFIX, LOAD_SUFFIX, lesion_files, lesion_report
from clci_keras.inference.qc import QC_SUFFIX, finished_row, qc_png, read_summary_csv, record_summary, summary_row
from clci_keras.inference.register import TRANSFORM_SUFFIX


@dataclasses.dataclass
class Job:
    """One input and its outputs (``prob``, ``transform``, ``qc``, ``lesions``, ``load`` are ``None``
    when not asked for); ``atlas``: the region atlas of the lesion tables."""

    input: str
    mask: str
    prob: str | None = None
    transform: str | None = None
    qc: str | None = None
    lesions: str | None = None
    load: str | None = None
    atlas: str | None = None

    @property
    def targets(self):
        return [p for p in (self.mask, self.prob, self.transform, self.qc, self.lesions, self.load) if p]


def _side_path(mask, suffix):
    """``OUT/NAME_lesion_mask.nii.gz`` -> ``OUT/NAME`` + suffix (other mask names: their stem + suffix)."""
    stem = strip_nifti_suffix(mask)
    if stem.endswith(MASK_SUFFIX):
        stem = stem[: -len(MASK_SUFFIX)]
    return stem + suffix


def add_side_outputs(jobs, transform=False, qc=False, lesions=None):
    """Give each job its transform (``NAME_to_mni152.json``), QC picture (``NAME_qc.png``) and, with
    ``lesions`` (a region atlas name), lesion tables' paths (``NAME_lesions.tsv``, ``NAME_lesion_load.tsv``,
    each with a JSON sidecar: :func:`clci_keras.inference.lesions.lesion_files`)."""
    for job in jobs:
        job.transform = _side_path(job.mask, TRANSFORM_SUFFIX) if transform else None
        job.qc = _side_path(job.mask, QC_SUFFIX) if qc else None
        job.lesions = _side_path(job.mask, LESIONS_SUFFIX) if lesions else None
        job.load = _side_path(job.mask, LOAD_SUFFIX) if lesions else None
        job.atlas = lesions or None
    return jobs


def check_output_targets(jobs, overwrite=False):
    """Problems with the output paths that stop the whole run: ``[message, ...]`` (each names the path).

    An output path that is an existing folder (``--overwrite`` cannot replace
    a folder by a file), and output folders that cannot be created or written
    (a parent that is a regular file, a read-only folder), found by creating
    a probe file in the nearest existing folder (nothing else is created).
    """
    problems, checked = [], set()
    for job in jobs:
        for target in job.targets:
            if os.path.isdir(target):
                problems.append(f"output {target} is an existing folder; give a file name or another "
                                "output folder (--overwrite replaces files only)")
            folder = os.path.dirname(os.path.abspath(target))
            if folder in checked:
                continue
            checked.add(folder)
            existing = folder  # nothing is created here: the nearest existing folder is probed
            while not os.path.exists(existing) and os.path.dirname(existing) != existing:
                existing = os.path.dirname(existing)
            if not os.path.isdir(existing):
                problems.append(f"cannot write to output folder {folder}: {existing} is a file, not a folder")
                continue
            try:
                with tempfile.TemporaryFile(dir=existing):
                    pass
            except OSError as e:
                problems.append(f"cannot write to output folder {folder}: {e.strerror or e}")
    return problems


@dataclasses.dataclass
class BatchResult:
    """What :func:`segment_files` did: ``done`` ``(job, Segmentation)`` pairs, ``failures``
    ``(path, message)`` pairs (each message names the file), ``skipped`` jobs (finished earlier)."""

    done: list
    failures: list
    seconds: float
    skipped: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        return not self.failures


def plan_outputs(inputs, output, prob=False, skipped=None):
    """``(jobs, failures)`` for input files/folders and an output folder.

    Each ``NAME.nii[.gz]`` gives ``OUTPUT/NAME_lesion_mask.nii.gz`` (and
    ``NAME_lesion_prob.nii.gz``); files found in a folder keep their
    sub-folder. With one input file, ``output`` may be the mask's file name.
    Two inputs that would write the same output are a failure of the second.
    ``skipped``: a list to which ``(path, reason)`` of each NIfTI file found in a folder and not
    taken (a label, another kind of image) is appended. An output that is its input is refused.
    """
    inputs = [os.fspath(p) for p in inputs]
    output = os.fspath(output)
    if len(inputs) == 1 and os.path.isfile(inputs[0]) and is_nifti_name(output):
        check_not_an_input(output, [inputs[0]], what="output mask")
        prob_path = strip_nifti_suffix(output) + "_prob.nii.gz" if prob else None
        return [Job(inputs[0], output, prob_path)], []
    found, failures = find_inputs(inputs, exclude=[output], skipped=skipped)
    jobs, used = [], {}
    for path, rel in found:
        mask, prob_path = output_paths(path, output, rel, prob=prob)
        if mask in used:
            failures.append((path, f"{path}: same output name as {used[mask]} ({mask}); "
                                   "give the files separately"))
            continue
        used[mask] = path
        jobs.append(Job(path, mask, prob_path))
    return jobs, failures


class OutputsExist(ValueError):
    """An input's outputs exist and neither ``overwrite`` nor ``resume`` lets them be replaced."""


def finished(job):
    """Whether every output of ``job`` exists and its mask is a readable NIfTI image (outputs are
    published together, so this is a job a previous run completed)."""
    if not all(os.path.isfile(p) for p in job.targets):
        return False
    try:
        import nibabel as nib

        return len(nib.load(job.mask).shape) == 3
    except Exception:  # noqa: BLE001 - any unreadable mask: redo the job
        return False


def segment_files(model, jobs, *, overwrite=False, resume=False, on_done=None, on_failure=None, on_skip=None,
                  register=False, registration_options=None, transform=None, summary=None, intensity_source="",
                  **segment_options):
    """Segment ``jobs`` (from :func:`plan_outputs`) with ``model``; one bad input never stops the batch.

    Args:
        model: a :class:`clci_keras.inference.engine.SegmentationEngine` (it carries the
            segmentation settings), or built network(s) (:func:`clci_keras.inference.build_inference_model`)
            that ``segment_options`` configure.
        jobs: :class:`Job` list.
        overwrite: replace existing outputs (else an existing output is a failure of that input).
        resume: skip the inputs a previous run finished (:func:`finished`) and redo the others,
            replacing what an interrupted run left of them (``predict --continue``).
        on_done: called as ``on_done(n, job, seg)`` after each written input.
        on_failure: called as ``on_failure(n, path, message)``.
        on_skip: called as ``on_skip(n, job)`` for each input skipped by ``resume``.
        register: register each input to MNI152 first
            (:func:`clci_keras.inference.register.register_to_mni`, with
            ``registration_options``); the transform is written to ``job.transform``.
        transform: a :class:`~clci_keras.inference.register.Registration` to
            reuse for every input instead of registering.
        summary: path of the batch's summary CSV (one row per input, failures
            included; :mod:`clci_keras.inference.qc`), or ``None``. It is
            rewritten after each input (:func:`clci_keras.inference.qc.record_summary`),
            so an interrupted or killed run keeps the rows of what it finished. Rows of
            an existing summary are kept: this run's rows replace those of the
            same inputs, except where this run refused to replace the outputs; an
            input skipped by ``resume`` keeps its row, or gets one read from its
            mask where the run that wrote it was killed before recording it.
            The summary's folder is locked for the run
            (:func:`clci_keras.fileio.exclusive`: a second run fails at once).
        intensity_source: where the intensity scheme came from (for the summary).
        **segment_options: with built networks, the engine's settings (threshold, intensity,
            batch_size, skip_empty_slices, progress, tta, min_lesion_size, check_intensity).
            Grid notes are returned in ``seg.notes`` instead of being warned.

    Raises:
        ValueError: ``overwrite`` and ``resume`` together; an unreadable existing summary.
        clci_keras.fileio.OutputInUseError: another run writes the same summary.
    """
    from clci_keras.inference.engine import SegmentationEngine

    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other (--overwrite redoes every input)")
    if isinstance(model, SegmentationEngine):
        engine = model
    else:
        engine = SegmentationEngine.from_models(model, registration_options=registration_options,
                                                keep_members=False, **segment_options)
    if register and transform is None:
        from clci_keras.inference.register import require_dipy

        require_dipy()  # RegistrationUnavailable before any work
    scheme = engine.intensity
    note = f"{scheme} ({intensity_source})" if intensity_source else scheme
    with exclusive(os.path.dirname(os.path.abspath(summary)), what="output folder", inside=True,
                   reentrant=True) if summary \
            else contextlib.nullcontext():
        previous = read_summary_csv(summary) if summary else []  # a broken one stops the run before any work

        def record(rows):  # after each input, outside its try: a summary that cannot be written stops the run
            if summary:
                record_summary(previous, rows, summary)

        result, rows = _run_jobs(engine, jobs, overwrite, resume, on_done, on_failure, on_skip, register,
                                 transform, (scheme, note), record=record, recorded={r.get("input") for r in previous})
        record(rows)
    return result


def _run_jobs(engine, jobs, overwrite, resume, on_done, on_failure, on_skip, register, transform, intensity,
              record=None, recorded=frozenset()):
    """:func:`segment_files`' loop: ``(BatchResult, summary rows)``.

    ``record(rows)`` is called after each input that added a row (``recorded``: the
    inputs the existing summary has rows for; a skipped input without one gets a row
    read from its mask).
    """
    done, failures, skipped, rows = [], [], [], []
    start = time.perf_counter()
    scheme, note = intensity  # the summary's intensity column: failed rows, done rows
    for n, job in enumerate(jobs, start=1):
        n_rows = len(rows)
        try:
            existing = [p for p in job.targets if os.path.exists(p)]
            if existing and resume and finished(job):
                skipped.append(job)
                if job.input not in recorded:  # finished by a run killed before it recorded the row
                    with contextlib.suppress(Exception):  # finished() read the mask; the row is a record
                        rows.append(finished_row(job.input, job.mask))
                if on_skip is not None:
                    on_skip(n, job)
            else:
                if existing and not (overwrite or resume):
                    raise OutputsExist(f"{job.input}: output {existing[0]} exists (pass --overwrite to replace "
                                       "it, or --continue to skip finished inputs)")
                seg = _segment_job(engine, job, register, transform)
                done.append((job, seg))
                rows.append(summary_row(job.input, job.mask, seg, intensity=note))
                if on_done is not None:
                    on_done(n, job, seg)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one bad input must not stop the batch
            if isinstance(e, OSError) and e.errno in WRITE_FAILURES:
                raise  # a full or read-only disk: every later input would fail alike; the output is named
            msg = str(e) if job.input in str(e) else f"{job.input}: {type(e).__name__}: {e}"
            failures.append((job.input, msg))
            if not isinstance(e, OutputsExist):  # the earlier run's row still describes those outputs
                rows.append(summary_row(job.input, status="failed", message=msg, intensity=scheme))
            if on_failure is not None:
                on_failure(n, job.input, msg)
        if record is not None and len(rows) > n_rows:
            record(rows)
    return BatchResult(done, failures, time.perf_counter() - start, skipped), rows


def _segment_job(engine, job, register, transform):
    """Segment one input with ``engine`` and publish its outputs together; returns the Segmentation."""
    image, data = load_image(job.input)
    seg = engine.segment(image, data=data, register=transform if transform is not None else bool(register),
                         return_probabilities=bool(job.prob or job.lesions))
    registration = seg.registration
    outputs = [(seg.mask, job.mask)] + ([(seg.probabilities, job.prob)] if job.prob else [])
    mask = np.asanyarray(seg.mask.dataobj)
    labels = None
    if job.lesions:
        seg.lesions = lesion_report(mask > 0, image.affine, to_mni=seg.to_mni,
                                    probability=np.asanyarray(seg.probabilities.dataobj), members=seg.members,
                                    threshold=engine.threshold, template_mask=seg.template_mask, atlas=job.atlas)
        outputs += lesion_files(seg.lesions, job.lesions, job.load)
        labels = seg.lesions
    if job.transform and registration is not None:
        outputs.append((json_text({**registration.to_dict(), "source": job.input}).encode("utf8"), job.transform))
    if job.qc:
        title = f"{os.path.basename(job.input)}: lesion mask outline (red), {seg.grid} grid"
        outputs.append((qc_png(image, data, mask, title=title, lesions=labels), job.qc))
    save_atomic(outputs)
    return seg
