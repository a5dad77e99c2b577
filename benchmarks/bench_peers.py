"""Side by side with nnU-Net v2: seconds and peak RSS per scan of ``clci-keras predict`` and ``nnUNetPredictor`` on CPU.

Issue 34, item 6. One synthetic 1-mm T1 scan (``clci-keras synth``, MNI152 grid, 197x233x189) is
segmented, in one run and interleaved so that the machine's load falls on both alike, by:

* ``clci-keras predict`` (the project's CLI, ``python -m clci_keras predict`` in a child process,
  TensorFlow): fp32 and bf16, ``--tta none`` and ``--tta flip``, one network (``--weights``) and a
  5-fold ``--ensemble``; ``--no-qc --no-lesions`` (nnU-Net writes neither). The weights are one
  CLCI-Net drawn with :func:`clci_keras.models.seeding.draw_initial_state` (seed 0), copied five
  times for the ensemble: the time does not depend on the weights.
* nnU-Net v2's own predictor (``nnUNetPredictor(device=cpu).predict_from_files_sequential``, one
  process, tile step 0.5, Gaussian weighting) with its ``2d`` and ``3d_fullres`` configurations
  planned (``nnUNetv2_plan_and_preprocess``) on a data set of ``--subjects`` synthetic scans and
  masks (Dataset934_CLCISynth), with and without its mirroring (4 passes in 2d, 8 in 3d), fold 0.
  Its checkpoint is that of an initialised, untrained ``nnUNetTrainer`` (``initialize()``, the
  mirroring axes that training would set, ``save_checkpoint``), not of a training run: again the
  time does not depend on the weights.

Each figure is one fresh process started through a wrapper process, which reports the wall time
from process start to end and the peak RSS of the largest process it waited for
(``getrusage(RUSAGE_CHILDREN).ru_maxrss``), with the children's CPU seconds. The *predict* seconds
are those of the predict call alone: clci's "segmented 1 of 1 input(s) in S s" (read, segment,
write the mask; the network build is excluded) and nnU-Net's ``predict_from_files_sequential``
(read, preprocess, sliding window, resample, write; ``initialize_from_trained_model_folder`` is
excluded). Both use ``--threads`` CPU threads (``--threads`` of clci; ``torch.set_num_threads``).

nnU-Net must not go into the project's Python; give it its own virtual environment that sees the
system packages (the same torch), then point ``--nnunet-python`` at it::

    python3 -m venv --system-site-packages /work/venvs/nnunet
    /work/venvs/nnunet/bin/pip install nnunetv2==2.8.1 "torch==$(python3 -c 'import torch;print(torch.__version__)')"
    /work/venvs/nnunet/bin/pip uninstall -y torchvision   # the PyPI wheel needs CUDA torch; nnU-Net's predictor does not use it

    python benchmarks/bench_peers.py --nnunet-python /work/venvs/nnunet/bin/python \\
        --work /tmp/clci_peers --configs clci-fp32 nnunet-2d clci-bf16 nnunet-3d --append

The data set, the plans, the checkpoints and the weights are prepared once under ``--work`` and
reused by later runs. Rows are written to ``benchmarks/results/peers_<date>.json`` after each
figure (a stopped run keeps what it measured; a later run of the same day and threads adds to it); ``--report FILE`` prints (and with ``--append`` adds
to RESULTS.md) the table of an existing record.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import _harness  # noqa: E402  (puts the checkout on sys.path)

DATASET_ID = 934
DATASET = f"Dataset{DATASET_ID}_CLCISynth"
NNUNET_CONFIGS = {"2d": "2d", "3d": "3d_fullres"}
SECTION = "Side by side with nnU-Net v2 (issue 34 item 6)"
WITHOUT_TENSORFLOW = os.path.join(_harness.ROOT, "tests", "without_tensorflow")


def _clci_configs():
    out = {}
    for nets in (1, 5):
        for precision in ("fp32", "bf16"):
            for tta in ("none", "flip"):
                name = f"clci{'5' if nets == 5 else ''}-{precision}" + ("-flip" if tta == "flip" else "")
                out[name] = {"tool": "clci", "nets": nets, "precision": precision, "tta": tta}
    return out


def _nnunet_configs():
    return {f"nnunet-{short}" + ("-mirror" if mirror else ""): {"tool": "nnunet", "configuration": full,
                                                              "mirror": mirror}
            for short, full in NNUNET_CONFIGS.items() for mirror in (False, True)}


CLCI = _clci_configs()
NNUNET = _nnunet_configs()
CONFIGS = {**CLCI, **NNUNET}
# Default order: clci and nnU-Net alternate, cheap first, the costliest (3d with mirroring) last.
ORDER = ("nnunet-2d", "clci-fp32", "nnunet-3d", "clci-bf16", "nnunet-2d-mirror", "clci-fp32-flip",
         "clci-bf16-flip", "clci5-bf16", "clci5-fp32", "nnunet-3d-mirror", "clci5-bf16-flip", "clci5-fp32-flip")
assert sorted(ORDER) == sorted(CONFIGS)

# Runs a command, then reports its wall time, the peak RSS of the largest process it waited for and
# the children's CPU seconds (a fresh process: RUSAGE_CHILDREN holds this command's figures only).
_WRAPPER = r'''
import json, resource, subprocess, sys, time
t0 = time.time()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.time() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.write(r.stdout)
sys.stderr.write(r.stderr)
print("WRAPPER " + json.dumps({"rc": r.returncode, "process_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024,
                               "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
'''

# nnU-Net's predictor on one scan; prints RESULT {init_s, predict_s, ...}. argv: configuration
# folder, mirror 0/1, threads, scan, output file name without ending.
_NNUNET_PREDICT = r'''
import json, sys, time
t0 = time.time()
model_dir, mirror, threads, scan, out = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4], sys.argv[5]
import torch
torch.set_num_threads(threads)
import nnunetv2
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
t1 = time.time()
p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror, perform_everything_on_device=False,
                    device=torch.device("cpu"), verbose=False, verbose_preprocessing=False, allow_tqdm=False)
p.initialize_from_trained_model_folder(model_dir, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
if mirror and not p.allowed_mirroring_axes:
    sys.exit(f"{model_dir}: the checkpoint names no mirroring axes; nnU-Net would predict without mirroring")
t2 = time.time()
p.predict_from_files_sequential([[scan]], [out], save_probabilities=False, overwrite=True)
t3 = time.time()
print("RESULT " + json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "predict_s": t3 - t2,
                              "patch_size": p.configuration_manager.patch_size,
                              "mirror_axes": list(p.allowed_mirroring_axes or ()),
                              "versions": {"nnunetv2": getattr(nnunetv2, "__version__", None) or
                                           __import__("importlib.metadata").metadata.version("nnunetv2"),
                                           "torch": torch.__version__}}), flush=True)
'''

# Saves an initialised, untrained nnUNetTrainer's checkpoint, with its mirroring axes, as fold 0 of each configuration.
_NNUNET_CHECKPOINT = r'''
import json, os, shutil, sys
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
pre, results = sys.argv[1], sys.argv[2]
plans = json.load(open(os.path.join(pre, "nnUNetPlans.json")))
dataset_json = json.load(open(os.path.join(pre, "dataset.json")))
for configuration in sys.argv[3:]:
    folder = os.path.join(results, f"nnUNetTrainer__nnUNetPlans__{configuration}")
    trainer = nnUNetTrainer(dict(plans, continue_training=False), configuration, 0, dataset_json,
                            device=torch.device("cpu"))
    trainer.initialize()
    # What a training run sets in get_dataloaders and stores in its checkpoint: the predictor mirrors along these.
    trainer.inference_allowed_mirroring_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[-1]
    os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
    shutil.copy(os.path.join(pre, "nnUNetPlans.json"), os.path.join(folder, "plans.json"))
    shutil.copy(os.path.join(pre, "dataset.json"), os.path.join(folder, "dataset.json"))
    trainer.save_checkpoint(os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    print(configuration, "checkpoint saved", flush=True)
'''


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(ORDER), choices=list(CONFIGS), metavar="NAME",
                   help=f"what to time, in this order (default: all: {' '.join(ORDER)})")
    p.add_argument("--nnunet-python", default="python3", metavar="PATH",
                   help="the Python that has nnunetv2 (default: python3)")
    p.add_argument("--work", default=os.path.join("/tmp", "clci_peers"), metavar="DIR",
                   help="scratch folder for the data set, plans, checkpoints and outputs (kept and reused)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads of each tool (default: all)")
    p.add_argument("--subjects", type=int, default=8, metavar="N",
                   help="synthetic scans in nnU-Net's planning data set (default: 8)")
    p.add_argument("--repeats", type=int, default=1, metavar="N", help="rounds over --configs")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the record (default: benchmarks/results/peers_<date>.json)")
    p.add_argument("--stop-after", type=float, default=None, metavar="MIN",
                   help="start no figure after MIN minutes of measuring (the rest is listed as not measured)")
    p.add_argument("--report", default=None, metavar="FILE", help="only print the table of an existing record")
    p.add_argument("--append", action="store_true", help=f"append the section '{SECTION}' to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be a positive integer, got {args.threads}")
    if args.subjects < 2:
        p.error(f"--subjects must be at least 2, got {args.subjects}")
    if args.repeats < 1:
        p.error(f"--repeats must be a positive integer, got {args.repeats}")
    return args


def child_env(work, backend="tensorflow"):
    """The children's environment; on JAX or PyTorch without TensorFlow (tests/without_tensorflow hides it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    path = [_harness.ROOT, env.get("PYTHONPATH", "")]
    if backend != "tensorflow":
        path.insert(0, WITHOUT_TENSORFLOW)
    env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(path).rstrip(os.pathsep),
               nnUNet_raw=os.path.join(work, "nnUNet_raw"),
               nnUNet_preprocessed=os.path.join(work, "nnUNet_preprocessed"),
               nnUNet_results=os.path.join(work, "nnUNet_results"))
    return env


