"""benchmarks/bench_peers.py without nnunetv2: its arguments, its parsing of the children's output, its table."""
from __future__ import annotations

import json

import pytest
from conftest import benchmark_script

@pytest.fixture(scope="module")
def peers():
    return benchmark_script("bench_peers")


def test_arguments(peers):
    args = peers.parse_args([])
    assert args.configs == list(peers.ORDER) and args.nnunet_python == "python3" and args.threads is None
    args = peers.parse_args(["--configs", "clci5-bf16-flip", "nnunet-3d-mirror", "--threads", "2"])
    assert args.configs == ["clci5-bf16-flip", "nnunet-3d-mirror"] and args.threads == 2
    assert peers.CONFIGS["clci5-bf16-flip"] == {"tool": "clci", "nets": 5, "precision": "bf16", "tta": "flip"}
    assert peers.CONFIGS["nnunet-3d-mirror"] == {"tool": "nnunet", "configuration": "3d_fullres", "mirror": True}
    for bad in (["--configs", "clci-fp16"], ["--threads", "0"], ["--subjects", "1"]):
        with pytest.raises(SystemExit):
            peers.parse_args(bad)


def test_commands(peers, tmp_path):
    inputs = {"scan": "s.nii.gz", "weights": [f"w{i}.weights.h5" for i in range(5)],
              "models": {"2d": "m2d", "3d_fullres": "m3d"}}
    clci = peers.command("clci5-bf16-flip", inputs, str(tmp_path), 2, "py")
    assert clci[1:4] == ["-m", "clci_keras", "predict"]
    assert clci[clci.index("--ensemble") + 1:clci.index("--ensemble") + 6] == inputs["weights"]
    assert ["--precision", "bf16"] == clci[clci.index("--precision"):][:2] and "flip" in clci
    nnunet = peers.command("nnunet-3d-mirror", inputs, str(tmp_path), 2, "py")
    assert nnunet[0] == "py" and nnunet[3:7] == ["m3d", "1", "2", "s.nii.gz"]


def test_child_output_and_table(peers, tmp_path):
    wrapper = 'WRAPPER {"rc": 0, "process_s": 90.0, "peak_rss_mib": 2048.0, "cpu_s": 170.0}'
    clci = peers.parse_child("clci-fp32", "model clci_net (fp32) with weights w; 1 input(s)\n"
                             "segmented 1 of 1 input(s) in 60.5 s; summary x.csv\n" + wrapper)
    assert clci["predict_s"] == 60.5 and clci["peak_rss_mib"] == 2048.0
    nnunet = peers.parse_child("nnunet-2d", 'RESULT {"predict_s": 30.25, "init_s": 1.0}\n' + wrapper)
    assert nnunet["predict_s"] == 30.25
    with pytest.raises(RuntimeError, match="clci-bf16: no figures"):
        peers.parse_child("clci-bf16", "Traceback ...\n" + wrapper.replace('"rc": 0', '"rc": 1'))
    rows = [dict(clci, config="clci-fp32", **peers.CONFIGS["clci-fp32"]),
            dict(nnunet, config="nnunet-2d", **peers.CONFIGS["nnunet-2d"]),
            {"config": "nnunet-3d", **peers.CONFIGS["nnunet-3d"], "failed": "nnunet-3d: no figures"}]
    text = peers.table(rows)
    assert "| clci-fp32 | 60.5 | 90.0 | 170 | 2.00 GiB | – | 2.00 (1.00) | – | 2.00 (1.00); – |" in text
    assert "Not measured:" in text and "nnunet-3d," in text
    record = {"date": "2026-12-07", "machine": "m", "threads": 2, "rows": rows}
    path = tmp_path / "results" / "peers_2026-12-07.json"
    peers.write_record(str(path), record)
    assert json.loads(path.read_text()) == record
    assert peers.section(record).startswith(f"\n## {peers.SECTION}, 2026-12-07\n")


def test_predict_memory_arguments_commands_and_table(peers, tmp_path):
    """benchmarks/bench_predict_memory.py: per backend, the lean and default predict commands and environments."""
    mem = benchmark_script("bench_predict_memory")
    args = mem.parse_args([])
    assert args.backends == ["tensorflow", "jax", "torch"] and args.variants == ["lean", "default"]
    with pytest.raises(SystemExit):
        mem.parse_args(["--backends", "mxnet"])
    inputs = {"scan": "s.nii.gz", "weights": ["w0.weights.h5"]}
    lean = peers.clci_command(inputs, str(tmp_path))
    default = peers.clci_command(inputs, str(tmp_path), side_outputs=True)
    assert "--no-qc" in lean and "--no-lesions" in lean and "--no-qc" not in default
    assert peers.WITHOUT_TENSORFLOW not in peers.child_env(str(tmp_path))["PYTHONPATH"]
    env = peers.child_env(str(tmp_path), "jax")
    assert env["KERAS_BACKEND"] == "jax" and env["PYTHONPATH"].startswith(peers.WITHOUT_TENSORFLOW)
    rows = [{"backend": "jax", "variant": "lean", "peak_rss_mib": 1442.9, "wall_s": 74.4, "cpu_s": 79.8,
             "predict_s": 66.3, "load_avg": [1.7, 2.0]},
            {"backend": "torch", "variant": "lean", "failed": "torch-lean: no figures"}]
    text = mem.table(rows)
    assert "| jax | lean | 1443 | 74.4 | 79.8 | 66.3 | 1.7-2.0 |" in text
    assert "| torch | lean | failed: torch-lean: no figures |" in text
