"""Inference-only rewrites of a trained functional model (same weights, same outputs).

:func:`optimize_for_inference` applies

* **zero-state ConvLSTM** (exact, always): a ``ConvLSTM2D`` that starts from
  the zero state (CLCI-Net's context inference: a two-step sequence, no
  initial state) spends, at its first step, four recurrent convolutions on a
  zero hidden state and a forget-gate convolution whose gate multiplies a
  zero carry. :class:`ZeroStateConvLSTM2D` skips these five of its sixteen
  gate convolutions and computes everything else with the same operations as
  Keras' ``ConvLSTMCell``, so its outputs are the same numbers (adding or
  multiplying exact zeros changes nothing).
* **batch-norm folding** (optional, ``fold_batch_norm=True``): in inference a
  ``BatchNormalization`` after a ``Conv2D`` is the per-channel affine map
  ``gamma * (x - mean) / sqrt(var + eps) + beta`` and is merged into the
  convolution's kernel and bias (the usual deployment rewrite). This removes
  the BN's elementwise passes and, under Keras' ``mixed_bfloat16`` policy, the
  casts to float32 and back that Keras puts around every BN. Equal to the
  original up to float rounding (not bit for bit), so it is used for the
  bfloat16 path only.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="clci_keras")
class ZeroStateConvLSTM2D(keras.layers.ConvLSTM2D):
    """``ConvLSTM2D`` that skips the first step's work on the zero initial state.

    Same constructor, weights and outputs as :class:`keras.layers.ConvLSTM2D`.
    When called without ``initial_state`` and ``mask``, with
    ``return_sequences=False``, ``return_state=False`` and
    ``go_backwards=False`` (outside training with dropout), the steps are
    unrolled: step 1 computes only the input, candidate and output gates from
    the input (``h0 = c0 = 0``), later steps are Keras' ``ConvLSTMCell``
    operation for operation. Any other call falls back to ``ConvLSTM2D``.
    """

    def call(self, sequences, initial_state=None, mask=None, training=False):
        cell = self.cell
        dropout = training and (cell.dropout > 0 or cell.recurrent_dropout > 0)
        if (
            initial_state is not None
            or mask is not None
            or dropout
            or self.return_sequences
            or self.return_state
            or self.go_backwards
            or sequences.shape[1] is None
        ):
            return super().call(sequences, initial_state=initial_state, mask=mask, training=training)
        axis = cell.rank + 1
        k_i, k_f, k_c, k_o = ops.split(cell.kernel, 4, axis=axis)
        r_i, r_f, r_c, r_o = ops.split(cell.recurrent_kernel, 4, axis=axis)
        b_i, b_f, b_c, b_o = ops.split(cell.bias, 4) if cell.use_bias else (None,) * 4
        act, gate = cell.activation, cell.recurrent_activation

        def conv_in(x, k, b):
            return cell.input_conv(x, k, b, padding=cell.padding)

        x = sequences[:, 0]
        i = gate(conv_in(x, k_i, b_i))
        c = i * act(conv_in(x, k_c, b_c))
        o = gate(conv_in(x, k_o, b_o))
        h = o * act(c)
        for t in range(1, sequences.shape[1]):
            x = sequences[:, t]
            x_i, x_f = conv_in(x, k_i, b_i), conv_in(x, k_f, b_f)
            x_c, x_o = conv_in(x, k_c, b_c), conv_in(x, k_o, b_o)
            h_i, h_f = cell.recurrent_conv(h, r_i), cell.recurrent_conv(h, r_f)
            h_c, h_o = cell.recurrent_conv(h, r_c), cell.recurrent_conv(h, r_o)
            i = gate(x_i + h_i)
            f = gate(x_f + h_f)
            c = f * c + i * act(x_c + h_c)
            o = gate(x_o + h_o)
            h = o * act(c)
        return h


def _inbound_names(layer_config):
    """Names of the layers feeding a layer in a functional model's config."""
    names = []

    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                names.append(obj["config"]["keras_history"][0])
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(layer_config.get("inbound_nodes", []))
    return names