def _run(cmd, env, what):
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"{what} failed (exit {res.returncode}): {' '.join(cmd)}\n{res.stdout[-3000:]}\n"
                           f"{res.stderr[-3000:]}")
    return res.stdout


def prepare(work, nnunet_python, subjects, need_nnunet):
    """Synthetic scans, CLCI-Net weights and, with ``need_nnunet``, nnU-Net's data set, plans and checkpoints.

    Returns ``{"scan", "weights", "models"}``: the scan to segment (not in nnU-Net's training
    set), the five weight files and nnU-Net's configuration folders. Each step is skipped when its
    output exists.
    """
    env = child_env(work)
    synth = os.path.join(work, "synth")
    if not os.path.exists(os.path.join(synth, "clci_keras_synthetic.json")):
        _run([sys.executable, "-m", "clci_keras", "synth", synth, "--subjects", str(subjects + 1), "--quiet",
              "--overwrite"], env, "clci-keras synth")
    scans = sorted(os.path.join(d, f) for d, _, files in os.walk(synth) for f in files if "_t1w_" in f)
    scan = scans[-1]  # the held-out scan; the others make nnU-Net's data set
    weights = [os.path.join(work, "weights", f"clci_net_seed0_copy{i}.weights.h5") for i in range(5)]
    if not all(map(os.path.exists, weights)):
        os.makedirs(os.path.dirname(weights[0]), exist_ok=True)
        code = ("import sys, shutil; from clci_keras.models import build_model; "
                "from clci_keras.models.seeding import draw_initial_state; "
                "m = build_model('clci_net', input_shape=(224, 176, 1)); draw_initial_state(m, 0); "
                "m.save_weights(sys.argv[1] + '.tmp.weights.h5'); "
                "[shutil.copy(sys.argv[1] + '.tmp.weights.h5', w) for w in sys.argv[2:]]")
        _run([sys.executable, "-c", code, weights[0], *weights], env, "drawing the CLCI-Net weights")
        os.remove(weights[0] + ".tmp.weights.h5")
    models = {}
    if need_nnunet:
        raw = os.path.join(env["nnUNet_raw"], DATASET)
        if not os.path.exists(os.path.join(raw, "dataset.json")):
            write_nnunet_dataset(raw, scans[:-1])
        pre = os.path.join(env["nnUNet_preprocessed"], DATASET)
        configurations = sorted(NNUNET_CONFIGS.values())
        if not all(os.path.isdir(os.path.join(pre, f"nnUNetPlans_{c}")) for c in configurations):
            _run([nnunet_python, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
                  "plan_and_preprocess_entry as m; m()", "-d", str(DATASET_ID), "-c", *configurations,
                  "-np", "2", "-npfp", "2", "--verify_dataset_integrity"], env, "nnUNetv2_plan_and_preprocess")
        results = os.path.join(env["nnUNet_results"], DATASET)
        models = {c: os.path.join(results, f"nnUNetTrainer__nnUNetPlans__{c}") for c in configurations}
        missing = [c for c, f in models.items() if not os.path.exists(os.path.join(f, "fold_0", "checkpoint_final.pth"))]
        if missing:
            _run([nnunet_python, "-c", _NNUNET_CHECKPOINT, pre, results, *missing], env, "nnU-Net's checkpoints")
    return {"scan": scan, "weights": weights, "models": models}


