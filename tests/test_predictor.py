"""Slice-batch predictor: lesion channel, fixed-size padded batches, progress, errors."""
import re

import keras
import numpy as np
import pytest

from clci_keras.models import lesion_probability, predict_slices

H, W = 8, 6


def sigmoid_model():
    """One 3×3 conv with a sigmoid: output (N, H, W, 1)."""
    inputs = keras.Input((H, W, 1))
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    return keras.Model(inputs, outputs)


def two_class_model(scale=3.0):
    """1×1 conv to logits (0, scale * x) and a softmax: channel 1 is sigmoid(scale * x)."""
    inputs = keras.Input((H, W, 1))
    conv = keras.layers.Conv2D(2, 1, activation="softmax")
    outputs = conv(inputs)
    conv.set_weights([np.array([[[[0.0, scale]]]], "float32"), np.zeros(2, "float32")])
    return keras.Model(inputs, outputs)


def slices(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, H, W)).astype("float32")


class Progress:
    def __init__(self):
        self.updates = []

    def update(self, n):
        self.updates.append(n)


def test_lesion_probability_picks_the_lesion_channel():
    y = np.random.default_rng(0).uniform(size=(2, H, W, 3))
    np.testing.assert_array_equal(lesion_probability(y[..., :1]), y[..., 0].astype("float32"))
    np.testing.assert_array_equal(lesion_probability(y), y[..., 1].astype("float32"))
    assert lesion_probability(y).dtype == np.float32 and lesion_probability(y).shape == (2, H, W)


@pytest.mark.parametrize("shape", [(2, H, W), (H, W, 1, 1, 1), (2, H, W, 0)])
def test_lesion_probability_bad_output_raises(shape):
    with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
        lesion_probability(np.zeros(shape))


def test_two_class_model_uses_channel_one():
    x = slices(5)
    p = predict_slices(two_class_model(), x, batch_size=2)
    expected = 1.0 / (1.0 + np.exp(-3.0 * x))
    assert p.dtype == np.float32 and p.shape == (5, H, W)
    np.testing.assert_allclose(p, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(p, 1.0 - expected, atol=1e-2)  # not the background channel


@pytest.mark.parametrize("n, batch_size", [(7, 3), (2, 8), (6, 3)])
def test_padded_batches_match_unbatched(n, batch_size):
    model = sigmoid_model()
    x = slices(n)
    progress = Progress()
    p = predict_slices(model, x[..., None], batch_size=batch_size, progress=progress)
    ref = predict_slices(model, x, batch_size=1)
    direct = keras.ops.convert_to_numpy(model(x[..., None]))[..., 0]
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p, direct, rtol=1e-5, atol=1e-6)
    assert sum(progress.updates) == n
    assert len(progress.updates) == -(-n // batch_size)


def test_one_trace_for_a_ragged_stack():
    model = sigmoid_model()
    predict_slices(model, slices(7), batch_size=3)  # batches of 3, 3, 1 (padded to 3)
    predict_slices(model, slices(2), batch_size=3)
    assert model.predict_function.experimental_get_tracing_count() == 1


def test_empty_stack():
    progress = Progress()
    p = predict_slices(sigmoid_model(), np.zeros((0, H, W), "float32"), progress=progress)
    assert p.shape == (0, H, W) and p.dtype == np.float32
    assert progress.updates == []


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_bad_batch_size_raises(batch_size):
    with pytest.raises(ValueError, match=re.escape(f"batch_size={batch_size!r}")):
        predict_slices(sigmoid_model(), slices(2), batch_size=batch_size)


@pytest.mark.parametrize("shape", [(H, W), (1, 2, H, W, 1)])
def test_bad_slices_rank_raises(shape):
    with pytest.raises(ValueError, match="`x`"):
        predict_slices(sigmoid_model(), np.zeros(shape, "float32"))
