"""Shared helpers of the benchmark scripts: the machine, date stamps, atomic writes to RESULTS.md.

Every ``benchmarks/bench_*.py`` records the machine it actually ran on
(:func:`machine_line`, from :func:`clci_keras.hardware.machine_summary`)
instead of a hard-coded description, and writes ``RESULTS.md`` atomically
(a temporary file in the same folder, then ``os.replace``), so a reader or
a concurrent run never sees a half-written file.

``python benchmarks/_harness.py`` prints this machine's summary as JSON and
its one-line description.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing

from clci_keras.hardware import machine_summary  # noqa: E402

RESULTS = os.path.join(HERE, "RESULTS.md")

# Instruction-set flags named in the one-line description, in this order.
_FLAG_NAMES = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("amx_bf16", "AMX-BF16"),
)

__all__ = ["RESULTS", "machine_summary", "machine_line", "cores", "today",
           "write_atomic", "append_atomic"]


def cores(summary=None):
    """CPUs this process may use (the affinity count), from ``summary`` or this machine."""
    cpu = (summary or machine_summary())["cpu"]
    return cpu["usable_cores"] or cpu["logical_cores"] or 1


def machine_line(summary=None):
    """One-line description for RESULTS.md, e.g.
    ``2-core AMD EPYC (x86_64; AVX2; no native BF16), 24 GiB, no GPU``.

    ``summary``: a :func:`machine_summary` (taken now if None). Shows the
    usable cores (``2 of 16 cores`` when the affinity is narrower), the CPU
    model, the vector/BF16 flags that matter for speed, memory and the GPUs.
    """
    s = summary or machine_summary()
    cpu = s["cpu"]
    usable, logical = cpu["usable_cores"], cpu["logical_cores"]
    if usable and logical and usable != logical:
        head = f"{usable} of {logical} cores, {cpu['model']}"
    else:
        head = f"{usable or logical or '?'}-core {cpu['model']}"
    flags = set(cpu["flags"])
    features = [name for flag, name in _FLAG_NAMES if flag in flags]
    if not flags & {"avx512_bf16", "amx_bf16"}:
        features.append("no native BF16")
    details = "; ".join(x for x in (cpu.get("arch"), ", ".join(features)) if x)
    parts = [f"{head} ({details})" if details else head]
    if s.get("memory_total_bytes"):
        parts.append(f"{s['memory_total_bytes'] / 2**30:.0f} GiB")
    gpus = s.get("gpus") or []
    if gpus:
        counts = {}
        for g in gpus:
            counts[g] = counts.get(g, 0) + 1
        parts.append(" + ".join(f"{n}x {g}" if n > 1 else g for g, n in counts.items()))
    else:
        parts.append("no GPU")
    return ", ".join(parts)


def today():
    """Today's date in UTC, ``YYYY-MM-DD`` (the date stamp of every RESULTS.md section)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def write_atomic(path, text):
    """Replace ``path`` with ``text`` atomically, keeping the file's permissions."""
    path = os.path.abspath(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def read_text(path, default=""):
    """``path``'s text, or ``default`` if it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return default


def append_atomic(path, text):
    """Append ``text`` to ``path`` as a new block (one blank line before it), atomically."""
    old = read_text(path)
    if old:
        old = old.rstrip("\n") + "\n\n"
    write_atomic(path, old + text.lstrip("\n").rstrip("\n") + "\n")


if __name__ == "__main__":
    summary = machine_summary()
    print(json.dumps(summary, indent=2))
    print(machine_line(summary))
