"""The segmentation engine: one object behind every entry point that segments a T1 scan.

``clci-keras predict``, the BIDS App and Python callers all segment through
:class:`SegmentationEngine` (the pattern of nnU-Net's ``nnUNetPredictor``: settings,
then weights, then images)::

    engine = SegmentationEngine(["fold0.h5", "fold1.h5"], tta="flip")   # reads the model cards
    engine.build()                                                     # builds the networks once
    seg = engine.segment("sub-01_T1w.nii.gz", register=True)           # a Segmentation

It resolves once what the weights' model cards fix (architecture, crop, intensity
scheme), the thread pools and the precision (bf16 falls back to fp32 on a CPU that only
emulates it, for the command line and Python alike), builds one network per weights
file, and segments one image at a time (a path or a nibabel image), registered to the
template first or not. The result (:class:`~clci_keras.inference.predict.Segmentation`)
holds the native-grid mask and probabilities, the template-grid mask and probabilities,
the transform, the per-member probabilities where there are several (ensemble, TTA) and
the timings. Warnings about the cards and the grid come back as one-line ``notes``.
"""
from __future__ import annotations

import os
import warnings

from clci_keras.inference.ensemble import as_model_list, check_tta
from clci_keras.inference.io import load_image
from clci_keras.inference.predict import (
    DEFAULT_BATCH_SIZE,
    CardWarning,
    GridWarning,
    build_inference_model,
    card_settings,
    configure_threads,
    segment_image,
)
from clci_keras.inference.scaling import resolve_intensity
from clci_keras.precision import resolve_precision


