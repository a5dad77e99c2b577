"""What a process of this package sets up for itself (a leaf module: imports nothing of clci_keras).

* :func:`keep_freed_memory`: tune glibc's malloc once per process, so freed batch,
  step and prediction buffers are reused instead of page-faulted in again.
* :func:`die_with_parent`: a pool-worker initializer that ends the worker when the
  process that started it is gone.

Used by the data readers, the predictor, the trainer and the preparation pool;
neither Keras nor TensorFlow is imported.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time

#: glibc malloc settings (bytes): freed buffers stay with the process instead of going back
#: to the kernel, so the next batch, step or prediction does not page-fault them in again.
MALLOC_TRIM_THRESHOLD = 256 * 1024**2
MALLOC_TOP_PAD = 64 * 1024**2
#: Allocations below this come from the heap (reused), not from a fresh ``mmap`` each time;
#: 32 MiB is glibc's maximum. Setting any of these fixes glibc's adaptive threshold at its
#: 128 KiB start, so it is set explicitly.
MALLOC_MMAP_THRESHOLD = 32 * 1024**2


@functools.lru_cache(maxsize=1)
def keep_freed_memory():
    """Tune glibc's malloc for batches, training steps and predictions, once per process.

    Each batch allocates and frees megabytes (the gathered arrays, TensorFlow's
    copies), and each training step or prediction allocates and frees its
    activations and gradients. With glibc's defaults large blocks are fresh
    ``mmap`` calls and freed memory is trimmed back to the kernel, so every batch
    or step page-faults it in again. This keeps up to :data:`MALLOC_TRIM_THRESHOLD`
    of freed memory, grows the heap by :data:`MALLOC_TOP_PAD` and serves blocks
    below :data:`MALLOC_MMAP_THRESHOLD` from the heap.
    Called by :func:`clci_keras.training.train`, the input pipeline, the stream
    readers and :func:`clci_keras.models.predict_slices`.

    Returns:
        True if applied; False where the user set ``MALLOC_TRIM_THRESHOLD_`` /
        ``MALLOC_TOP_PAD_`` / ``MALLOC_MMAP_THRESHOLD_`` or ``CLCI_KERAS_MALLOPT=0``,
        and off glibc.
    """
    if os.environ.get("CLCI_KERAS_MALLOPT", "1") == "0":
        return False
    if any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
        return bool(libc.mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
                    and libc.mallopt(m_top_pad, MALLOC_TOP_PAD)
                    and libc.mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc
        return False


#: How often (seconds) a worker checks that the process that started it still runs.
PARENT_POLL_SECONDS = 0.5


def die_with_parent(parent_pid, use_prctl=True, poll=PARENT_POLL_SECONDS):
    """Pool-worker initializer: end this worker when ``parent_pid`` ends; ignore Ctrl-C.

    A ``ProcessPoolExecutor`` worker blocks on its task queue forever once its
    parent is killed with SIGKILL (no cleanup code runs), so an interrupted
    ``clci-keras prep --workers K`` would leave K orphans.  On Linux the kernel
    is asked to SIGKILL the worker when its parent dies (``prctl
    PR_SET_PDEATHSIG``); everywhere a daemon thread also checks
    ``os.getppid()`` every ``poll`` seconds and exits the worker once the
    parent is gone (the worker was re-parented).  (The kernel's signal follows
    the *thread* that started the worker; the pool of
    :func:`clci_keras.data.preprocess.prepare_h5` lives inside one call, which
    that thread outlives. The workers of
    :class:`clci_keras.data.stream.StreamingReader` pass ``use_prctl=False``.)
    """
    # Ctrl-C reaches the whole process group: the parent handles it (and shuts the
    # pool down); a worker that raised KeyboardInterrupt too would print its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SIGTERM and SIGHUP end a worker at once, without a traceback: a forked worker would
    # otherwise inherit the command's handler of them (clci_keras.cli.Terminated), and the
    # pool itself ends a broken pool's workers with SIGTERM (so they must not ignore it).
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    if use_prctl and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the polling thread below still covers it

    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(poll)

    if os.getppid() != parent_pid:  # the parent died before the initializer ran
        os._exit(1)
    threading.Thread(target=watch, name="clci-keras-parent-watch", daemon=True).start()
