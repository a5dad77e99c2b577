"""The precisions: one vocabulary for training, prediction, the command line and the run folders.

* :data:`PRECISIONS`: ``fp32``, ``bf16``, ``fp16`` - the only names anything
  takes (``TrainConfig.precision``, ``--precision``, ``compile_model``,
  ``build_inference_model``); :data:`INFERENCE_PRECISIONS` the ones prediction
  runs (fp16 is a training option only).
* :data:`DTYPE_POLICIES`: the Keras dtype policy of each, and
  :func:`precision_policy`, the context manager that sets it for a block.
* :func:`resolve_precision`: bf16 falls back to fp32 where the CPU only
  emulates it (:func:`has_native_bf16`) and no NVIDIA GPU is visible
  (:func:`gpu_info`): emulated bf16 is slower than fp32, not faster. Both
  ``clci_keras.training.train`` and the inference engine call it, so the
  command line and Python callers run the same precision.
* :func:`read_legacy_precision`: the older spellings (``off``, ``float32``,
  ``mixed_bfloat16``, ``mixed_float16``), for reading existing ``config.json``
  files only.

A leaf module: it imports nothing of ``clci_keras`` and neither TensorFlow nor
Keras at import time (Keras only when :func:`precision_policy` is entered). It
also reads the machine facts the fallback needs (/proc/cpuinfo,
``nvidia-smi``); :mod:`clci_keras.hardware` describes the machine with them.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import warnings

#: Every precision by name, and the Keras dtype policy it runs under.
DTYPE_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
#: The precision names (training: all; :data:`INFERENCE_PRECISIONS` for prediction).
PRECISIONS = tuple(DTYPE_POLICIES)
#: The precisions prediction runs (fp16 is a training option only).
INFERENCE_PRECISIONS = ("fp32", "bf16")
#: Older spellings, read from existing run folders' ``config.json`` only: ``{old: name}``.
LEGACY_PRECISIONS = {"off": "fp32", **{policy: name for name, policy in DTYPE_POLICIES.items()}}
#: Either gives the CPU a native BF16 dot product; without both, oneDNN emulates bf16.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

_CPUINFO = "/proc/cpuinfo"


def check_precision(precision, allowed=PRECISIONS, what="precision"):
    """``precision`` if it is one of ``allowed``; ValueError (echoing it and naming ``what``) otherwise."""
    if not isinstance(precision, str) or precision not in allowed:
        raise ValueError(f"unknown {what} {precision!r}; expected one of {', '.join(allowed)}")
    return precision


def read_legacy_precision(value):
    """The name of a precision as an older ``config.json`` spells it (``off`` -> ``fp32``, ...).

    Current names pass through; only for reading existing files (everything
    else takes :data:`PRECISIONS` alone). ValueError for anything else.
    """
    return check_precision(LEGACY_PRECISIONS.get(value, value) if isinstance(value, str) else value)


def is_mixed(precision):
    """True for ``bf16`` and ``fp16`` (float32 variables, lower-precision compute), False for fp32."""
    return check_precision(precision) != "fp32"


@contextlib.contextmanager
def precision_policy(precision="fp32"):
    """Set Keras' global dtype policy to ``precision``'s (:data:`DTYPE_POLICIES`) for a ``with`` block.

    The policy in force before is restored on leaving the block, also after an
    exception. ValueError for an unknown ``precision`` (before anything changes).
    """
    policy = DTYPE_POLICIES[check_precision(precision)]
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def read_cpuinfo(path=_CPUINFO):
    """``(model name or None, set of flags)`` of the first processor in ``path``; ``(None, set())`` if unreadable."""
    model, flags = None, set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    if model or flags:  # blank line after the first processor's block
                        break
                    continue
                key = key.strip().lower()
                if key in ("model name", "cpu model") and model is None:
                    model = value.strip() or None
                elif key in ("flags", "features") and not flags:  # "Features" on aarch64
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def has_native_bf16(flags=None):
    """True if the CPU has native BF16 arithmetic (AVX-512 BF16 or AMX-BF16).

    ``flags``: an iterable of /proc/cpuinfo flags to use instead of this
    machine's (for tests).
    """
    if flags is None:
        flags = read_cpuinfo()[1]
    return any(flag in set(flags) for flag in NATIVE_BF16_FLAGS)


def gpu_info(timeout=10.0):
    """NVIDIA GPUs as ``"name (memory)"`` strings, from ``nvidia-smi``; ``[]`` without one.

    Never raises: a missing, failing or hanging ``nvidia-smi`` gives ``[]``.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    if out.returncode:
        return []
    gpus = []
    for line in out.stdout.splitlines():
        name, _, memory = (part.strip() for part in line.partition(","))
        if name:
            gpus.append(f"{name} ({memory})" if memory else name)
    return gpus


def resolve_precision(precision, force=False, flags=None):
    """The precision to run: ``precision`` unless it is bf16 on a CPU that only emulates bf16.

    ``fp32`` and ``fp16`` are returned as they are. ``bf16`` stays bf16 with
    ``force=True``, on a CPU with native BF16 (:func:`has_native_bf16`;
    ``flags`` as there) or when an NVIDIA GPU is visible (:func:`gpu_info`);
    otherwise this warns (``UserWarning``) and returns ``fp32``, because
    emulated bf16 is slower than fp32. Anything but :data:`PRECISIONS` raises
    ValueError.
    """
    if check_precision(precision) != "bf16" or force or has_native_bf16(flags) or gpu_info():
        return precision
    warnings.warn(
        "bf16 is emulated on this CPU (no AVX-512 BF16 / AMX) and slower than fp32; running fp32. "
        "Pass force to run bf16 anyway.",
        UserWarning,
        stacklevel=2,
    )
    return "fp32"