class SegmentationEngine:
    """Segments T1 scans with one network or an ensemble, as every entry point does.

    Args:
        weights: a weights path or a list of them (several: an ensemble, mean probability).
        model: registered model name; ``None``: the weights' model cards' architecture, else
            ``"clci_net"``.
        intensity: intensity scheme; ``None``: the cards' scheme, else the weights' training
            record (:func:`clci_keras.inference.scaling.resolve_intensity`), else ``"r1.1"``.
        precision: ``"fp32"`` or ``"bf16"``; bf16 on a CPU that only emulates it runs fp32
            with a note, unless ``force_bf16``.
        threads: TensorFlow intra-op threads (``None``: all cores).
        batch_size, threshold, tta, min_lesion_size, skip_empty_slices, check_intensity: as
            :func:`clci_keras.inference.predict_volume`.
        registration_options: :func:`clci_keras.inference.register.register_to_mni` keywords.
        keep_members: keep per-member probabilities and the template-grid scan in each result
            (lesion reports need them; they cost 35 MB per member).
        progress: a progress bar over the slices of each scan (a terminal's bar, plain lines in logs).

    Raises (at construction, before any network is built):
        ValueError: no weights, a bad setting (echoed), a corrupt model card, cards that disagree,
            or a ``model`` their card refuses (``CardMismatchError``). A missing or unreadable
            weights file is refused by :meth:`build` (``WeightsMismatchError``, naming it).
    """

    def __init__(self, weights, *, model=None, intensity=None, precision="fp32", force_bf16=False, threads=None,
                 batch_size=DEFAULT_BATCH_SIZE, threshold=0.5, tta="none", min_lesion_size=0.0,
                 skip_empty_slices=True, check_intensity=True, registration_options=None, keep_members=True,
                 progress=False):
        paths = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights or [])
        weights = [os.fspath(w) for w in paths]
        if not weights:
            raise ValueError("give the weights: --weights W, or --ensemble W1 W2 ...")
        card = card_settings(weights, model=model, intensity=intensity)  # refuses what cannot fit
        scheme = ((card["intensity"], card["intensity_source"]) if card["intensity"]
                  else resolve_intensity(weights, intensity))
        self._setup(weights, card, scheme, precision=precision, force_bf16=force_bf16, threads=threads,
                    batch_size=batch_size, threshold=threshold, tta=tta, min_lesion_size=min_lesion_size,
                    skip_empty_slices=skip_empty_slices, check_intensity=check_intensity,
                    registration_options=registration_options, keep_members=keep_members, progress=progress)

    @classmethod
    def from_models(cls, models, *, intensity="r1.1", intensity_source="given", **settings):
        """An engine around networks built already (a Keras model or a list: an ensemble), for
        callers that build their own (tests, notebooks); ``settings`` as the constructor's."""
        models = as_model_list(models)
        engine = cls.__new__(cls)
        card = {"model": models[0].name, "crop": None, "warnings": [], "cards": {}}
        engine._setup([], card, (intensity, intensity_source), **settings)
        engine.models, engine.precision = models, "as built"
        return engine

    def _setup(self, weights, card, scheme, *, precision="fp32", force_bf16=False, threads=None,
               batch_size=DEFAULT_BATCH_SIZE, threshold=0.5, tta="none", min_lesion_size=0.0, skip_empty_slices=True,
               check_intensity=True, registration_options=None, keep_members=True, progress=False):
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"the threshold must lie in [0, 1), got {threshold}")
        if int(batch_size) < 1:
            raise ValueError(f"the batch size must be a positive integer, got {batch_size}")
        if min_lesion_size is None or float(min_lesion_size) < 0:
            raise ValueError(f"the minimum lesion size must be >= 0 mm^3, got {min_lesion_size}")
        check_tta(tta)
        self.weights, self.card = weights, card
        self.intensity, self.intensity_source = scheme
        self.model_name = card["model"]
        self.precision_asked, self.force_bf16, self.threads = precision, force_bf16, threads
        self.precision = None  # what runs, once built
        self.registration_options = dict(registration_options or {})
        self.keep_members = keep_members
        self.options = dict(threshold=float(threshold), intensity=self.intensity, batch_size=int(batch_size),
                            tta=tta, skip_empty_slices=skip_empty_slices, min_lesion_size=float(min_lesion_size),
                            check_intensity=check_intensity, progress=progress)
        self.notes = list(self.card["warnings"])  # one line each: the cards', the build's
        self.models = []

    @property
    def threshold(self):
        return self.options["threshold"]

    @property
    def tta(self):
        return "flip" if check_tta(self.options["tta"]) else "none"

    @property
    def members(self):
        """Number of probability maps averaged: networks x TTA views."""
        return max(len(self.weights), len(self.models)) * (2 if self.tta == "flip" else 1)

    def build(self):
        """Set the thread pools and the precision and build one network per weights file (once).

        Returns the engine. Raises ``WeightsMismatchError`` (a ``ValueError``, naming the file)
        for weights that do not load. Notes of the cards and of the precision fallback are added
        to :attr:`notes`.
        """
        if self.models:
            return self
        configure_threads(intra_op=self.threads, inter_op=1, warn=self.threads is not None)
        with warnings.catch_warnings(record=True) as fallback:  # bf16 on a CPU that only emulates it
            warnings.simplefilter("always", UserWarning)
            self.precision = resolve_precision(self.precision_asked, force=self.force_bf16)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CardWarning)
            self.models = [build_inference_model(self.model_name, w, precision=self.precision,
                                                 crop=self.card["crop"]) for w in self.weights]
        for w in fallback + caught:  # the engine's notes as lines; anything else (Keras's own) as it came
            if w in fallback or issubclass(w.category, CardWarning):
                if str(w.message) not in self.notes:
                    self.notes.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return self

    @property
    def network(self):
        """The network, or the list of networks of an ensemble (what the slice predictor takes)."""
        self.build()
        return self.models if len(self.models) > 1 else self.models[0]

    def segment(self, image, *, data=None, register=None, return_probabilities=True, warn=False):
        """Segment one scan; returns a :class:`~clci_keras.inference.predict.Segmentation`.

        Args:
            image: a NIfTI path or a nibabel image.
            data: the image's voxel array, if already loaded.
            register: ``True`` registers the scan to the MNI152 template first (dipy); a
                :class:`~clci_keras.inference.register.Registration` reuses one; ``None``/``False``:
                the scan is taken as on the template grid (reoriented or resampled as needed).
            return_probabilities: also map the probabilities back onto the scan's grid.

        Grid notes are in the result's ``notes``, and also warned (``GridWarning``) with ``warn``.
        Raises ``InputError`` (a ``ValueError`` naming the file) for a scan that cannot be segmented.
        """
        self.build()
        if isinstance(image, (str, os.PathLike)):
            image, data = load_image(os.fspath(image))
        with warnings.catch_warnings():
            if not warn:
                warnings.simplefilter("ignore", GridWarning)  # reported through seg.notes
            return segment_image(self.network, image, data=data, return_probabilities=return_probabilities,
                                 registration=register if register not in (None, False) else None,
                                 registration_options=self.registration_options,
                                 keep_members=self.keep_members,
                                 **self.options)

    def describe(self):
        """One line: model, precision, weights, intensity scheme, TTA."""
        return (f"model {self.model_name} ({self.precision or self.precision_asked}) with weights "
                f"{', '.join(self.weights)}; intensity {self.intensity} ({self.intensity_source})"
                + (f"; tta {self.tta}" if self.tta != "none" else ""))


