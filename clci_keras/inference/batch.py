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


@dataclasses.dataclass
class Job:
    """One input and its outputs (``prob`` is ``None`` when not asked for)."""

    input: str
    mask: str
    prob: str | None = None


@dataclasses.dataclass
class BatchResult:
    """What :func:`segment_files` did: ``done`` ``(job, Segmentation)`` pairs and ``failures``
    ``(path, message)`` pairs (each message names the file)."""

    done: list
    failures: list
    seconds: float

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


def segment_files(model, jobs, *, overwrite=False, on_done=None, on_failure=None, **segment_options):
    """Segment ``jobs`` (from :func:`plan_outputs`) with ``model``; one bad input never stops the batch.

    Args:
        model: a built model (:func:`clci_keras.inference.build_inference_model`).
        jobs: :class:`Job` list.
        overwrite: replace existing outputs (else an existing output is a failure of that input).
        on_done: called as ``on_done(n, job, seg)`` after each written input.
        on_failure: called as ``on_failure(n, path, message)``.
        **segment_options: passed to :func:`clci_keras.inference.segment_image`
            (threshold, intensity, batch_size, skip_empty_slices, progress).
            Grid notes are returned in ``seg.notes`` instead of being warned.
    """
    from clci_keras.inference.io import InputError, load_image, save_atomic
    from clci_keras.inference.predict import GridWarning, segment_image

    done, failures = [], []
    start = time.perf_counter()
    for n, job in enumerate(jobs, start=1):
        try:
            targets = [p for p in (job.mask, job.prob) if p]
            existing = [p for p in targets if os.path.exists(p)]
            if existing and not overwrite:
                raise InputError(f"{job.input}: output {existing[0]} exists (pass --overwrite to replace it)")
            image, data = load_image(job.input)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", GridWarning)  # reported through seg.notes
                seg = segment_image(model, image, data=data, return_probabilities=bool(job.prob),
                                    **segment_options)
            outputs = [(seg.mask, job.mask)] + ([(seg.probabilities, job.prob)] if job.prob else [])
            save_atomic(outputs)
            done.append((job, seg))
            if on_done is not None:
                on_done(n, job, seg)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one bad input must not stop the batch
            msg = str(e) if job.input in str(e) else f"{job.input}: {type(e).__name__}: {e}"
            failures.append((job.input, msg))
            if on_failure is not None:
                on_failure(n, job.input, msg)
    return BatchResult(done, failures, time.perf_counter() - start)