def write_nnunet_dataset(raw, scans):
    """nnU-Net's raw layout of ``scans`` (R1.1 synthetic T1s) with their masks' union as label 1."""
    import nibabel as nib
    import numpy as np

    os.makedirs(os.path.join(raw, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(raw, "labelsTr"), exist_ok=True)
    for i, scan in enumerate(scans):
        case = f"synth_{i:03d}"
        folder, name = os.path.split(scan)
        masks = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if "LesionSmooth" in f]
        img = nib.load(scan)
        label = np.zeros(img.shape, np.uint8)
        for m in masks:
            label |= np.asarray(nib.load(m).dataobj) > 0
        shutil.copy(scan, os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, img.affine, img.header), os.path.join(raw, "labelsTr", f"{case}.nii.gz"))
    dataset = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "lesion": 1},
               "numTraining": len(scans), "file_ending": ".nii.gz", "name": "CLCISynth",
               "description": "clci-keras synth scans (benchmarks/bench_peers.py)"}
    _harness.write_atomic(os.path.join(raw, "dataset.json"), json.dumps(dataset, indent=1) + "\n")


def command(name, inputs, work, threads, nnunet_python):
    """The child command of config ``name``."""
    c = CONFIGS[name]
    out = os.path.join(work, "out", name)
    os.makedirs(out, exist_ok=True)
    if c["tool"] == "clci":
        return clci_command(inputs, out, c["nets"], c["precision"], c["tta"], threads)
    return [nnunet_python, "-c", _NNUNET_PREDICT, inputs["models"][c["configuration"]], "1" if c["mirror"] else "0",
            str(threads), inputs["scan"], os.path.join(out, "mask")]