def predict_volume(model, image, *, threshold=0.5, intensity="r1.1", batch_size=DEFAULT_BATCH_SIZE,
                   skip_empty_slices=True, return_probabilities=False, progress=False, tta=None,
                   min_lesion_size=0, register=False, check_intensity=True):
    """Segment the stroke lesion of a T1 NIfTI image with a trained 2D model.

    The volume follows the training data path of CLCI-Net (Yang et al.,
    MICCAI 2019; arXiv:1907.07008) on ATLAS (Liew et al., Sci. Data 2018):
    intensity scaling, 189 axial slices, 224 x 176 crop; the crop border and
    the slices outside the MNI152 brain are background.

    Args:
        model: a Keras model with one (batch, H, W, 1) input, H x W a crop
            window (224 x 176 for CLCI-Net, 224 x 192 for X-Net), and a
            sigmoid output (batch, H, W, 1) (or a 2-class softmax); or a list
            of models (an ensemble, e.g. the five folds: mean probability).
        image: a ``nibabel.Nifti1Image`` (or ``Nifti2Image``) T1 volume. On the
            ATLAS grid (MNI152 1 mm, 197 x 233 x 189) in any axis order it is
            used as is; other grids are resampled (with a :class:`GridWarning`).
        threshold: mask = probability > ``threshold``.
        intensity: the intensity scheme the weights were trained with:
            ``"r1.1"`` (divide by 100, the original's ATLAS R1.1 scaling) or
            ``"v2"`` (ATLAS 2.0: divide by the 99.5th percentile).
        batch_size: slices per model call.
        skip_empty_slices: compute only the 155 axial slices that contain
            brain in the MNI152 brain mask; the others are background.
            ``False`` computes all 189. Computed slices are identical either way.
        return_probabilities: also return the float32 probability map.
        progress: show a progress bar over batches.
        tta: ``"flip"``: average with the prediction of the left-right
            mirrored volume (twice the model work).
        min_lesion_size: drop connected lesion components smaller than this
            many mm^3 (on the 1 mm template grid); 0 (default) keeps all.
        register: ``True`` registers the scan affinely to nilearn's MNI152
            1 mm template first (needs dipy: ``pip install -e ".[register]"``),
            predicts on the template grid and maps the mask back; or a
            :class:`clci_keras.inference.register.Registration` to reuse.
        check_intensity: refuse a scan whose intensities are far from the
            training data's scale (:class:`clci_keras.inference.scaling.IntensityError`).

    Returns:
        A uint8 (0/1) mask image with the input's shape, affine and header
        (sform/qform codes kept), or ``(mask, probabilities)``.

    For speed pass a model from :func:`build_inference_model` (or
    :func:`clci_keras.inference.optimize.optimize_for_inference`), which
    gives the same results with less work. It segments through
    :class:`SegmentationEngine` (:meth:`SegmentationEngine.from_models`), as
    ``clci-keras predict`` and the BIDS App do.

    Raises:
        InputError: (a ``ValueError``) 2D/4D data, NaN/inf voxels, an empty
            volume; its subclasses ``IntensityError`` (intensities off the
            training scale) and ``RegistrationError`` (registration failed).
        RegistrationUnavailable: ``register=True`` without dipy installed.
    """
    engine = SegmentationEngine.from_models(
        model, intensity=intensity, threshold=threshold, batch_size=batch_size, skip_empty_slices=skip_empty_slices,
        progress=progress, tta=tta, min_lesion_size=min_lesion_size, check_intensity=check_intensity,
        keep_members=False)
    seg = engine.segment(image, register=register if register is not False else None,
                         return_probabilities=return_probabilities, warn=True)
    return (seg.mask, seg.probabilities) if return_probabilities else seg.mask
