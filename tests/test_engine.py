"""The segmentation engine (clci_keras.inference.engine): one object behind predict, the BIDS App
and Python callers; its result feeds the lesion report (members, template grid).

Stand-in networks (a 1x1 threshold conv, optionally blind to one half of the slice), so a whole
volume costs seconds.
"""
from __future__ import annotations

import keras
import nibabel as nib
import numpy as np
import pytest

from clci_keras.data.constants import ATLAS_AFFINE, ATLAS_SHAPE
from clci_keras.inference import predict_volume
from clci_keras.inference.engine import SegmentationEngine
from clci_keras.inference.lesions import lesion_report
from clci_keras.models import register_model, save_weights_legacy

MODEL = "test_engine_threshold"
LEFT = (-40.0, -20.0, 10.0)  # template mm
RIGHT = (40.0, -20.0, 10.0)


@keras.saving.register_keras_serializable(package="tests")
class OneHalfOnly(keras.layers.Layer):
    """Zeroes the right half of each slice's width (the template's x axis): a network that sees
    lesions on one side only, so a flipped pass finds the other side's."""

    def call(self, x):
        w = x.shape[2]
        keep = keras.ops.concatenate([keras.ops.ones((1, 1, w // 2, 1)), keras.ops.zeros((1, 1, w - w // 2, 1))],
                                     axis=2)
        return x * keras.ops.cast(keep, x.dtype)


def _threshold(input_shape=(224, 176, 1), num_class=1, name=MODEL, one_half=False):
    """Probability sigmoid(40 * (x - 1.5)) of the r1.1-scaled intensity; ``one_half``: left half only."""
    inputs = keras.Input(input_shape)
    y = keras.layers.Conv2D(num_class, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(40.0),
                            bias_initializer=keras.initializers.Constant(-60.0), name="output")(inputs)
    return keras.Model(inputs, OneHalfOnly()(y) if one_half else y, name=name)


register_model(MODEL, _threshold, description="test stand-in", reference="tests")


def _ball(centre_mm, radius_mm=6.0):
    ijk = np.indices(ATLAS_SHAPE).reshape(3, -1).T
    world = ijk @ ATLAS_AFFINE[:3, :3].T + ATLAS_AFFINE[:3, 3]
    return (np.linalg.norm(world - np.asarray(centre_mm), axis=1) <= radius_mm).reshape(ATLAS_SHAPE)


@pytest.fixture(scope="module")
def scan():
    """A head (80) with two lesions (250), left and right, on the template grid."""
    data = np.zeros(ATLAS_SHAPE, np.float32)
    data[30:170, 30:200, 10:150] = 80.0
    lesions = _ball(LEFT) | _ball(RIGHT)
    data[lesions] = 250.0
    return nib.Nifti1Image(data, ATLAS_AFFINE), lesions


def test_engine_gives_predict_volumes_mask_and_its_template_arrays(scan):
    image, lesions = scan
    model = _threshold()
    seg = SegmentationEngine.from_models(model).segment(image)
    expected = predict_volume(model, image)
    np.testing.assert_array_equal(np.asanyarray(seg.mask.dataobj), np.asanyarray(expected.dataobj))
    assert np.array_equal(seg.template_mask, lesions)  # on the template grid the two grids are one
    assert seg.template_probabilities.shape == ATLAS_SHAPE and seg.members == []
    assert set(seg.timings) == {"registration", "prediction", "total"} and seg.to_mni is None
    assert seg.probabilities.get_data_dtype() == np.float32


def test_a_lesion_one_tta_pass_misses_shows_partial_agreement(scan):
    image, lesions = scan
    engine = SegmentationEngine.from_models(_threshold(one_half=True), tta="flip", threshold=0.3)
    seg = engine.segment(image)
    assert engine.members == 2 and len(seg.members) == 2  # the direct pass and the mirrored one
    found = [m > 0.5 for m in seg.members]
    assert found[0].sum() and found[1].sum() and not (found[0] & found[1]).any()  # each pass sees one side
    report = lesion_report(np.asanyarray(seg.mask.dataobj) > 0, image.affine, members=seg.members,
                           probability=np.asanyarray(seg.probabilities.dataobj), threshold=0.3,
                           template_mask=seg.template_mask)
    assert len(report.lesions) == 2
    assert [r["member_agreement"] for r in report.lesions] == [0.5, 0.5]
    assert all("low_agreement" not in r["flags"] for r in report.lesions)  # 0.5 is not below the cut
    assert {r["hemisphere"] for r in report.lesions} == {"left", "right"}


def test_engine_from_weights_builds_once_and_checks_its_settings(scan, tmp_path):
    image, lesions = scan
    weights = save_weights_legacy(_threshold(), str(tmp_path / "thr.h5"))
    engine = SegmentationEngine(weights, model=MODEL, intensity="r1.1")
    assert engine.models == [] and engine.intensity_source == "given"
    built = engine.build().models
    assert engine.build().models is built and engine.precision == "fp32"
    nib.save(image, tmp_path / "scan.nii.gz")
    seg = engine.segment(str(tmp_path / "scan.nii.gz"))  # a path is read as predict reads it
    assert np.array_equal(np.asanyarray(seg.mask.dataobj) > 0, lesions)
    for bad, match in (({"threshold": 1.2}, "1.2"), ({"tta": "rotate"}, "rotate"), ({"batch_size": 0}, "0"),
                       ({"min_lesion_size": -1}, "-1")):
        with pytest.raises(ValueError, match=match):
            SegmentationEngine(weights, model=MODEL, **bad)
    with pytest.raises(ValueError, match="give the weights"):
        SegmentationEngine([])
