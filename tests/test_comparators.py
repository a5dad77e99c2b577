"""Tests for the model registry and the paper's comparison methods.

Full-size (224x176) models are only built (parameter counts); forward passes,
save/load run at 64x48 and two eager training steps at 32x32, to stay fast on a CPU.
"""
import keras
import numpy as np
import pytest

from clci_keras.models import build_model, get_model_spec, list_models
from clci_keras.models.layers import (
    AdaptiveAveragePooling2D,
    BilinearKernel,
    ResizeTo,
    adaptive_bins,
)
from clci_keras.models.seeding import deferred_initializers

SMALL = (64, 48, 1)
TRAIN = (32, 32, 1)
UPDATES = 2
COMPARATORS = ("fcn8s", "pspnet", "deeplabv3plus", "denseunet")
EXPECTED = {"clci_net", "baseline", "clci_aspp", "clci_aspp_clf", *COMPARATORS}
#: Parameters at 224x176x1 (pinned: a change here changes the tables of docs/models.md).
PARAMS = {
    "clci_net": 36_838_305,
    "fcn8s": 41_475_171,
    "pspnet": 46_763_585,
    "deeplabv3plus": 40_527_361,
    "denseunet": 49_739_649,
}


def _toy_batch(shape=SMALL, n=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    blob = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 3) ** 2 < (shape[1] / 4) ** 2)
    y = np.broadcast_to(blob[None, :, :, None], (n, *shape[:2], 1)).astype("float32")
    x[..., :1] += 2.0 * y  # the lesion is brighter
    return x, y


def test_registry_lists_every_table_row():
    # Other tests may register throw-away models; the built-in ones are exactly the table rows.
    builtin = {n for n in list_models() if get_model_spec(n).builder.__module__.startswith("clci_keras.models.")}
    assert builtin == EXPECTED
    assert list_models() == sorted(list_models())
    for name in COMPARATORS:
        spec = get_model_spec(name)
        assert spec.reference and spec.description and spec.table.startswith("Table 1")


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unet3000") as err:
        build_model("unet3000")
    for name in EXPECTED:
        assert name in str(err.value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_size_builds(name):
    with deferred_initializers():  # shapes and counts only: Keras's random draws skipped
        model = build_model(name)
    assert model.input_shape == (None, 224, 176, 1)
    assert model.output_shape == (None, 224, 176, 1)
    assert model.name == name
    if name in PARAMS:
        assert model.count_params() == PARAMS[name]
    if name == "pspnet":  # 224x176 input: the pyramid pools a 28x22 map into 1, 2, 3 and 6 bins.
        assert model.get_layer("ppm_pool6").input.shape[1:3] == (28, 22)


#: CLCI-Net's forward pass and .keras round trip (safe mode): tests/test_clci_net.py
#: (test_keras_archive_round_trip_safe_mode, test_legacy_full_model_h5_and_keras3_formats).
@pytest.mark.parametrize("name", sorted(EXPECTED - {"clci_net"}))
def test_small_forward_and_keras_round_trip(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(name, input_shape=SMALL)
    x, _ = _toy_batch()
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, *SMALL[:2], 1)
    assert np.all(np.isfinite(y))
    assert y.min() >= 0.0 and y.max() <= 1.0
    if name != "fcn8s":  # FCN zero-initialises its score layers: 0.5 everywhere at first
        assert y.std() > 0

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), y)


#: CLCI-Net's own learning test: tests/test_clci_net.py::test_few_steps_lower_dice_loss (traced, 8 steps).
@pytest.mark.parametrize("name", sorted(EXPECTED - {"clci_net"}))
def test_few_steps_lower_the_loss(name):
    keras.utils.set_random_seed(1)
    model = build_model(name, input_shape=TRAIN)
    # Eager steps: tracing a train function of these graphs costs more than a few steps.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4), loss="binary_crossentropy", run_eagerly=True
    )
    x, y = _toy_batch(TRAIN, n=2)
    # One batch per epoch: each entry is the training-mode loss before that step's update ...
    losses = model.fit(x, y, batch_size=2, epochs=UPDATES, verbose=0, shuffle=False).history["loss"]
    # ... and the training-mode loss after the last update (what a next step would start from,
    # without its backward pass and update).
    losses.append(float(model.compute_loss(x, y, model(x, training=True))))
    assert len(losses) == UPDATES + 1 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.01, losses


