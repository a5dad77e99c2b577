"""CLCI-Net: architecture fidelity, Keras-2 weight parity, serialization, ablations."""
import collections
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import clci_keras
from clci_keras.models import CLCI_Net, load_weights, save_weights_legacy
from clci_keras.models.layers import BilinearUpsampling, SequenceConcat, hard_sigmoid_keras2
from clci_keras.models.losses import bce_dice_loss, dice_coef, dice_coef_loss
from clci_keras.models.weights import WeightsMismatchError, detect_format

tf_keras = pytest.importorskip("tf_keras", reason="tf_keras is a test dependency (see .ci/run)")
from keras2_reference import randomize_keras2, reference_clci_net  # noqa: E402


def weight_signature(model, keras2=False):
    sig = []
    for layer in model.layers:
        if not layer.weights:
            continue
        ws = layer.weights if keras2 else layer.trainable_weights + layer.non_trainable_weights
        sig.append((type(layer).__name__, [tuple(int(d) for d in w.shape) for w in ws]))
    return sig


@pytest.fixture(scope="module")
def full_model():
    return CLCI_Net(input_shape=(224, 176, 1))


def test_full_size_parameter_count_and_layer_mix(full_model):
    assert full_model.count_params() == 36_838_305
    counts = collections.Counter(type(l).__name__ for l in full_model.layers if l.weights)
    assert counts == {"Conv2D": 51, "BatchNormalization": 50, "ConvLSTM2D": 4}
    assert full_model.output_shape == (None, 224, 176, 1)


def test_full_size_weight_order_matches_keras2_reference(full_model):
    ref = reference_clci_net((224, 176, 1))
    assert ref.count_params() == 36_838_305
    assert weight_signature(full_model) == weight_signature(ref, keras2=True)


def test_keras2_semantics_are_pinned(full_model):
    lstms = [l for l in full_model.layers if isinstance(l, keras.layers.ConvLSTM2D)]
    assert len(lstms) == 4
    for l in lstms:
        assert l.cell.recurrent_activation is hard_sigmoid_keras2
        assert l.cell.unit_forget_bias
        assert not l.return_sequences
        assert l.unroll  # two steps, unrolled (XLA's CPU loop is slow to train)
    bns = [l for l in full_model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(l.momentum == 0.99 and l.epsilon == 1e-3 for l in bns)
    convs = [l for l in full_model.layers if isinstance(l, keras.layers.Conv2D)]
    assert all(l.padding == "same" for l in convs[:-1]) and convs[-1].kernel_size == (1, 1)
    assert sum(isinstance(l.kernel_initializer, keras.initializers.HeNormal) for l in convs) == 50
    assert isinstance(convs[-1].kernel_initializer, keras.initializers.GlorotUniform)
    assert convs[-1].activation is keras.activations.sigmoid
    drop = [l for l in full_model.layers if isinstance(l, keras.layers.Dropout)]
    assert [l.rate for l in drop] == [0.5, 0.5]


def test_hard_sigmoid_is_keras2_formula():
    x = np.array([-5.0, -2.5, -1.0, 0.0, 1.0, 2.5, 5.0], "float32")
    expected = np.clip(0.2 * x + 0.5, 0, 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(hard_sigmoid_keras2(x)), expected, atol=1e-7)
    ref = tf_keras.activations.hard_sigmoid(tf.constant(x)).numpy()
    np.testing.assert_allclose(expected, ref, atol=1e-7)
    # Keras 3 changed hard_sigmoid (slope 1/6): make sure we do not depend on it.
    assert not np.allclose(keras.ops.convert_to_numpy(keras.activations.hard_sigmoid(x)), expected)


def test_bilinear_upsampling_matches_tf1_resize():
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 4)).astype("float32")
    layer = BilinearUpsampling((2, 3))
    got = keras.ops.convert_to_numpy(layer(x))
    ref = tf.compat.v1.image.resize_bilinear(x, (6, 15), align_corners=False).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert layer.compute_output_shape((None, 3, 5, 4)) == (None, 6, 15, 4)
    with pytest.raises(ValueError, match=r"upsampling=\(0, 2\)"):
        BilinearUpsampling((0, 2))


def test_sequence_concat():
    a, b = np.ones((2, 1, 3, 3, 4), "float32"), np.zeros((2, 1, 3, 3, 4), "float32")
    out = keras.ops.convert_to_numpy(SequenceConcat(axis=1)([a, b]))
    assert out.shape == (2, 2, 3, 3, 4) and out[:, 0].min() == 1 and out[:, 1].max() == 0
    with pytest.raises(ValueError, match="axis=0"):
        SequenceConcat(axis=0)