def foldable_pairs(model):
    """``{bn_name: conv_name}`` for each BatchNormalization fed only by a Conv2D used only by it."""
    config = model.get_config()
    layers = {c["config"]["name"]: c for c in config["layers"]}
    consumers = {}
    for name, c in layers.items():
        for src in _inbound_names(c):
            consumers.setdefault(src, []).append(name)
    out_cfg = config["output_layers"]
    out_cfg = [out_cfg] if out_cfg and isinstance(out_cfg[0], str) else out_cfg
    outputs = {o[0] for o in out_cfg}
    pairs = {}
    for name, c in layers.items():
        layer = model.get_layer(name)
        if not isinstance(layer, keras.layers.BatchNormalization) or len(c["inbound_nodes"]) != 1:
            continue
        if layer.axis not in (-1, [-1], 3, [3]):
            continue
        src = _inbound_names(c)
        if len(src) != 1:
            continue
        conv = model.get_layer(src[0])
        if (
            type(conv) is keras.layers.Conv2D
            and conv.data_format == "channels_last"
            and conv.activation in (None, keras.activations.linear)
            and len(layers[conv.name]["inbound_nodes"]) == 1
            and consumers.get(conv.name) == [name]
            and conv.name not in outputs
        ):
            pairs[name] = conv.name
    return pairs


def optimize_for_inference(model, fold_batch_norm=False):
    """Copy of functional ``model`` rewritten for inference (see the module docstring).

    Args:
        model: a functional Keras model (e.g. CLCI-Net with loaded weights).
        fold_batch_norm: also fold each Conv2D→BatchNormalization pair (each
            folded BN becomes an ``Identity`` layer of the same name).

    Returns:
        A new model with the same layer names, dtype policies and weights;
        ``ConvLSTM2D`` layers called without initial state become
        :class:`ZeroStateConvLSTM2D`. For inference only (``training=False``).
    """
    pairs = foldable_pairs(model) if fold_batch_norm else {}
    convs = {conv: bn for bn, conv in pairs.items()}
    config = model.get_config()
    for c in config["layers"]:
        name = c["config"]["name"]
        if c["class_name"] == "ConvLSTM2D" and c.get("module") == "keras.layers":
            if all(not (n.get("kwargs") or {}).get("initial_state") for n in c["inbound_nodes"] if isinstance(n, dict)):
                c["class_name"] = "ZeroStateConvLSTM2D"
                c["module"] = __name__
                c["registered_name"] = "clci_keras>ZeroStateConvLSTM2D"
        elif name in pairs:
            c["class_name"] = "Identity"
            c["module"] = "keras.layers"
            c["registered_name"] = None
            c["config"] = {"name": name, "trainable": False, "dtype": c["config"].get("dtype")}
            for node in c["inbound_nodes"]:  # BN's call kwargs (mask, training) do not apply
                if isinstance(node, dict):
                    node["kwargs"] = {}
        elif name in convs:
            c["config"]["use_bias"] = True
    from clci_keras.models.seeding import deferred_initializers

    # every weight of the copy is set below (set_weights of each layer, the folded kernels and
    # biases; the Identity layers have none): Keras's initialisers would only be overwritten
    with deferred_initializers():
        folded = keras.Model.from_config(config)
    for layer in model.layers:
        target = folded.get_layer(layer.name)
        if layer.name in pairs:
            continue
        if layer.name not in convs:
            target.set_weights(layer.get_weights())
            continue
        bn = model.get_layer(convs[layer.name])
        kernel = np.asarray(layer.kernel.numpy(), dtype=np.float64)
        bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(kernel.shape[-1])
        gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(bias)
        beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros_like(bias)
        mean = np.asarray(bn.moving_mean.numpy(), np.float64)
        var = np.asarray(bn.moving_variance.numpy(), np.float64)
        scale = gamma / np.sqrt(var + bn.epsilon)
        target.kernel.assign((kernel * scale).astype(target.kernel.dtype))
        target.bias.assign(((bias - mean) * scale + beta).astype(target.bias.dtype))
    return folded
