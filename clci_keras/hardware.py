"""What machine is this: CPU model and instruction-set flags, GPUs, memory, load.

Used by the benchmarks to record the machine they ran on, and by
:func:`resolve_precision` to avoid bf16 where the CPU only emulates it
(there bf16 is slower than fp32, not faster).

A leaf module: it imports nothing from ``clci_keras`` and never imports
TensorFlow or Keras (:func:`machine_summary` reports their versions only
when they are already imported), so it is cheap to call from a command
line's start-up or a test.
"""
from __future__ import annotations

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


def resolve_precision(precision, force=False, flags=None):
    """The precision to run: ``precision`` unless it is bf16 on a CPU that only emulates bf16.

    ``"fp32"`` is returned as is. ``"bf16"`` stays bf16 with ``force=True``,
    on a CPU with native BF16 (:func:`has_native_bf16`; ``flags`` as there)
    or when an NVIDIA GPU is visible (:func:`gpu_info`); otherwise this warns
    (``UserWarning``) and returns ``"fp32"``, because emulated bf16 is slower
    than fp32. Anything else raises ValueError.
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
