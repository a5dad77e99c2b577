"""Whole-volume lesion segmentation of T1 NIfTI images with a trained 2D model.

The data path is the training path of :mod:`clci_keras.data`: a volume on the
ATLAS grid (MNI152 2009, 1 mm, 197 x 233 x 189) is scaled with the training
intensity scheme, cut into 189 axial slices (``v[:, :, i].T``), cropped to the
model's window (224 x 176 for CLCI-Net), segmented slice by slice, and the
probabilities are pasted back into the full slices with the crop's border set
to background (0).

Inputs on other grids are brought to the ATLAS grid first:

* the ATLAS grid stored in another voxel-axis order or with flipped axes
  (e.g. LAS) is reoriented with nibabel's orientation transforms, which is
  lossless, and the outputs are reoriented back;
* any other grid (other voxel size, field of view or an oblique affine) is
  resampled to the ATLAS grid through the two affines (trilinear), and the
  mask is resampled back with nearest neighbour (probabilities: trilinear),
  with a :class:`GridWarning`: the model expects MNI-registered input, and
  resampling does not register a scan.

Speed: only the axial slices of the ATLAS grid that contain brain in the
MNI152 brain mask shipped with nilearn (155 of 189: z = 0..154) are computed;
the others are set to background, since a lesion cannot lie outside the
brain. ``skip_empty_slices=False`` computes every slice. Slices are run in
batches of a fixed size (the last batch is zero-padded), so each computed
slice goes through the same compiled function with the same shapes as when
every slice is computed, and gets the same result.
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings

import numpy as np

from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE, CROPS, DEFAULT_CROP
from clci_keras.data.reader import brain_slice_indices
from clci_keras.data.intensity import SCHEMES, normalize_intensity
from clci_keras.data.slicing import crop_shape, crop_slices, slices_to_volume, uncrop_slices, volume_to_slices
from clci_keras.inference.io import InputError, describe, validate_volume
from clci_keras.inference.register import resample
from clci_keras.models.card import card_path, check_card, read_card
from clci_keras.models.predictor import predict_slices
from clci_keras.precision import INFERENCE_PRECISIONS, check_precision, precision_policy

#: Largest difference (mm) between an input's affine and :data:`ATLAS_AFFINE` still taken as the ATLAS grid.
GRID_ATOL = 1e-2
#: Slices per model call (batch-size sweep: benchmarks/RESULTS.md, "Inference: ``clci-keras predict``").
DEFAULT_BATCH_SIZE = 4


class GridWarning(UserWarning):
    """The input is not on the ATLAS MNI152 1 mm grid and was resampled to it."""


class CardWarning(UserWarning):
    """The input fits the weights' model card only with a caveat (another crop, another intensity scheme)."""


@dataclasses.dataclass
class Segmentation:
    """Result of :func:`segment_image`.

    Attributes:
        mask: uint8 NIfTI image (0/1) with the input's shape, affine and header.
        probabilities: float32 NIfTI image of the lesion probability, or ``None``.
        grid: how the input was mapped to the ATLAS grid: ``"atlas"`` (as is),
            ``"reoriented"`` (lossless axis permutation/flip) or ``"resampled"``.
        slices_computed: axial slices the model ran on (of 189).
        seconds: wall time of the whole call.
        notes: warnings issued for this input (also raised as ``GridWarning``).
        registration: the :class:`clci_keras.inference.register.Registration`
            used (grid ``"registered"``), or ``None``.
        models: number of models averaged; ``tta``: ``"flip"`` or ``"none"``.
        removed_components: components dropped by ``min_lesion_size``.
        template_mask: bool array on the ATLAS grid (197 x 233 x 189), the mask the
            model made there (after ``min_lesion_size``), before it was mapped back.
        template_probabilities: float32 array on the ATLAS grid (the mean over members).
        template_image: the scan as the model saw it on the ATLAS grid (unscaled), kept only
            with ``keep_members=True`` (for reports), else ``None``.
        members: per-member float32 probability arrays on the ATLAS grid, one per model and
            TTA view, when there are several members and ``keep_members=True``; else ``[]``.
        timings: seconds of ``"registration"`` (0 when none was run here), ``"prediction"``
            and ``"total"``.
    """

    mask: object
    probabilities: object
    grid: str
    slices_computed: int
    seconds: float
    notes: list
    registration: object = None
    models: int = 1
    tta: str = "none"
    removed_components: int = 0
    template_mask: object = None
    template_probabilities: object = None
    template_image: object = None
    members: list = dataclasses.field(default_factory=list)
    timings: dict = dataclasses.field(default_factory=dict)

    @property
    def to_mni(self):
        """4 x 4 map from the input's world mm to template mm (``None``: the input's world is the template's)."""
        return None if self.registration is None else self.registration.native_to_mni