@pytest.mark.parametrize("shape", [(48, 32, 1), (32, 64, 1)])
def test_legacy_keras2_weights_reproduce_reference_output(tmp_path, shape):
    ref = reference_clci_net(shape)
    randomize_keras2(ref, seed=shape[0])
    path = tmp_path / "keras2_weights.h5"
    ref.save_weights(str(path))  # tf_keras writes the legacy HDF5 layout for .h5
    assert detect_format(path) == "legacy_weights"

    ours = CLCI_Net(input_shape=shape)
    assert load_weights(ours, path) == "legacy_weights"
    x = np.random.default_rng(2).uniform(0, 1, (3, *shape)).astype("float32")
    expected = ref(x, training=False).numpy()
    got = keras.ops.convert_to_numpy(ours(x, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert expected.std() > 1e-4  # the comparison is not between constant maps


def test_legacy_export_loads_into_keras2_reference(tmp_path):
    shape = (32, 32, 1)
    ours = CLCI_Net(input_shape=shape)
    # Non-trivial BN statistics.
    for layer in ours.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1.7, "float32"))
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.05, "float32"))
    path = save_weights_legacy(ours, tmp_path / "export.h5")
    ref = reference_clci_net(shape)
    ref.load_weights(str(path))  # Keras 2 topological loading
    x = np.random.default_rng(3).uniform(0, 1, (2, *shape)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours(x, training=False)), ref(x, training=False).numpy(), atol=1e-5
    )


def test_legacy_full_model_h5_and_keras3_formats(tmp_path):
    shape = (32, 32, 1)
    ref = reference_clci_net(shape)
    randomize_keras2(ref, seed=7)
    full = tmp_path / "full_model.h5"
    ref.save(str(full), save_format="h5")
    assert detect_format(full) == "legacy_model"
    a = CLCI_Net(input_shape=shape)
    load_weights(a, full)
    x = np.random.default_rng(4).uniform(0, 1, (2, *shape)).astype("float32")
    ya = keras.ops.convert_to_numpy(a(x, training=False))
    np.testing.assert_allclose(ya, ref(x, training=False).numpy(), atol=1e-5)

    w3 = tmp_path / "k3.weights.h5"
    a.save_weights(str(w3))
    b = CLCI_Net(input_shape=shape)
    assert load_weights(b, w3) == "keras3_weights"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(b(x, training=False)), ya, atol=1e-6)

    arch = tmp_path / "model.keras"
    a.save(str(arch))
    c = CLCI_Net(input_shape=shape)
    assert load_weights(c, arch) == "keras_archive"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(c(x, training=False)), ya, atol=1e-6)


def test_weights_of_another_architecture_name_the_first_misfit(tmp_path):
    path = save_weights_legacy(CLCI_Net(input_shape=(32, 32, 1), inference=False), tmp_path / "b.h5")
    target = CLCI_Net(input_shape=(32, 32, 1))  # one network for the three refusals
    with pytest.raises(WeightsMismatchError, match=r"dec1_skip_conv|dec1_conv_1_conv|expects shapes"):
        load_weights(target, path)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        load_weights(target, tmp_path / "does_not_exist.h5")
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="garbage.h5"):
        load_weights(target, bad)


def test_keras_archive_round_trip_safe_mode(tmp_path):
    model = CLCI_Net(input_shape=(32, 48, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=dice_coef_loss, metrics=[dice_coef])
    path = tmp_path / "m.keras"
    model.save(str(path))
    loaded = keras.models.load_model(str(path), safe_mode=True)
    x = np.random.default_rng(5).uniform(0, 1, (2, 32, 48, 1)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(x, training=False)),
        keras.ops.convert_to_numpy(loaded(x, training=False)),
    )
    assert not any(isinstance(l, keras.layers.Lambda) for l in loaded.layers)


ABLATIONS = [
    dict(aspp=True, clf=True, inference=True),
    dict(aspp=False, clf=True, inference=True),
    dict(aspp=True, clf=False, inference=True),
    dict(aspp=True, clf=True, inference=False),
    dict(aspp=False, clf=False, inference=False),
]


