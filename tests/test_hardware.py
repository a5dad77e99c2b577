"""clci_keras.hardware: machine description and the bf16 -> fp32 fallback on emulating CPUs."""
import json
import os
import re
import subprocess
import sys
import warnings

import pytest

from clci_keras import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = ["avx2", "avx512f", "avx512_bf16", "fma"]
EMULATED = ["avx", "avx2", "fma"]


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(hardware, "gpu_info", lambda *a, **k: [])


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set this machine's CPU flags as cpu_info reports them."""
    def set_flags(flags):
        real = hardware.cpu_info
        monkeypatch.setattr(hardware, "cpu_info", lambda: {**real(), "flags": sorted(flags)})
    return set_flags


def test_cpu_info_shape():
    info = hardware.cpu_info()
    assert isinstance(info["model"], str) and info["model"]
    assert info["logical_cores"] is None or info["logical_cores"] >= 1
    assert info["usable_cores"] is None or info["usable_cores"] >= 1
    assert info["flags"] == sorted(info["flags"])
    assert set(info["flags"]) <= hardware.RELEVANT_CPU_FLAGS


def test_read_cpuinfo_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(
        "processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\nflags\t\t: fpu sse4_2 avx2 avx512f avx512_bf16 amx_tile\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    model, flags = hardware._read_cpuinfo(str(path))
    assert model == "Test CPU @ 2.0GHz"
    assert {"avx2", "avx512_bf16", "amx_tile", "fpu"} <= flags
    assert hardware._read_cpuinfo(str(tmp_path / "missing")) == (None, set())


def test_cpu_info_without_proc(monkeypatch):
    monkeypatch.setattr(hardware, "_read_cpuinfo", lambda path=None: (None, set()))
    monkeypatch.setattr(hardware.platform, "processor", lambda: "someproc")
    info = hardware.cpu_info()
    assert info["model"] == "someproc" and info["flags"] == []


@pytest.mark.parametrize("flags, native", [
    (NATIVE, True), (["amx_bf16", "amx_tile"], True), (EMULATED, False), ([], False),
])
def test_has_native_bf16(flags, native):
    assert hardware.has_native_bf16(flags) is native


def test_has_native_bf16_reads_cpu_flags(cpu_flags):
    cpu_flags(NATIVE)
    assert hardware.has_native_bf16() is True
    cpu_flags(EMULATED)
    assert hardware.has_native_bf16() is False


def test_bf16_falls_back_to_fp32_on_emulating_cpu(no_gpu, cpu_flags):
    cpu_flags(EMULATED)
    with pytest.warns(UserWarning, match=r"bf16 is emulated on this CPU.*running fp32.*force"):
        assert hardware.resolve_precision("bf16") == "fp32"
    with pytest.warns(UserWarning, match="emulated"):
        assert hardware.resolve_precision("bf16", flags=EMULATED) == "fp32"


def test_bf16_kept_with_native_flags_force_or_gpu(monkeypatch, no_gpu, cpu_flags):
    cpu_flags(EMULATED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.resolve_precision("bf16", flags=NATIVE) == "bf16"
        assert hardware.resolve_precision("bf16", force=True) == "bf16"
        assert hardware.resolve_precision("bf16", force=True, flags=EMULATED) == "bf16"
        cpu_flags(NATIVE)
        assert hardware.resolve_precision("bf16") == "bf16"
        cpu_flags(EMULATED)
        monkeypatch.setattr(hardware, "gpu_info", lambda *a, **k: ["NVIDIA H100 (81559 MiB)"])
        assert hardware.resolve_precision("bf16") == "bf16"


def test_fp32_passes_through(no_gpu):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.resolve_precision("fp32", flags=EMULATED) == "fp32"
        assert hardware.resolve_precision("fp32", flags=NATIVE) == "fp32"


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", None, "float32"])
def test_bad_precision_raises(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        hardware.resolve_precision(bad)


def test_gpu_info_never_raises(monkeypatch):
    monkeypatch.setattr(hardware.shutil, "which", lambda name: None)
    assert hardware.gpu_info() == []

    def boom(*a, **k):
        raise subprocess.TimeoutExpired("nvidia-smi", 1)

    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(hardware.subprocess, "run", boom)
    assert hardware.gpu_info() == []


def test_gpu_info_parses_nvidia_smi(monkeypatch):
    out = subprocess.CompletedProcess([], 0, stdout="NVIDIA H200, 143771 MiB\nNVIDIA H200, 143771 MiB\n", stderr="")
    monkeypatch.setattr(hardware.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(hardware.subprocess, "run", lambda *a, **k: out)
    assert hardware.gpu_info() == ["NVIDIA H200 (143771 MiB)"] * 2


def test_machine_summary_is_json_and_does_not_import_tensorflow():
    code = (
        "import json, sys\n"
        "from clci_keras.hardware import machine_summary\n"
        "s = machine_summary()\n"
        "print(json.dumps({'summary': s, 'tf': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tf"] is False and result["keras"] is False
    s = result["summary"]
    assert s["tensorflow"] is None and s["keras"] is None
    assert s["cpu"]["model"] and isinstance(s["gpus"], list)
    assert s["python"] == ".".join(map(str, sys.version_info[:3]))
    json.dumps(hardware.machine_summary())  # in this process too (whatever is imported here)


# --- the one precision vocabulary (issue 22) -------------------------------------------------
def test_precision_names_and_policies():
    assert hardware.DTYPE_POLICIES == {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
    assert hardware.MIXED_PRECISIONS == ("off", "bf16", "fp16")  # TrainConfig / config.json values
    assert set(hardware.PRECISIONS) <= set(hardware.DTYPE_POLICIES)
    assert [hardware.precision_name(p) for p in ("off", "fp32", "bf16", "fp16")] == ["fp32", "fp32", "bf16", "fp16"]
    assert [hardware.mixed_precision_value(p) for p in ("fp32", "off", "bf16", "fp16")] == ["off", "off", "bf16", "fp16"]
    assert [hardware.is_mixed_precision(p) for p in ("off", "fp32", "bf16", "fp16")] == [False, False, True, True]


@pytest.mark.parametrize("bad", ["BF16", "", None, "float32", "mixed_bfloat16"])
def test_unknown_precision_name_raises(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        hardware.precision_name(bad)


def test_train_predict_and_cli_share_the_vocabulary():
    from clci_keras.training.config import PRECISIONS, TrainConfig

    assert PRECISIONS == hardware.MIXED_PRECISIONS and TrainConfig().mixed_precision == "off"
    for value in PRECISIONS:
        TrainConfig(h5="d.h5", out_dir="r", mixed_precision=value).validate()
    with pytest.raises(ValueError, match="unknown mixed_precision 'half'"):
        TrainConfig(h5="d.h5", out_dir="r", mixed_precision="half").validate()


def test_precision_policy_sets_and_restores_keras_policy():
    import keras

    before = keras.config.dtype_policy().name
    for name, policy in (("bf16", "mixed_bfloat16"), ("off", "float32"), ("fp16", "mixed_float16")):
        with hardware.precision_policy(name):
            assert keras.config.dtype_policy().name == policy
        assert keras.config.dtype_policy().name == before
    with pytest.raises(RuntimeError, match="inside"):
        with hardware.precision_policy("bf16"):
            raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == before
    with pytest.raises(ValueError, match="'half'"):
        with hardware.precision_policy("half"):
            pass
    assert keras.config.dtype_policy().name == before
    from clci_keras.inference.predict import PRECISIONS
    from clci_keras.training import trainer

    assert trainer.precision_policy is hardware.precision_policy
    assert PRECISIONS == {"fp32": "float32", "bf16": "mixed_bfloat16"}