# --------------------------------------------------------------------------
# Runtime set-up
# --------------------------------------------------------------------------
def configure_threads(intra_op=None, inter_op=None, warn=True):
    """Set TensorFlow's intra-/inter-op thread pools (before TensorFlow runs anything).

    Args:
        intra_op: threads inside one op (convolutions); ``None`` or 0 keeps
            TensorFlow's default (all cores).
        inter_op: ops run concurrently; ``None`` or 0 keeps the default.

    Returns ``True`` if applied, ``False`` (with a warning if ``warn``) if
    TensorFlow had already started and the settings could not change.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))
    except RuntimeError as e:
        if warn:
            warnings.warn(f"thread settings not applied, TensorFlow is already running: {e}")
        return False
    return True


def build_inference_model(name="clci_net", weights=None, precision="fp32", crop=None, optimize=True):
    """Build a registered model for inference, load its weights and optimise it.

    Args:
        name: a name of :func:`clci_keras.models.list_models`.
        weights: path of weights in any format of
            :func:`clci_keras.models.load_weights`, or ``None`` (random weights).
        precision: ``"fp32"``, or ``"bf16"`` to build the model under Keras'
            ``mixed_bfloat16`` policy (bfloat16 compute, float32 variables; the
            same weight files load). Faster on CPUs with AVX-512 BF16 / AMX.
        crop: input window name (``"clci"``: 224 x 176, ``"xnet"``: 224 x 192);
            defaults to the crop of the weights' model card, else ``"clci"``.
        optimize: apply :func:`clci_keras.inference.optimize.optimize_for_inference`:
            the exact zero-state ConvLSTM rewrite (same outputs, 19 % fewer
            FLOPs for CLCI-Net) and, for ``"bf16"`` only, batch-norm folding.

    Weights with a model card (:func:`clci_keras.models.card.read_card`) are
    checked against it before the model is built: another architecture or
    input size is refused, another crop window of the same size warned
    (:class:`CardWarning`).

    Raises:
        ValueError: unknown ``name``, ``precision`` or ``crop``; a corrupt model card.
        CardMismatchError: (a ``ValueError``) ``name`` or ``crop`` does not fit
            the weights' card; the message names the weights.
        WeightsMismatchError: (a ``ValueError``) ``weights``
            is missing, unreadable or of another architecture (any of
            :data:`clci_keras.models.weights.LOAD_ERRORS`); the message names
            the file. Other exceptions are bugs and propagate unchanged.
    """
    from clci_keras.models import build_model, build_with_weights

    check_precision(precision, INFERENCE_PRECISIONS)
    card = read_card(weights) if weights is not None else None
    if crop is None:  # the card's crop if predict can paste it back (a named window), else the default
        crop = card["input"]["crop"] if card and card["input"]["crop"] in CROPS else DEFAULT_CROP
    if crop not in CROPS:
        raise ValueError(f"`crop` must be one of {sorted(CROPS)}, got crop={crop!r}")
    for note in check_card(card, weights, model=name, input_shape=(*crop_shape(crop), 1), crop=crop):
        warnings.warn(note, CardWarning, stacklevel=2)
    with precision_policy(precision):
        if weights is None:
            model = build_model(name, input_shape=(*crop_shape(crop), 1))
        else:
            model = build_with_weights(name, weights, input_shape=(*crop_shape(crop), 1))
    if optimize:
        from clci_keras.inference.optimize import optimize_for_inference

        model = optimize_for_inference(model, fold_batch_norm=precision == "bf16")
    return model


def card_settings(weights, model=None, intensity=None):
    """What the model cards of ``weights`` (one path or a list: an ensemble) fix for prediction.

    Args:
        weights: weights path(s); those without a card fix nothing.
        model: the model name asked for, or None (the cards' architecture, else ``"clci_net"``).
        intensity: the intensity scheme asked for, or None (the cards', if any).

    Returns:
        A dict: ``model``; ``crop`` (the cards' crop name, or None: the default);
        ``intensity`` and ``intensity_source`` (None when no card says it:
        :func:`clci_keras.inference.scaling.resolve_intensity` decides);
        ``warnings`` (one-line strings: an asked-for intensity scheme other than
        the cards'); ``cards`` (``{path: card}`` of the weights that have one).

    Raises:
        CardMismatchError: ``model`` is not the architecture of a card (names the weights).
        ValueError: a corrupt card, or cards that disagree (architecture, crop, intensity).
    """
    paths = [os.fspath(w) for w in ([weights] if isinstance(weights, (str, os.PathLike)) else weights)]
    cards = {p: c for p, c in ((p, read_card(p)) for p in paths) if c is not None}
    out = {"model": model, "crop": None, "intensity": intensity, "warnings": [], "cards": cards,
           "intensity_source": "given" if intensity is not None else None}
    for key, what in (("architecture", "model"), ("input", "crop"), ("input", "intensity")):
        sub = "name" if key == "architecture" else what
        found = {p: c[key][sub] for p, c in cards.items()}
        if len(set(found.values())) > 1:
            raise ValueError("the weights' model cards disagree on the " + what + ": "
                             + "; ".join(f"{p}: {v}" for p, v in found.items()))
        if found and out[what] is None and (what != "crop" or set(found.values()) <= set(CROPS)):
            out[what] = next(iter(found.values()))
            if what == "intensity":
                out["intensity_source"] = "model card " + ", ".join(card_path(p) for p in found)
    out["model"] = out["model"] or "clci_net"
    for p, c in cards.items():
        out["warnings"] += check_card(c, p, model=out["model"], intensity=out["intensity"])
    return out


# --------------------------------------------------------------------------
# Grid mapping
# --------------------------------------------------------------------------
class _GridMap:
    """Maps a volume to the ATLAS grid and arrays on the ATLAS grid back."""

    def __init__(self, shape, affine, name):
        import nibabel as nib
        from nibabel import orientations as no

        self.shape = tuple(shape)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.notes = []
        ornt = no.io_orientation(self.affine)
        to_ras = no.ornt_transform(ornt, no.axcodes2ornt("RAS"))
        ras_affine = self.affine @ no.inv_ornt_aff(to_ras, self.shape)
        ras_shape = tuple(int(self.shape[int(a)]) for a in np.argsort(to_ras[:, 0]))
        if ras_shape == ATLAS_SHAPE and np.allclose(ras_affine, ATLAS_AFFINE, atol=GRID_ATOL):
            identity = np.array_equal(to_ras, no.axcodes2ornt("RAS"))
            self.kind = "atlas" if identity else "reoriented"
            self._to_ras = to_ras
            self._from_ras = no.ornt_transform(no.axcodes2ornt("RAS"), ornt)
            if not identity:
                self.notes.append(
                    f"{name}: ATLAS grid stored as {''.join(nib.aff2axcodes(self.affine))}; "
                    "reoriented to RAS and back (lossless)"
                )
        else:
            self.kind = "resampled"
            zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
            self.notes.append(
                f"{name}: not on the ATLAS MNI152 1 mm grid (shape {self.shape}, voxel axes "
                f"{''.join(nib.aff2axcodes(self.affine))}, voxel size "
                f"{'x'.join(f'{z:.3g}' for z in zooms)} mm); resampled to it (trilinear) and the "
                "mask resampled back (nearest neighbour). The model expects T1 images registered "
                "to MNI152 like ATLAS; register the scan first (e.g. FSL FLIRT, ANTs) or the mask "
                "is unreliable"
            )

    def to_atlas(self, data):
        from nibabel.orientations import apply_orientation

        if self.kind == "atlas":
            return data
        if self.kind == "reoriented":
            return apply_orientation(data, self._to_ras)
        return resample(data, self.affine, ATLAS_AFFINE, ATLAS_SHAPE, order=1)

    def from_atlas(self, arr, order):
        """``order`` 0 (nearest, masks) or 1 (trilinear, probabilities) when resampling."""
        from nibabel.orientations import apply_orientation

        if self.kind == "atlas":
            return arr
        if self.kind == "reoriented":
            return apply_orientation(arr, self._from_ras)
        return resample(arr, ATLAS_AFFINE, self.affine, self.shape, order=order)


class _RegisteredGrid:
    """Maps a scan to the ATLAS grid through a registration (trilinear) and arrays back."""

    kind = "registered"

    def __init__(self, registration, shape, affine):
        self.registration = registration
        self.shape = tuple(shape)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.notes = []

    def to_atlas(self, data):
        return self.registration.to_template(data, self.affine, order=1)

    def from_atlas(self, arr, order):
        return self.registration.to_native(arr, self.affine, self.shape, order=order)


# --------------------------------------------------------------------------
# Model on slices
# --------------------------------------------------------------------------
def model_crop(model):
    """Crop name whose window matches ``model``'s input (224 x 176 -> ``"clci"``)."""
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4:
        raise ValueError(f"expected a model with one (batch, H, W, 1) input, got input_shape={shape!r}")
    h, w, c = shape[1:]
    if c not in (1, None):
        raise ValueError(f"expected a model with one input channel (T1), got input_shape={shape!r}")
    if h is None and w is None:
        return DEFAULT_CROP
    for name in CROPS:
        if crop_shape(name) == (h, w):
            return name
    raise ValueError(
        f"model input {h}x{w} matches no crop window "
        f"({', '.join(f'{k}: {crop_shape(k)[0]}x{crop_shape(k)[1]}' for k in CROPS)})"
    )


def predict_atlas_volume(
    model,
    volume,
    intensity="r1.1",
    batch_size=DEFAULT_BATCH_SIZE,
    skip_empty_slices=True,
    progress=False,
    *,
    tta=None,
    check_intensity=False,
    name="<volume>",
):
    """Lesion probabilities of one T1 volume on the ATLAS grid (the training data path).

    Args:
        model: Keras model mapping (B, H, W, 1) slices to (B, H, W, 1) probabilities,
            H x W a crop window of :data:`clci_keras.data.constants.CROPS`; or a
            list of such models (an ensemble: mean probability).
        volume: (197, 233, 189) array as stored (unscaled).
        intensity: training intensity scheme (:func:`clci_keras.data.intensity.normalize_intensity`).
        batch_size: slices per model call.
        skip_empty_slices: compute only :func:`brain_slice_indices`; others are 0.
        tta: ``"flip"``: also predict the left-right mirrored volume and average.
        check_intensity: raise :class:`clci_keras.inference.scaling.IntensityError`
            (naming ``name``) if the scaled intensities are far from the training data's.

    Returns:
        ``(probabilities, n_computed)``: float32 (197, 233, 189) and the number of slices computed.
    """
    prob, n, _ = _atlas_probabilities(model, volume, intensity, batch_size, skip_empty_slices, progress, tta,
                                      check_intensity, name, keep_members=False)
    return prob, n


def _atlas_probabilities(model, volume, intensity, batch_size, skip_empty_slices, progress, tta, check_intensity,
                         name, keep_members):
    """:func:`predict_atlas_volume`'s work: ``(probabilities, n_computed, members)``; ``members`` holds the
    per-model, per-view probabilities when there are several and ``keep_members``, else ``[]``."""
    from clci_keras.inference.ensemble import as_model_list, check_tta, ensemble_probabilities

    if intensity not in SCHEMES:
        raise ValueError(f"`intensity` must be one of {SCHEMES}, got intensity={intensity!r}")
    models = as_model_list(model)
    flip = check_tta(tta)
    for m in models:
        model_crop(m)  # a clear error before any work
    scaled = normalize_intensity(volume, intensity)
    if check_intensity:
        from clci_keras.inference.scaling import check_intensity as _check

        _check(scaled, intensity, name)
    if len(models) == 1 and not flip:  # the plain training path
        crop = model_crop(models[0])
        x = crop_slices(volume_to_slices(scaled), crop)
        idx = np.asarray(brain_slice_indices()) if skip_empty_slices else np.arange(len(x))
        prob = np.zeros(x.shape, dtype=np.float32)
    else:
        idx = np.asarray(brain_slice_indices()) if skip_empty_slices else np.arange(volume.shape[2])
    bar = None
    if progress:
        from clci_keras.fileio import progress_bar  # a tqdm bar on a terminal, plain lines in logs

        bar = progress_bar(len(idx) * len(models) * (2 if flip else 1), desc="predicting", unit="slice",
                           leave=False)
    members = []
    try:
        if len(models) == 1 and not flip:
            prob[idx] = predict_slices(models[0], x[idx], batch_size=batch_size, progress=bar)
            out = slices_to_volume(uncrop_slices(prob, crop, fill=0.0))
        else:
            out = ensemble_probabilities(models, scaled, idx, crop_of=model_crop, flip=flip,
                                         batch_size=batch_size, progress=bar,
                                         members=members if keep_members else None)
    finally:
        if bar is not None:
            bar.close()
    return np.ascontiguousarray(out), len(idx), members


# --------------------------------------------------------------------------
# NIfTI in, NIfTI out
# --------------------------------------------------------------------------
def image_like(ref, data, dtype, description):
    """A NIfTI image of ``data`` with ``ref``'s class, shape, affine and header (sform/qform codes kept)."""
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    header.set_intent("none")
    header["descrip"] = description.encode("ascii")[:79]
    header["cal_min"], header["cal_max"] = 0, 1
    # The copied header already holds ref's sform/qform (with their codes) and matches
    # ref.affine, so nibabel leaves them as they are; out.affine is ref.affine exactly.
    out = type(ref)(np.asarray(data, dtype=dtype).reshape(ref.shape[:3]), ref.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    for code in ("sform_code", "qform_code"):
        out.header[code] = ref.header[code]
    return out


def segment_image(
    model,
    image,
    *,
    threshold=0.5,
    intensity="r1.1",
    batch_size=DEFAULT_BATCH_SIZE,
    skip_empty_slices=True,
    return_probabilities=False,
    progress=False,
    data=None,
    tta=None,
    min_lesion_size=0,
    registration=None,
    check_intensity=True,
    keep_members=False,
    registration_options=None,
):
    """Segment one NIfTI T1 image; returns a :class:`Segmentation` (mask, probabilities, details).

    Arguments as :func:`clci_keras.inference.engine.predict_volume`; ``data`` optionally passes the already
    loaded voxel array of ``image``; ``keep_members`` keeps the per-member
    probabilities and the template-grid scan in the result (for lesion reports);
    ``registration_options`` go to :func:`clci_keras.inference.register.register_to_mni`
    when ``registration=True``. Grid notes are also issued as :class:`GridWarning`.
    """
    import nibabel as nib

    start = time.perf_counter()
    if not isinstance(image, nib.Nifti1Image):
        raise TypeError(f"`image` must be a nibabel Nifti1Image or Nifti2Image, got {type(image).__name__}")
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"`threshold` must lie in [0, 1), got threshold={threshold!r}")
    name = describe(image)
    if data is None:
        try:
            data = np.asanyarray(image.dataobj)
        except Exception as e:
            raise InputError(f"{name}: cannot read the voxel data ({type(e).__name__}: {e})") from e
    data = validate_volume(data, name)
    if min_lesion_size is None or float(min_lesion_size) < 0:
        raise ValueError(f"`min_lesion_size` must be >= 0 (mm^3), got min_lesion_size={min_lesion_size!r}")
    reg_seconds = 0.0
    if registration is True:
        from clci_keras.inference.register import register_to_mni

        registration = register_to_mni(image, data, **(registration_options or {}))
        reg_seconds = registration.seconds
    if registration is not None:
        grid = _RegisteredGrid(registration, data.shape, image.affine)
    else:
        grid = _GridMap(data.shape, image.affine, name)
        for note in grid.notes:
            if grid.kind == "resampled":
                warnings.warn(note, GridWarning, stacklevel=2)
    t_pred = time.perf_counter()
    atlas_data = grid.to_atlas(data)
    prob, n, members = _atlas_probabilities(model, atlas_data, intensity, batch_size, skip_empty_slices, progress,
                                            tta, check_intensity, name, keep_members)
    t_pred = time.perf_counter() - t_pred
    atlas_mask = prob > threshold
    removed = 0
    if min_lesion_size:
        from clci_keras.inference.ensemble import remove_small_components

        # ATLAS grid voxels are 1 mm^3, so a size in mm^3 is a voxel count.
        atlas_mask, removed = remove_small_components(atlas_mask, float(min_lesion_size))
    mask = grid.from_atlas(atlas_mask.astype(np.float32), order=0) > 0.5
    mask_img = image_like(image, mask, np.uint8, f"clci-keras lesion mask (p > {threshold:g})")
    prob_img = None
    if return_probabilities:
        prob_native = np.clip(grid.from_atlas(prob, order=1), 0.0, 1.0)
        prob_img = image_like(image, prob_native, np.float32, "clci-keras lesion probability")
    from clci_keras.inference.ensemble import as_model_list, check_tta

    total = time.perf_counter() - start
    return Segmentation(mask_img, prob_img, grid.kind, n, total, list(grid.notes),
                        registration=registration, models=len(as_model_list(model)),
                        tta="flip" if check_tta(tta) else "none", removed_components=removed,
                        template_mask=atlas_mask, template_probabilities=prob,
                        template_image=atlas_data if keep_members else None,
                        members=members, timings={"registration": round(reg_seconds, 3),
                                                  "prediction": round(t_pred, 3), "total": round(total, 3)})