@pytest.mark.parametrize("name", COMPARATORS)
def test_any_size_same_size_out(name, shape=(50, 37, 2)):
    model = build_model(name, input_shape=shape, num_class=3)
    assert model.output_shape == (None, *shape[:2], 3)
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype("float32")
    y = np.asarray(model(x, training=False))
    assert y.shape == (1, *shape[:2], 3)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)  # softmax over classes


@pytest.mark.parametrize("name", COMPARATORS)
@pytest.mark.parametrize("shape", [(7, 176, 1), (224, 176), (0, 176, 1), "224x176"])
def test_bad_shapes_raise(name, shape):
    with pytest.raises(ValueError, match="input_shape"):
        build_model(name, input_shape=shape)


@pytest.mark.parametrize("name", COMPARATORS)
def test_bad_num_class_raises(name):
    with pytest.raises(ValueError, match="num_class=0"):
        build_model(name, input_shape=SMALL, num_class=0)


def test_deterministic_layer_names_and_input_tensor():
    a = build_model("fcn8s", input_shape=SMALL)
    tensor = keras.Input(shape=SMALL, name="slices")
    b = build_model("fcn8s", input_tensor=tensor)
    assert b.input_shape == (None, *SMALL)
    assert [l.name for l in a.layers][1:] == [l.name for l in b.layers][1:]


@pytest.mark.parametrize("name", COMPARATORS)
def test_input_tensor_shape_replaces_input_shape(name, shape=(50, 37, 2)):
    with deferred_initializers():  # shapes only
        model = build_model(name, input_tensor=keras.Input(shape=shape), num_class=2)
    assert model.input_shape == (None, *shape) and model.output_shape == (None, *shape[:2], 2)


@pytest.mark.parametrize(
    "tensor, match",
    [
        (lambda: keras.Input(shape=(7, 176, 1)), r"input_tensor.*\(7, 176, 1\).*at least 32"),
        (lambda: keras.Input(shape=(None, None, 1)), r"input_tensor.*static.*\(None, None, None, 1\)"),
        (lambda: keras.Input(shape=(64, 48)), r"input_tensor.*static.*\(None, 64, 48\)"),
        (lambda: np.zeros((1, 64, 48, 1), "float32"), "input_tensor.*Keras tensor"),
    ],
    ids=["too-small", "dynamic", "rank-3", "not-keras"],
)
def test_bad_input_tensor_raises(tensor, match):
    with pytest.raises(ValueError, match=match):
        build_model("fcn8s", input_tensor=tensor())


def test_pspnet_aux_head_and_odd_bins():
    model = build_model("pspnet", input_shape=SMALL, aux_head=True)
    assert [o.shape for o in model.outputs] == [(None, *SMALL[:2], 1)] * 2
    assert model.output_names == ["output", "aux_output"]
    # The odd bins of the 224x176 input's 28x22 map: test_full_size_builds[pspnet].


def test_adaptive_pooling_matches_manual_bins():
    x = np.random.default_rng(0).normal(size=(2, 28, 22, 3)).astype("float32")
    y = np.asarray(AdaptiveAveragePooling2D((6, 3))(x))
    assert y.shape == (2, 6, 3, 3)
    for i, (h0, h1) in enumerate(adaptive_bins(28, 6)):
        for j, (w0, w1) in enumerate(adaptive_bins(22, 3)):
            np.testing.assert_allclose(y[:, i, j], x[:, h0:h1, w0:w1].mean((1, 2)), rtol=1e-5)
    assert adaptive_bins(22, 6) == [(0, 4), (3, 8), (7, 11), (11, 15), (14, 19), (18, 22)]
    # Divisible sizes: plain average pooling.
    z = np.asarray(AdaptiveAveragePooling2D(2)(x[:, :28, :22]))
    ref = np.asarray(keras.layers.AveragePooling2D((14, 11))(x))
    np.testing.assert_allclose(z, ref, rtol=1e-5)
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAveragePooling2D((0, 2))


def test_bilinear_transposed_conv_is_bilinear_upsampling():
    x = np.random.default_rng(0).normal(size=(1, 8, 6, 2)).astype("float32")
    for factor in (2, 8):
        up = keras.layers.Conv2DTranspose(
            2, 2 * factor, strides=factor, padding="same", use_bias=False,
            kernel_initializer=BilinearKernel(),
        )(x)
        ref = np.asarray(ResizeTo((8 * factor, 6 * factor))(x))
        inner = slice(factor, -factor)  # borders differ (zero padding vs clamping)
        np.testing.assert_allclose(
            np.asarray(up)[:, inner, inner], ref[:, inner, inner], atol=1e-5
        )
