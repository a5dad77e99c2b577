"""What machine is this (CPU model and instruction-set flags, GPUs, memory, load), and the precisions.

Used by the benchmarks to record the machine they ran on, and by
:func:`resolve_precision` to avoid bf16 where the CPU only emulates it
(there bf16 is slower than fp32, not faster).

It also holds the one precision vocabulary of training, prediction, the
command line and that guard: the names ``fp32``, ``bf16`` and ``fp16`` with
the Keras dtype policy of each (:data:`DTYPE_POLICIES`), ``off``, the name of
fp32 in ``TrainConfig.mixed_precision`` and the run folders' ``config.json``
(:func:`precision_name`, :func:`mixed_precision_value`), and
:func:`precision_policy`, the context manager that sets Keras' global dtype
policy for a block.

A leaf module: it imports nothing from ``clci_keras`` and imports neither
TensorFlow nor Keras at import time (Keras only when :func:`precision_policy`
is entered; :func:`machine_summary` reports versions only of modules already
imported), so it is cheap to call from a command line's start-up or a test.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import warnings

# The /proc/cpuinfo flags worth reporting: vector width, FMA, and the native
# BF16 / FP16 / int8 paths that oneDNN (TensorFlow's CPU kernels) dispatches to.
RELEVANT_CPU_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
})
# Either gives the CPU a native BF16 dot product; without both, oneDNN emulates bf16.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

#: Every precision by name, and the Keras dtype policy it runs under.
DTYPE_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
#: fp32 as ``TrainConfig.mixed_precision`` (and every run folder's ``config.json``) names it.
PRECISION_OFF = "off"
#: The values of ``TrainConfig.mixed_precision``: ``off`` (fp32), ``bf16``, ``fp16``.
MIXED_PRECISIONS = tuple(PRECISION_OFF if name == "fp32" else name for name in DTYPE_POLICIES)
#: The precisions of prediction and of :func:`resolve_precision` (fp16 is a training option only).
PRECISIONS = ("fp32", "bf16")

_CPUINFO = "/proc/cpuinfo"
_MEMINFO = "/proc/meminfo"


def _read_cpuinfo(path=_CPUINFO):
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


def cpu_info():
    """CPU model, logical cores and the relevant instruction-set flags.

    Returns a dict with ``model`` (from /proc/cpuinfo, else
    :func:`platform.processor`), ``arch`` (:func:`platform.machine`),
    ``logical_cores`` (``os.cpu_count()``), ``usable_cores`` (the CPUs this
    process may run on, ``os.sched_getaffinity``, else ``logical_cores``) and
    ``flags`` (sorted; those of :data:`RELEVANT_CPU_FLAGS` that are present,
    empty where /proc/cpuinfo does not exist).
    """
    model, flags = _read_cpuinfo()
    logical = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        usable = logical
    return {
        "model": model or platform.processor() or platform.machine() or "unknown CPU",
        "arch": platform.machine(),
        "logical_cores": logical,
        "usable_cores": usable,
        "flags": sorted(flags & RELEVANT_CPU_FLAGS),
    }


def has_native_bf16(flags=None):
    """True if the CPU has native BF16 arithmetic (AVX-512 BF16 or AMX-BF16).

    ``flags``: an iterable of /proc/cpuinfo flags to use instead of this
    machine's (for tests).
    """
    if flags is None:
        flags = cpu_info()["flags"]
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


def memory_total_bytes():
    """Physical memory in bytes (/proc/meminfo ``MemTotal``, else ``os.sysconf``); None if unknown."""
    try:
        with open(_MEMINFO, encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    value, *unit = line.split(":", 1)[1].split()
                    return int(value) * (1024 if unit and unit[0].lower() == "kb" else 1)
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def load_average_1min():
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _module_version(name):
    module = sys.modules.get(name)
    if module is None:
        return None
    version = getattr(module, "__version__", None)
    return None if version is None else str(version)


def machine_summary():
    """A JSON-serialisable description of this machine and software.

    Keys: ``cpu`` (:func:`cpu_info`), ``gpus`` (:func:`gpu_info`),
    ``memory_total_bytes``, ``load_avg_1min``, ``platform``, ``python``,
    ``numpy``, and ``tensorflow`` / ``keras`` / ``jax`` - each None unless
    that module is already imported: calling this never imports TensorFlow.
    """
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    return {
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "memory_total_bytes": memory_total_bytes(),
        "load_avg_1min": load_average_1min(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy_version,
        "tensorflow": _module_version("tensorflow"),
        "keras": _module_version("keras"),
        "jax": _module_version("jax"),
    }


def precision_name(precision):
    """The vocabulary's name of ``precision`` (``off`` is ``fp32``).

    Raises:
        ValueError: ``precision`` is none of :data:`DTYPE_POLICIES` or ``off`` (the message echoes it).
    """
    name = "fp32" if precision == PRECISION_OFF else precision
    if not isinstance(name, str) or name not in DTYPE_POLICIES:
        known = ", ".join((*DTYPE_POLICIES, PRECISION_OFF))
        raise ValueError(f"unknown precision {precision!r}; expected one of {known}")
    return name


def mixed_precision_value(precision):
    """``precision`` as ``TrainConfig.mixed_precision`` stores it: ``fp32`` (or ``off``) -> ``off``."""
    name = precision_name(precision)
    return PRECISION_OFF if name == "fp32" else name


def is_mixed_precision(precision):
    """True for ``bf16`` and ``fp16`` (float32 variables, lower-precision compute), False for fp32/off."""
    return precision_name(precision) != "fp32"


@contextlib.contextmanager
def precision_policy(precision="fp32"):
    """Set Keras' global dtype policy to ``precision``'s (:data:`DTYPE_POLICIES`) for a ``with`` block.

    Any name of the vocabulary is taken (``off`` is fp32). The policy in force
    before is restored on leaving the block, also after an exception.

    Raises:
        ValueError: an unknown ``precision`` (before anything is changed).
    """
    policy = DTYPE_POLICIES[precision_name(precision)]
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def resolve_precision(precision, force=False, flags=None):
    """The precision to run: ``precision`` unless it is bf16 on a CPU that only emulates bf16.

    ``"fp32"`` is returned as is. ``"bf16"`` stays bf16 with ``force=True``,
    on a CPU with native BF16 (:func:`has_native_bf16`; ``flags`` as there)
    or when an NVIDIA GPU is visible (:func:`gpu_info`); otherwise this warns
    (``UserWarning``) and returns ``"fp32"``, because emulated bf16 is slower
    than fp32. Anything but :data:`PRECISIONS` raises ValueError.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or force or has_native_bf16(flags) or gpu_info():
        return precision
    warnings.warn(
        "bf16 is emulated on this CPU (no AVX-512 BF16 / AMX) and slower than fp32; running fp32. "
        "Pass force to run bf16 anyway.",
        UserWarning,
        stacklevel=2,
    )
    return "fp32"
