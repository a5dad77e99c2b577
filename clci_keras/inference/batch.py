"""Segment many NIfTI files: output naming, per-file isolation of failures.

:func:`plan_outputs` maps inputs (files or folders) to output paths;
:func:`segment_files` segments them one by one with a built model, writes
each output atomically and collects failures instead of stopping the batch.
``clci-keras predict`` only parses its arguments, calls these and prints.
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings

import numpy as np


@dataclasses.dataclass
class Job:
    """One input and its outputs (``prob``, ``transform``, ``qc`` are ``None`` when not asked for)."""

    input: str
    mask: str
    prob: str | None = None
    transform: str | None = None
    qc: str | None = None

    @property
    def targets(self):
        return [p for p in (self.mask, self.prob, self.transform, self.qc) if p]


def _side_path(mask, suffix):
    """``OUT/NAME_lesion_mask.nii.gz`` -> ``OUT/NAME`` + suffix (other mask names: their stem + suffix)."""
    from clci_keras.inference.io import MASK_SUFFIX, strip_nifti_suffix

    stem = strip_nifti_suffix(mask)
    if stem.endswith(MASK_SUFFIX):
        stem = stem[: -len(MASK_SUFFIX)]
    return stem + suffix


def add_side_outputs(jobs, transform=False, qc=False):
    """Give each job its transform (``NAME_to_mni152.json``) and QC picture (``NAME_qc.png``) paths."""
    from clci_keras.inference.qc import QC_SUFFIX
    from clci_keras.inference.register import TRANSFORM_SUFFIX

    for job in jobs:
        job.transform = _side_path(job.mask, TRANSFORM_SUFFIX) if transform else None
        job.qc = _side_path(job.mask, QC_SUFFIX) if qc else None
    return jobs


def check_output_targets(jobs, overwrite=False):
    """Problems with the output paths that stop the whole run: ``[message, ...]`` (each names the path).

    An output path that is an existing folder (``--overwrite`` cannot replace
    a folder by a file), and output folders that cannot be created or written
    (a parent that is a regular file, a read-only folder), found by creating
    a probe file in the nearest existing folder (nothing else is created).
    """
    import tempfile

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


def plan_outputs(inputs, output, prob=False):
    """``(jobs, failures)`` for input files/folders and an output folder.

    Each ``NAME.nii[.gz]`` gives ``OUTPUT/NAME_lesion_mask.nii.gz`` (and
    ``NAME_lesion_prob.nii.gz``); files found in a folder keep their
    sub-folder. With one input file, ``output`` may be the mask's file name.
    Two inputs that would write the same output are a failure of the second.
    """
    from clci_keras.inference.io import find_inputs, is_nifti_name, output_paths, strip_nifti_suffix

    inputs = [os.fspath(p) for p in inputs]
    output = os.fspath(output)
    if len(inputs) == 1 and os.path.isfile(inputs[0]) and is_nifti_name(output):
        prob_path = strip_nifti_suffix(output) + "_prob.nii.gz" if prob else None
        return [Job(inputs[0], output, prob_path)], []
    found, failures = find_inputs(inputs, exclude=[output])
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
        model: a built model (:func:`clci_keras.inference.build_inference_model`).
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
            included; :mod:`clci_keras.inference.qc`), or ``None``. Rows of
            an existing summary are kept: this run's rows replace those of the
            same inputs, except where this run refused to replace the outputs.
            The summary's folder is locked for the run
            (:func:`clci_keras.fileio.exclusive`: a second run fails at once).
        intensity_source: where the intensity scheme came from (for the summary).
        **segment_options: passed to :func:`clci_keras.inference.segment_image`
            (threshold, intensity, batch_size, skip_empty_slices, progress).
            Grid notes are returned in ``seg.notes`` instead of being warned.

    Raises:
        ValueError: ``overwrite`` and ``resume`` together; an unreadable existing summary.
        clci_keras.fileio.OutputInUseError: another run writes the same summary.
    """
    import contextlib

    from clci_keras.fileio import exclusive
    from clci_keras.inference.qc import merge_summary_rows, read_summary_csv, write_summary_csv

    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other (--overwrite redoes every input)")
    if register and transform is None:
        from clci_keras.inference.register import require_dipy

        require_dipy()  # RegistrationUnavailable before any work
    scheme = segment_options.get("intensity", "r1.1")
    note = f"{scheme} ({intensity_source})" if intensity_source else scheme
    with exclusive(os.path.dirname(os.path.abspath(summary)), what="output folder", inside=True) if summary \
            else contextlib.nullcontext():
        previous = read_summary_csv(summary) if summary else []  # a broken one stops the run before any work
        result, rows = _run_jobs(model, jobs, overwrite, resume, on_done, on_failure, on_skip, register,
                                 registration_options, transform, (scheme, note), segment_options)
        if summary:
            write_summary_csv(merge_summary_rows(previous, rows), summary)
    return result