def clci_command(inputs, out, nets=1, precision="fp32", tta="none", threads=None, side_outputs=False):
    """``clci-keras predict`` of ``inputs["scan"]`` into folder ``out`` with ``nets`` of ``inputs["weights"]``;
    ``threads`` None: the backend's default; without ``side_outputs``: no QC picture, no lesion tables."""
    w = ["--weights", inputs["weights"][0]] if nets == 1 else ["--ensemble", *inputs["weights"][:nets]]
    return [sys.executable, "-m", "clci_keras", "predict", inputs["scan"], "-o", os.path.join(out, "mask.nii.gz"),
            *w, "--precision", precision, "--tta", tta, *(["--threads", str(threads)] if threads else []),
            *([] if side_outputs else ["--no-qc", "--no-lesions"]), "--overwrite"]


def parse_child(name, stdout):
    """The row's figures from a wrapped child's stdout."""
    row = {}
    for line in stdout.splitlines():
        if line.startswith("WRAPPER "):
            row.update(json.loads(line[len("WRAPPER "):]))
        elif line.startswith("RESULT "):
            row.update(json.loads(line[len("RESULT "):]))
        elif line.startswith("segmented ") and " input(s) in " in line:  # clci-keras predict's last line
            row["predict_s"] = float(line.split(" input(s) in ")[1].split(" s")[0])
        elif line.startswith("model ") and " with weights " in line:
            row["clci_setup"] = line.split(" with weights ")[0] + line.split(";", 1)[1]
    if row.get("rc") or "predict_s" not in row:
        raise RuntimeError(f"{name}: no figures (exit {row.get('rc')})\n{stdout[-3000:]}")
    return row


def run_wrapped(name, cmd, env):
    """``cmd`` run through the wrapper: its figures (:func:`parse_child`) and the load average at start and end."""
    load = os.getloadavg()[0]
    res = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, env=env)
    try:
        row = parse_child(name, res.stdout)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n{res.stderr[-3000:]}") from None
    row["load_avg"] = [load, os.getloadavg()[0]]
    return row


def run_config(name, inputs, work, threads, nnunet_python):
    row = run_wrapped(name, command(name, inputs, work, threads, nnunet_python), child_env(work))
    row.update(config=name, **CONFIGS[name], threads=threads)
    return row


