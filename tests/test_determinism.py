"""One seed, one training: two processes with the same seed end with the same weights, bit for bit.

With TensorFlow's oneDNN kernels (its default on x86-64) and ops run side by side, two
processes that train the same network from the same seed at full slice size (224 x 176)
end a few steps apart in the last bits, although op determinism is on;
:func:`clci_keras.training.determinism.prepare_determinism` turns oneDNN off and runs one
op at a time, before TensorFlow is imported. The network here is a 64-channel U-Net level, small enough
for seconds of CPU but wide enough to show the difference (measured:
benchmarks/RESULTS.md, "One seed, one curve").
"""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A child process: the switch set before TensorFlow is imported, a registered 64-channel
#: network trained for 2 steps at full slice size; argv: switch (on/off) h5 split out.
CHILD = r"""
import sys
from clci_keras.training.determinism import prepare_determinism

on = sys.argv[1] == "on"
prepare_determinism(on)
import keras
from clci_keras.models import register_model
from clci_keras.models.clci_net import conv_bias_bn_relu
from clci_keras.training import train


def det_net(input_shape=(224, 176, 1), num_class=1, name="det_net"):
    inputs = keras.Input(input_shape)
    a = conv_bias_bn_relu(conv_bias_bn_relu(inputs, 64, name="a1"), 64, name="a2")
    b = conv_bias_bn_relu(keras.layers.MaxPooling2D(name="pool")(a), 128, name="b")
    up = keras.layers.UpSampling2D(name="up")(b)
    c = conv_bias_bn_relu(keras.layers.Concatenate(name="skip")([a, up]), 64, name="c")
    return keras.Model(inputs, keras.layers.Conv2D(num_class, 1, activation="sigmoid", name="out")(c), name=name)


register_model("det_net", det_net, description="tests/test_determinism.py", reference="tests/test_determinism.py")
train("det_net", sys.argv[2], sys.argv[3], sys.argv[4], max_steps=2, batch_size=4, seed=5, deterministic=on,
      train_slices="lesion", tensorboard=False, manifest=None, verbose=0, export="last")
"""


@pytest.fixture(scope="module")
def split(synthetic_h5, tmp_path_factory):
    from clci_keras.data.splits import save_split

    path = tmp_path_factory.mktemp("det") / "split.json"
    save_split({"train": [0, 1], "val": [], "test": [], "mode": "holdout"}, path)
    return str(path)


def _weights(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


HANG_GUARD = 1800  # seconds; only against a hung child, never reached by a working one

def _child_env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTEROP_THREADS")}
    env.update(KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    return env


def test_same_seed_same_weights_in_two_processes(synthetic_h5, split, tmp_path):
    """Both processes at once (as two jobs on one machine would run): the result must not depend on it."""
    outs = [tmp_path / f"run{i}" for i in (1, 2)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, "on", str(synthetic_h5), split, str(out)],
                              env=_child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=HANG_GUARD)
        assert proc.returncode == 0, err[-3000:]
    first, second = (_weights(os.path.join(out, "det_net_weights.h5")) for out in outs)
    assert first.keys() == second.keys() and len(first) >= 20
    differ = [name for name in first if not np.array_equal(first[name], second[name])]
    assert not differ, f"{len(differ)} of {len(first)} weight arrays differ, e.g. {differ[0]}"


def test_the_cli_switches_onednn_off_before_tensorflow_loads(tmp_path):
    """``clci-keras train --deterministic`` sets TF_ENABLE_ONEDNN_OPTS=0 before the trainer imports
    TensorFlow (without the flag, about half the CPU time per step, nothing is set:
    test_prepare_determinism_keeps_the_users_setting)."""
    code = ("import os, sys\nfrom clci_keras.cli import main\n"
            "main(['train', '--h5', 'missing.h5', '--split', 's.json', '--out', sys.argv[1], '--deterministic'])\n"
            "from clci_keras.training.determinism import onednn_enabled\n"
            "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules, onednn_enabled())\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], env=_child_env(),
                          capture_output=True, text=True, timeout=HANG_GUARD, cwd=tmp_path)
    assert proc.stdout.strip().splitlines()[-1] == "0 True False", proc.stderr[-3000:]


def test_prepare_determinism_keeps_the_users_setting(monkeypatch):
    from clci_keras.training.determinism import INTEROP_VARIABLE, ONEDNN_VARIABLE, prepare_determinism

    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # as before TensorFlow is imported
    monkeypatch.delenv(INTEROP_VARIABLE, raising=False)  # restored afterwards
    monkeypatch.setenv(ONEDNN_VARIABLE, "1")
    assert prepare_determinism() is False and os.environ[ONEDNN_VARIABLE] == "1"
    monkeypatch.delenv(ONEDNN_VARIABLE)
    assert prepare_determinism(False) is False and ONEDNN_VARIABLE not in os.environ
    assert prepare_determinism() is True and os.environ[ONEDNN_VARIABLE] == "0" and os.environ[INTEROP_VARIABLE] == "1"