def _run_jobs(model, jobs, overwrite, resume, on_done, on_failure, on_skip, register, registration_options,
              transform, intensity, segment_options):
    """:func:`segment_files`' loop: ``(BatchResult, summary rows)``."""
    from clci_keras.inference.qc import summary_row

    done, failures, skipped, rows = [], [], [], []
    start = time.perf_counter()
    scheme, note = intensity  # the summary's intensity column: failed rows, done rows
    for n, job in enumerate(jobs, start=1):
        try:
            existing = [p for p in job.targets if os.path.exists(p)]
            if existing and resume and finished(job):
                skipped.append(job)
                if on_skip is not None:
                    on_skip(n, job)
                continue
            if existing and not (overwrite or resume):
                raise OutputsExist(f"{job.input}: output {existing[0]} exists (pass --overwrite to replace it, "
                                   "or --continue to skip finished inputs)")
            seg = _segment_job(model, job, register, registration_options, transform, segment_options)
            done.append((job, seg))
            rows.append(summary_row(job.input, job.mask, seg, intensity=note))
            if on_done is not None:
                on_done(n, job, seg)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one bad input must not stop the batch
            msg = str(e) if job.input in str(e) else f"{job.input}: {type(e).__name__}: {e}"
            failures.append((job.input, msg))
            if not isinstance(e, OutputsExist):  # the earlier run's row still describes those outputs
                rows.append(summary_row(job.input, status="failed", message=msg, intensity=scheme))
            if on_failure is not None:
                on_failure(n, job.input, msg)
    return BatchResult(done, failures, time.perf_counter() - start, skipped), rows


def _segment_job(model, job, register, registration_options, transform, segment_options):
    """Segment one input and publish its outputs together; returns the Segmentation."""
    import json

    from clci_keras.inference.io import load_image, save_atomic
    from clci_keras.inference.predict import GridWarning, segment_image
    from clci_keras.inference.qc import qc_png

    image, data = load_image(job.input)
    registration = transform
    if register and registration is None:
        from clci_keras.inference.register import register_to_mni

        registration = register_to_mni(image, data, **(registration_options or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridWarning)  # reported through seg.notes
        seg = segment_image(model, image, data=data, return_probabilities=bool(job.prob),
                            registration=registration, **segment_options)
    outputs = [(seg.mask, job.mask)] + ([(seg.probabilities, job.prob)] if job.prob else [])
    if job.transform and registration is not None:
        text = json.dumps({**registration.to_dict(), "source": job.input}, indent=2) + "\n"
        outputs.append((text.encode("utf8"), job.transform))
    if job.qc:
        title = f"{os.path.basename(job.input)}: lesion mask outline (red), {seg.grid} grid"
        outputs.append((qc_png(image, data, np.asanyarray(seg.mask.dataobj), title=title), job.qc))
    save_atomic(outputs)
    return seg
