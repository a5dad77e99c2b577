#!/usr/bin/env bash
# GPU check of the real pipeline on the PyTorch and JAX backends (issue 21, item 4).
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out DIR] [options]   on the GPU node (air-gapped)
#   bash benchmarks/gpu_check.sh --download-wheels DIR                   on a connected machine, then exit
#   bash benchmarks/gpu_check.sh --dry [--out DIR]                       CPU plumbing check, ~1-2 min
#
# What it does, on a GPU node with Python 3.12, PyTorch and JAX (CUDA) but no TensorFlow and no
# package index:
#   1. installs the wheels of DIR (default .whl: the packages that clci_keras needs and the image
#      lacks, see WHEELS below) with `pip install --no-index --no-deps --target SITE` (default
#      /tmp/site) and puts SITE and this checkout on PYTHONPATH (the checkout is not installed there);
#   2. runs `clci-keras synth -> prep -> split` (6 synthetic R1.1 subjects: 4 train, 1 validation,
#      1 test) and then, per configuration backend:precision:batch (default: torch and jax x bf16
#      and fp32 x batch 8 and 32, both backends early so that a cut budget still measures each),
#      one training process of --steps (25) steps at full size (224x176, `--max-steps`), and
#      `clci-keras evaluate -> predict` (the test subject; predict writes its NIfTI mask) on the
#      weights of each backend's first configuration;
#   3. writes one JSON row per configuration to OUT/gpu_check_<host>_<date>.jsonl (default OUT:
#      benchmarks/results) and a Markdown summary to OUT/gpu_check_<host>_<date>.md (also printed):
#      steady-state slices/s (first step excluded), first step and time to first step, TFLOP/s and
#      MFU against the bf16 dense peak 989.4 TFLOP/s (3 x 76.7 GFLOP per 224x176 slice for CLCI-Net),
#      peak GPU memory (torch.cuda.max_memory_allocated / JAX memory_stats peak_bytes_in_use),
#      loss, test Dice, the predicted mask.
#   No configuration starts after --budget-s seconds (default 400, counted from this script's start,
#   wheel install included); a step still running --grace-s (90) s past it is killed, so the check
#   ends within ~8 minutes. Rows of configurations not run say why ("skipped"); the whole matrix
#   takes longer (each JAX configuration compiles for ~1 min): run the rest in a second call with
#   --configs, or raise --budget-s.
#
# The training step is NOT `clci-keras train`: timing each step needs a Keras callback, which the
# command line cannot take, so benchmarks/gpu_check.py calls clci_keras.training.train(...) directly
# with the options the CLI would pass (`--model M --crop C --batch-size B --max-steps N
# [--precision bf16] --no-manifest`, log lines instead of progress bars; bf16 through
# clci_keras.precision.resolve_precision as in train()). synth, prep, split, evaluate and predict go
# through the command line (`python -m clci_keras`: the same main() as the clci-keras script).
#
# --dry runs the same steps on the CPU at tiny size: 3 subjects, crop 96:128,80:112 (32x32), 3
# steps of batch 2, torch and jax x fp32 and bf16, evaluation on slices 90:93, with TensorFlow made
# unimportable (tests/without_tensorflow on PYTHONPATH, as on the GPU image) and no wheel install.
# Its model is a stand-in, gpu_check_tiny (benchmarks/gpu_check.py), not CLCI-Net: `clci-keras
# predict` always computes the 155 brain slices at 224x176, which for CLCI-Net (76.7 GFLOP/slice)
# takes ~5 min on 2 CPU cores, and building CLCI-Net on JAX's CPU backend compiles one XLA program
# per weight initialiser (~1 min per process). `--dry --model clci_net` runs CLCI-Net anyway (slow).
# Rows say "device": "cpu"; their slices/s, MFU etc. are computed but mean nothing.
#
# JAX: XLA_PYTHON_CLIENT_PREALLOCATE=false (so that peak_bytes_in_use is the process's use), and a
# persistent compilation cache in WORK/jax_cache shared by the JAX processes of one check (--no-jax-cache
# turns it off): the first JAX process compiles cold, later ones reuse e.g. the weight initialisers.
#
# Options (anything else is passed to `gpu_check.py run`: --configs, --backends, --steps,
# --subjects, --crop, --model, --budget-s, --grace-s, --eval first|all|none, --no-deterministic):
#   --wheels DIR           wheels to install (default: .whl in the checkout)
#   --site DIR             pip --target folder (default /tmp/site)
#   --download-wheels DIR  download the wheels for cp312 manylinux x86_64 into DIR and exit
#   --out DIR              folder of the .jsonl / .md (default benchmarks/results)
#   --work DIR             data, run folders, logs, predicted masks (default: a new folder in /tmp)
#   --python PY            interpreter (default: $PYTHON or python3)
#   --dry                  CPU plumbing check (above)
#   --allow-cpu            full-size run without a GPU (hours on a CPU)
#   --no-jax-cache         no persistent JAX compilation cache
#
# On the lent GPU machine (after `bash benchmarks/gpu_check.sh --download-wheels .whl` here, with
# /.whl/ in .git/info/exclude): run(command="bash benchmarks/gpu_check.sh --out $OUT", carry=[".whl"],
# timeout_s=600), then copy the .jsonl back into benchmarks/results/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$REPO/benchmarks/gpu_check.py"
# Packages of setup.py's INSTALL_REQUIRES (and their requirements) that the GPU image lacks, pinned to
# the versions tested with this checkout. The image has numpy, h5py, scipy, scikit-image, matplotlib,
# pandas, tqdm, tensorboard; Keras's absl-py, rich, ml-dtypes, packaging; nilearn's joblib, jinja2,
# requests, scikit-learn; nibabel's and optree's typing-extensions. optree and deflate are compiled
# (cp312 / abi3 manylinux wheels), the others pure Python.
WHEELS_SPEC=(keras==3.15.1 namex==0.1.0 optree==0.20.0 nibabel==5.4.2 nilearn==0.14.1 deflate==0.9.0)
NEEDED_MODULES=(keras namex optree nibabel nilearn deflate)