@pytest.mark.parametrize("switches", ABLATIONS, ids=lambda s: "-".join(k for k, v in s.items() if v) or "baseline")
def test_ablation_variants_build_and_run(switches):
    model = CLCI_Net(input_shape=(32, 32, 1), **switches)
    y = keras.ops.convert_to_numpy(model(np.ones((1, 32, 32, 1), "float32")))
    assert y.shape == (1, 32, 32, 1) and np.isfinite(y).all()
    names = [l.name for l in model.layers]
    kinds = collections.Counter(type(l).__name__ for l in model.layers)
    assert (kinds["ConvLSTM2D"] == 4) == switches["inference"]
    assert any(n.startswith("clf_aspp") for n in names) == switches["aspp"]
    assert any(n.startswith("clf1_") for n in names) == switches["clf"]
    assert any(n.startswith("clf_aspp_clf") for n in names) == (switches["aspp"] and switches["clf"])


def test_baseline_is_smaller_and_registered(full_model):
    # CLCI-Net through the registry at full size: tests/test_comparators.py::test_full_size_builds.
    base = clci_keras.build_model("baseline", input_shape=(224, 176, 1))
    assert base.count_params() < full_model.count_params() == 36_838_305
    assert not any(isinstance(l, keras.layers.ConvLSTM2D) for l in base.layers)


@pytest.mark.parametrize("shape", [(224, 170, 1), (100, 176, 1), (224, 176), "abc", (0, 16, 1)])
def test_bad_input_shapes_raise(shape):
    with pytest.raises(ValueError, match="input_shape"):
        CLCI_Net(input_shape=shape)


def test_input_tensor_sets_the_shape():
    # input_shape stays at its default (224, 176, 1): the tensor's shape must win.
    from_tensor = CLCI_Net(input_tensor=keras.Input((48, 32, 1)))
    from_shape = CLCI_Net(input_shape=(48, 32, 1))
    assert from_tensor.input_shape == (None, 48, 32, 1)
    assert from_tensor.output_shape == (None, 48, 32, 1)
    assert from_tensor.get_layer("clf_aspp_pool").pool_size == (3, 2)
    assert from_tensor.count_params() == from_shape.count_params()
    assert weight_signature(from_tensor) == weight_signature(from_shape)
    assert [l.name for l in from_tensor.layers][1:] == [l.name for l in from_shape.layers][1:]
    y = keras.ops.convert_to_numpy(from_tensor(np.ones((1, 48, 32, 1), "float32")))
    assert y.shape == (1, 48, 32, 1) and np.isfinite(y).all()


@pytest.mark.parametrize("shape", [(48, 30, 1), (40, 32, 1)])
def test_bad_input_tensor_raises(shape):
    with pytest.raises(ValueError, match=re.escape(f"`input_tensor.shape[1:]`={shape!r}")):
        CLCI_Net(input_tensor=keras.Input(shape))


@pytest.mark.parametrize("num_class", [0, -1, 1.5, True])
def test_bad_num_class_raises(num_class):
    with pytest.raises(ValueError, match=f"num_class={num_class!r}"):
        CLCI_Net(input_shape=(32, 32, 1), num_class=num_class)


def test_multiclass_softmax():
    model = CLCI_Net(input_shape=(32, 32, 1), num_class=3)
    y = keras.ops.convert_to_numpy(model(np.ones((1, 32, 32, 1), "float32")))
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


def test_losses_match_hand_computation():
    t = np.array([[1, 1, 0, 0]], "float32")
    p = np.array([[0.5, 1.0, 0.5, 0.0]], "float32")
    inter, st, sp = 1.5, 2.0, 1.5
    expected = (2 * inter + 1) / (st + sp + 1)
    assert float(dice_coef(t, p)) == pytest.approx(expected, rel=1e-6)
    assert float(dice_coef_loss(t, p)) == pytest.approx(1 - expected, rel=1e-6)
    bce = -np.mean(t * np.log(np.clip(p, 1e-7, 1)) + (1 - t) * np.log(np.clip(1 - p, 1e-7, 1)))
    xdice = 2 * 1.5 / (2.0 + 2.0)
    assert float(bce_dice_loss(t, p)) == pytest.approx(bce + 1 - xdice, rel=1e-4)


def test_few_steps_lower_dice_loss():
    """Eight training steps of ``fit``'s traced step lower the Dice loss."""
    keras.utils.set_random_seed(0)
    model = CLCI_Net(input_shape=(32, 32, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=dice_coef_loss)
    # Optimizer variables made now: otherwise made while tracing, and the step is traced twice.
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (4, 32, 32, 1)).astype("float32")
    y = np.zeros_like(x)
    y[:, 8:20, 10:22] = 1
    x[y == 1] *= 0.3  # hypointense "lesion"

    def loss():  # what `evaluate` computes (inference mode), without tracing a test step
        return float(dice_coef_loss(y, model(x, training=False)))

    first = loss()
    model.fit(x, y, epochs=8, batch_size=4, verbose=0)
    assert loss() < first - 0.02
