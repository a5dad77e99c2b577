"""clci_keras.hardware: the machine description (the precisions: tests/test_precision.py)."""
import json
import os
import subprocess
import sys

from clci_keras import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_info_shape():
    info = hardware.cpu_info()
    assert isinstance(info["model"], str) and info["model"]
    assert info["logical_cores"] is None or info["logical_cores"] >= 1
    assert info["usable_cores"] is None or info["usable_cores"] >= 1
    assert info["flags"] == sorted(info["flags"])
    assert set(info["flags"]) <= hardware.RELEVANT_CPU_FLAGS


def test_cpu_info_without_proc(monkeypatch):
    monkeypatch.setattr(hardware, "read_cpuinfo", lambda path=None: (None, set()))
    monkeypatch.setattr(hardware.platform, "processor", lambda: "someproc")
    info = hardware.cpu_info()
    assert info["model"] == "someproc" and info["flags"] == []


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
