"""clci_keras.precision: the one vocabulary, its Keras policies, the bf16 -> fp32 fallback on
CPUs that only emulate bf16, and the older spellings read from existing config.json files."""
import json
import re
import subprocess
import warnings

import pytest

from clci_keras import precision

NATIVE = ["avx2", "avx512f", "avx512_bf16", "fma"]
EMULATED = ["avx", "avx2", "fma"]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(precision, "gpu_info", lambda *a, **k: [])


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set this machine's CPU flags as /proc/cpuinfo reports them."""
    def set_flags(flags):
        monkeypatch.setattr(precision, "read_cpuinfo", lambda path=None: ("Test CPU", set(flags)))
    return set_flags


def test_the_vocabulary_and_its_policies():
    assert precision.PRECISIONS == ("fp32", "bf16", "fp16")
    assert precision.DTYPE_POLICIES == {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
    assert precision.INFERENCE_PRECISIONS == ("fp32", "bf16")
    assert [precision.is_mixed(p) for p in precision.PRECISIONS] == [False, True, True]


@pytest.mark.parametrize("old, new", [("off", "fp32"), ("float32", "fp32"), ("mixed_bfloat16", "bf16"),
                                      ("mixed_float16", "fp16"), ("fp32", "fp32"), ("bf16", "bf16"),
                                      ("fp16", "fp16")])
def test_legacy_spellings_are_read(old, new):
    assert precision.read_legacy_precision(old) == new


@pytest.mark.parametrize("bad", ["BF16", "", None, "half", 16])
def test_unknown_precision_raises_echoing_it(bad):
    for call in (precision.check_precision, precision.read_legacy_precision, precision.resolve_precision,
                 precision.is_mixed):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            call(bad)


@pytest.mark.parametrize("old", ["off", "float32", "mixed_bfloat16"])
def test_legacy_spellings_are_refused_everywhere_but_in_config_files(old):
    with pytest.raises(ValueError, match=re.escape(repr(old))):
        precision.check_precision(old)
    with pytest.raises(ValueError, match=re.escape(repr(old))):
        precision.resolve_precision(old)


def test_an_old_config_json_is_read_with_the_new_names(tmp_path):
    """A run folder's config.json from before ``precision``: ``"mixed_precision": "off"`` is fp32,
    and the run it describes is the same run as one with ``precision="fp32"`` (a resume continues)."""
    from clci_keras.training import TrainConfig

    new = TrainConfig(h5="d.h5", split="s.json", out_dir="r", precision="fp32")
    for old_value, name in (("off", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")):
        old = new.to_dict()
        del old["precision"]
        old["mixed_precision"] = old_value
        path = tmp_path / "config.json"
        path.write_text(json.dumps(old))
        cfg = TrainConfig.from_dict(json.loads(path.read_text()))
        assert cfg.precision == name and "mixed_precision" not in cfg.to_dict()
        assert cfg.validate() is cfg
        assert (cfg.differences(new) == []) is (name == "fp32")
    with pytest.raises(ValueError, match="'half'"):
        TrainConfig.from_dict({**new.to_dict(), "precision": "half"}).validate()
    with pytest.raises(ValueError, match="'off'"):  # the old spelling under the new name is not read
        TrainConfig.from_dict({**new.to_dict(), "precision": "off"}).validate()


def test_precision_policy_sets_and_restores_keras_policy():
    import keras

    before = keras.config.dtype_policy().name
    for name, policy in precision.DTYPE_POLICIES.items():
        with precision.precision_policy(name):
            assert keras.config.dtype_policy().name == policy
        assert keras.config.dtype_policy().name == before
    with pytest.raises(RuntimeError, match="inside"):
        with precision.precision_policy("bf16"):
            raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == before
    for bad in ("half", "off"):
        with pytest.raises(ValueError, match=repr(bad)):
            with precision.precision_policy(bad):
                pass
    assert keras.config.dtype_policy().name == before


def test_compile_model_takes_a_precision_name_only():
    import keras

    from clci_keras.training.trainer import compile_model

    def model():
        inputs = keras.Input((8, 8, 1))
        return keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        compile_model(model(), precision="bf16")
        compile_model(model(), precision="fp32")
    for old in ("off", True, False):  # the unreleased 0.1.0's spellings
        with pytest.raises(ValueError, match=repr(old)):
            compile_model(model(), precision=old)
    with pytest.raises(TypeError, match="mixed_precision"):
        compile_model(model(), mixed_precision=True)


# --- the bf16 fallback (train() and the inference engine call it) ------------------------------
def test_read_cpuinfo_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(
        "processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\nflags\t\t: fpu sse4_2 avx2 avx512f avx512_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    model, flags = precision.read_cpuinfo(str(path))
    assert model == "Test CPU @ 2.0GHz"
    assert {"avx2", "avx512_bf16", "amx_tile", "fpu"} <= flags
    assert precision.read_cpuinfo(str(tmp_path / "missing")) == (None, set())


@pytest.mark.parametrize("flags, native", [
    (NATIVE, True), (["amx_bf16", "amx_tile"], True), (EMULATED, False), ([], False),
])
def test_has_native_bf16(flags, native):
    assert precision.has_native_bf16(flags) is native


def test_has_native_bf16_reads_cpu_flags(cpu_flags):
    cpu_flags(NATIVE)
    assert precision.has_native_bf16() is True
    cpu_flags(EMULATED)
    assert precision.has_native_bf16() is False


def test_bf16_falls_back_to_fp32_on_emulating_cpu(no_gpu, cpu_flags):
    cpu_flags(EMULATED)
    with pytest.warns(UserWarning, match=r"bf16 is emulated on this CPU.*running fp32.*force"):
        assert precision.resolve_precision("bf16") == "fp32"
    with pytest.warns(UserWarning, match="emulated"):
        assert precision.resolve_precision("bf16", flags=EMULATED) == "fp32"


def test_bf16_kept_with_native_flags_force_or_gpu(monkeypatch, no_gpu, cpu_flags):
    cpu_flags(EMULATED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_precision("bf16", flags=NATIVE) == "bf16"
        assert precision.resolve_precision("bf16", force=True) == "bf16"
        assert precision.resolve_precision("bf16", force=True, flags=EMULATED) == "bf16"
        cpu_flags(NATIVE)
        assert precision.resolve_precision("bf16") == "bf16"
        cpu_flags(EMULATED)
        monkeypatch.setattr(precision, "gpu_info", lambda *a, **k: ["NVIDIA H100 (81559 MiB)"])
        assert precision.resolve_precision("bf16") == "bf16"


def test_fp32_and_fp16_pass_through(no_gpu):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("fp32", "fp16"):
            assert precision.resolve_precision(name, flags=EMULATED) == name
            assert precision.resolve_precision(name, flags=NATIVE) == name


def test_gpu_info_never_raises(monkeypatch):
    monkeypatch.setattr(precision.shutil, "which", lambda name: None)
    assert precision.gpu_info() == []

    def boom(*a, **k):
        raise subprocess.TimeoutExpired("nvidia-smi", 1)

    monkeypatch.setattr(precision.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(precision.subprocess, "run", boom)
    assert precision.gpu_info() == []


def test_gpu_info_parses_nvidia_smi(monkeypatch):
    out = subprocess.CompletedProcess([], 0, stdout="NVIDIA H200, 143771 MiB\nNVIDIA H200, 143771 MiB\n", stderr="")
    monkeypatch.setattr(precision.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(precision.subprocess, "run", lambda *a, **k: out)
    assert precision.gpu_info() == ["NVIDIA H200 (143771 MiB)"] * 2


def test_prediction_takes_fp32_and_bf16_only():
    from clci_keras.inference.predict import build_inference_model

    with pytest.raises(ValueError, match="'fp16'"):
        build_inference_model("clci_net", None, precision="fp16")