def table(rows):
    """Markdown table: per config the best predict seconds, process seconds, peak RSS and ratios."""
    best = {}
    for r in rows:
        if "predict_s" not in r:
            continue
        if r["config"] not in best or r["predict_s"] < best[r["config"]]["predict_s"]:
            best[r["config"]] = r
    ref = {k: best.get(f"nnunet-{k}") for k in NNUNET_CONFIGS}
    ref_m = {k: best.get(f"nnunet-{k}-mirror") for k in NNUNET_CONFIGS}

    def ratio(r, base):
        if not base:
            return "–"
        return f"{r['predict_s'] / base['predict_s']:.2f} ({r['cpu_s'] / base['cpu_s']:.2f})"

    lines = ["| config | predict s/scan | process start to end, s | CPU s | peak RSS | load | / nnU-Net 2d "
             "| / nnU-Net 3d | / nnU-Net same TTA: 2d; 3d |", "|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        r = best.get(name)
        if r is None:
            continue
        tta = r.get("tta") == "flip" or r.get("mirror")
        same = ref_m if tta else ref
        load = "–" if "load_avg" not in r else "-".join(f"{x:.0f}" for x in r["load_avg"])
        lines.append(f"| {name} | {r['predict_s']:.1f} | {r['process_s']:.1f} | {r['cpu_s']:.0f} | "
                     f"{r['peak_rss_mib'] / 1024:.2f} GiB | {load} | {ratio(r, ref['2d'])} | {ratio(r, ref['3d'])} | "
                     f"{ratio(r, same['2d'])}; {ratio(r, same['3d'])} |")
    missing = [n for n in ORDER if n not in best]
    if missing:
        lines += ["", f"Not measured: {', '.join(missing)}."]
    return "\n".join(lines)


def record_path(date):
    return os.path.join(_harness.HERE, "results", f"peers_{date}.json")


def write_record(path, record):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _harness.write_atomic(path, json.dumps(record, indent=1) + "\n")


def section(record):
    return (f"\n## {SECTION}, {record['date']}\n\n{record['machine']}; `python benchmarks/bench_peers.py` "
            f"--threads {record['threads']}, one synthetic 1-mm scan, one fresh process per figure. Ratios: "
            f"predict seconds (CPU seconds of the whole process); load: 1-min load average at start-end.\n\n{table(record['rows'])}\n")


def versions():
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for key, names in (("clci_keras", ("clci_keras",)), ("keras", ("keras",)),
                       ("tensorflow", ("tensorflow", "tensorflow-cpu"))):
        out[key] = None
        for name in names:
            try:
                out[key] = md.version(name)
                break
            except md.PackageNotFoundError:
                pass
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        with open(args.report, encoding="utf-8") as f:
            record = json.load(f)
        print(section(record))
        if args.append:
            _harness.append_atomic(_harness.RESULTS, section(record))
        return 0
    summary = _harness.machine_summary()
    threads = args.threads or _harness.cores(summary)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    inputs = prepare(work, args.nnunet_python, args.subjects,
                     need_nnunet=any(CONFIGS[c]["tool"] == "nnunet" for c in args.configs))
    print(f"prepared in {time.time() - t0:.0f} s: scan {inputs['scan']}", flush=True)
    date = _harness.today()
    flags = summary["cpu"]["flags"]
    record = {"benchmark": "bench_peers", "date": date, "machine": _harness.machine_line(summary),
              "cpu_model": summary["cpu"]["model"], "avx512": "avx512f" in flags,
              "avx512_bf16": "avx512_bf16" in flags, "cores": _harness.cores(summary), "threads": threads,
              "scan": os.path.basename(inputs["scan"]), "nnunet_checkpoint": "initialised nnUNetTrainer, untrained",
              "clci_weights": "draw_initial_state seed 0, one file copied 5x for --ensemble",
              "versions": versions(), "rows": []}
    out = args.out or record_path(date)
    if os.path.exists(out):  # a later run of the same day adds its rows to the record
        with open(out, encoding="utf-8") as f:
            earlier = json.load(f)
        if earlier.get("date") == date and earlier.get("threads") == threads:
            record = {**earlier, **{k: v for k, v in record.items() if k != "rows"}}  # its rows and notes too
    start = time.time()
    for _ in range(args.repeats):
        for name in args.configs:
            if args.stop_after is not None and time.time() - start > 60 * args.stop_after:
                print(f"{name}: not started, past --stop-after {args.stop_after:g} min", flush=True)
                continue
            try:
                row = run_config(name, inputs, work, threads, args.nnunet_python)
            except RuntimeError as e:  # one failing figure does not lose the others
                print(f"FAILED {e}", file=sys.stderr, flush=True)
                row = {"config": name, **CONFIGS[name], "failed": str(e).splitlines()[0]}
            if "versions" in row:
                record["versions"].update(row.pop("versions"))
            record["rows"].append(row)
            write_record(out, record)
            print(json.dumps(row), flush=True)
    text = section(record)
    print(f"{text}\n{out}")
    if args.append:
        _harness.append_atomic(_harness.RESULTS, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