export GPU_CHECK_START="${GPU_CHECK_START:-$(date +%s.%N)}"
PY="${PYTHON:-python3}"
WHEELS="$REPO/.whl"
SITE=/tmp/site
OUT="$REPO/benchmarks/results"
WORK=""
DRY=""
DOWNLOAD=""
ALLOW_CPU=""
JAX_CACHE=1
PASS=()

die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry) DRY=1 ;;
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
    --site) SITE="${2:?--site needs a folder}"; shift ;;
    --download-wheels) DOWNLOAD="${2:?--download-wheels needs a folder}"; shift ;;
    --out) OUT="${2:?--out needs a folder}"; shift ;;
    --work) WORK="${2:?--work needs a folder}"; shift ;;
    --python) PY="${2:?--python needs an interpreter}"; shift ;;
    --allow-cpu) ALLOW_CPU=1 ;;
    --no-jax-cache) JAX_CACHE="" ;;
    *) PASS+=("$1") ;;
  esac
  shift
done

if [ -n "$DOWNLOAD" ]; then
  mkdir -p "$DOWNLOAD"
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DOWNLOAD" "${WHEELS_SPEC[@]}"
  echo "gpu_check.sh: wheels for the GPU node in $DOWNLOAD:"
  ls -l "$DOWNLOAD"
  echo "carry this folder to the GPU node (in a checkout: add its path to .git/info/exclude) and run"
  echo "  bash benchmarks/gpu_check.sh --wheels $DOWNLOAD"
  exit 0
fi

if [ -n "$DRY" ]; then
  # As on the GPU image: no TensorFlow (tests/without_tensorflow/sitecustomize.py hides it).
  export PYTHONPATH="$REPO/tests/without_tensorflow:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  # one PyTorch thread: on a small shared CPU more threads oversubscribe it (10x slower steps)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "gpu_check.sh: installing $(ls "$WHEELS"/*.whl | wc -l) wheels of $WHEELS into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl || die "pip install of $WHEELS/*.whl failed"
    export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check.sh: no wheels in $WHEELS: using the packages already importable"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
  fi
  missing=$("$PY" - "${NEEDED_MODULES[@]}" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
)
  [ -z "$missing" ] || die "not importable: $missing; on a connected machine run
  bash benchmarks/gpu_check.sh --download-wheels .whl
and bring .whl here (or pass --wheels DIR)"
  if [ -z "$ALLOW_CPU" ] && ! nvidia-smi -L >/dev/null 2>&1; then
    die "no NVIDIA GPU found (nvidia-smi); use --dry for the CPU check, or --allow-cpu"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
fi

[ -n "$WORK" ] || WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
mkdir -p "$WORK" "$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
if [ -n "$JAX_CACHE" ]; then
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}"
  export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0}"
  export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="${JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES:-0}"
fi
export PYTHONUNBUFFERED=1
echo "gpu_check.sh: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])'); work folder $WORK"

args=(run --out "$OUT" --work "$WORK")
[ -z "$DRY" ] || args+=(--dry)
exec "$PY" "$HELPER" "${args[@]}" "${PASS[@]+"${PASS[@]}"}"
