"""One seed, one starting network: clci_keras.models.seeding and the backend-neutral Dropout.

Here on TensorFlow; tests/test_backends.py checks that JAX and PyTorch give the
same weights, masks and training-mode outputs.
"""
import numpy as np
import pytest

import keras

from clci_keras.models import build_model, list_models
from clci_keras.models.layers import Dropout, counter_uniform
from clci_keras.models.seeding import deferred_initializers, draw_initial_state, seed_generators

SHAPE = (32, 32, 1)


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _built(name, keras_seed, seed=7, deferred=False):
    """``name`` built at :data:`SHAPE` and drawn from ``seed``; ``deferred``: as the trainer builds
    it (Keras's own initialisers skipped: on JAX each compiles a program)."""
    keras.utils.set_random_seed(keras_seed)
    if deferred:
        with deferred_initializers() as skipped:
            model = build_model(name, input_shape=SHAPE)
    else:
        model = build_model(name, input_shape=SHAPE)
    draw_initial_state(model, seed)
    assert not deferred or not skipped.unset(model)
    return model


@pytest.mark.parametrize("name", ["clci_net", "deeplabv3plus"])  # orthogonal + He + Glorot; ResNet
def test_the_start_depends_on_the_seed_alone(name):
    assert name in list_models()
    a, b = _built(name, keras_seed=1), _built(name, keras_seed=2)  # Keras's own draws differ
    assert all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b)))
    states = [{k: keras.ops.convert_to_numpy(g.state).tolist() for k, g in seed_generators(m).items()}
              for m in (a, b)]
    assert states[0] == states[1]
    d = _built(name, keras_seed=3, deferred=True)  # the trainer's build: the same start
    assert all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(d)))
    c = _built(name, keras_seed=1, seed=8, deferred=True)
    assert not all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(c)))


def test_the_draws_follow_the_initialisers_distributions():
    keras.utils.set_random_seed(0)
    model = build_model("clci_net", input_shape=(64, 64, 1))
    before = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    assert draw_initial_state(model, 3) == 59  # 51 conv kernels + 4 ConvLSTM kernels + 4 recurrent kernels
    after = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    big = after["enc5_2_conv/kernel"]  # He normal, truncated at 2 std: std sqrt(2 / fan_in)
    std = np.sqrt(2.0 / (9 * big.shape[2]))
    assert abs(big.std() / std - 1) < 0.01 and np.abs(big).max() <= 2 * std / 0.87962566103423978 + 1e-6
    assert abs(big.std() / before["enc5_2_conv/kernel"].std() - 1) < 0.01  # as Keras's own draw
    out = after["output/kernel"]  # Glorot uniform
    assert np.abs(out).max() <= np.sqrt(6.0 / (out.shape[2] + out.shape[3])) + 1e-7
    rec = next(v for k, v in after.items() if k.endswith("recurrent_kernel"))  # orthogonal columns
    flat = rec.reshape(-1, rec.shape[-1])
    np.testing.assert_allclose(flat.T @ flat, np.eye(flat.shape[1]), atol=1e-5)
    for path, value in after.items():  # constants (biases, BatchNorm, forget-gate bias) untouched
        if not path.endswith("kernel"):
            np.testing.assert_array_equal(value, before[path])


def test_an_initialiser_without_a_neutral_draw_is_refused():
    class Odd(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            return keras.random.normal(shape, dtype=dtype)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer=Odd(), name="odd_dense")(inputs))
    with pytest.raises(ValueError, match="layer 'odd_dense': no backend-neutral draw for its kernel_initializer Odd"):
        draw_initial_state(model, 0)


def test_counter_uniform_is_uniform_and_a_function_of_seed_and_position():
    u = keras.ops.convert_to_numpy(counter_uniform((4, 50, 500), np.array([11, 0])))
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and np.histogram(u, 10, (0, 1))[0].min() > 9_500
    again = keras.ops.convert_to_numpy(counter_uniform((4, 50, 500), np.array([11, 0])))
    np.testing.assert_array_equal(u, again)
    for other in ([11, 1], [12, 0]):
        v = keras.ops.convert_to_numpy(counter_uniform((4, 50, 500), np.array(other)))
        assert abs(((u < 0.5) == (v < 0.5)).mean() - 0.5) < 0.01  # independent masks


def test_dropout_masks_scale_advance_and_replay():
    layer = Dropout(0.5, seed=5, name="drop")
    x = np.full((8, 6, 5, 16), 3.0, "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)  # inference: identity
    start = keras.ops.convert_to_numpy(layer.seed_generator.state)
    first = keras.ops.convert_to_numpy(layer(x, training=True))
    assert set(np.unique(first)) == {0.0, 6.0} and abs((first > 0).mean() - 0.5) < 0.03
    second = keras.ops.convert_to_numpy(layer(x, training=True))
    assert not np.array_equal(first, second)  # a new mask at every call
    layer.seed_generator.state.assign(start)  # what a resume point restores
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=True)), first)
    shared = Dropout(0.25, noise_shape=(None, 1, 1, 16), seed=5)(x, training=True)
    shared = keras.ops.convert_to_numpy(shared)
    assert np.array_equal(shared, np.broadcast_to(shared[:, :1, :1], shared.shape)) and shared.max() == 4.0
    off = Dropout(0.5)
    off.rate = 0.0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(off(x, training=True)), x)


def test_dropout_serialises_as_keras_dropout_with_its_package():
    layer = Dropout(0.3, noise_shape=(None, 1, 1, 4), seed=9, name="d")
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "clci_keras>Dropout"
    back = keras.saving.deserialize_keras_object(config)
    assert type(back) is Dropout and back.get_config() == layer.get_config()


def test_traced_dropout_with_an_unknown_batch():
    import tensorflow as tf

    layer = Dropout(0.5, seed=1)

    @tf.function(input_signature=[tf.TensorSpec([None, 7, 5, 3])])
    def step(x):
        return layer(x, training=True)

    out = step(tf.ones((4, 7, 5, 3))).numpy()
    layer.seed_generator.state.assign(np.array([1, 0]))
    np.testing.assert_array_equal(out, keras.ops.convert_to_numpy(layer(np.ones((4, 7, 5, 3), "float32"),
                                                                        training=True)))


def training_mode_outputs(path):
    """CLCI-Net at 32 x 32 drawn from seed 7, two training-mode calls (dropout on): saved to ``path``.

    tests/test_backends.py runs it on JAX and PyTorch and compares with TensorFlow's.
    """
    model = _built("clci_net", keras_seed=0, deferred=True)
    start = _weights(model)  # before the training-mode calls update BatchNorm's moving statistics
    x = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype("float32")
    outs = [keras.ops.convert_to_numpy(model(x, training=True)) for _ in range(2)]
    drop = model.get_layer("enc5_dropout")
    masks = [keras.ops.convert_to_numpy(drop(np.ones((2, 2, 2, 1024), "float32"), training=True)) for _ in range(2)]
    np.savez(path, *start, out0=outs[0], out1=outs[1], mask0=masks[0], mask1=masks[1])
