"""What machine is this (CPU model and instruction-set flags, GPUs, memory, load).

Used by the benchmarks to record the machine they ran on, and by the input
pipeline for its memory budget (:func:`memory_total_bytes`). The precisions
and the bf16 fallback on CPUs that only emulate bf16 are in
:mod:`clci_keras.precision`, which also reads the CPU flags and lists the
NVIDIA GPUs (:func:`~clci_keras.precision.read_cpuinfo`,
:func:`~clci_keras.precision.gpu_info`, used here).

It imports only :mod:`clci_keras.precision` (a leaf) of the package and
neither TensorFlow nor Keras (:func:`machine_summary` reports versions only of
modules already imported), so it is cheap to call from a command line's
start-up or a test.
"""
from __future__ import annotations

import os
import platform
import sys

from clci_keras.precision import gpu_info, read_cpuinfo

# The /proc/cpuinfo flags worth reporting: vector width, FMA, and the native
# BF16 / FP16 / int8 paths that oneDNN (TensorFlow's CPU kernels) dispatches to.
RELEVANT_CPU_FLAGS = frozenset({
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
})
_MEMINFO = "/proc/meminfo"


def cpu_info():
    """CPU model, logical cores and the relevant instruction-set flags.

    Returns a dict with ``model`` (from /proc/cpuinfo, else
    :func:`platform.processor`), ``arch`` (:func:`platform.machine`),
    ``logical_cores`` (``os.cpu_count()``), ``usable_cores`` (the CPUs this
    process may run on, ``os.sched_getaffinity``, else ``logical_cores``) and
    ``flags`` (sorted; those of :data:`RELEVANT_CPU_FLAGS` that are present,
    empty where /proc/cpuinfo does not exist).
    """
    model, flags = read_cpuinfo()
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
