"""Figure helpers for every layer: an off-screen figure, its PNG bytes, a figure saved to a file,
the axial slices a montage shows.

Of the package this imports only :mod:`clci_keras.fileio` (figures are published by its
single writer). Matplotlib is imported inside the functions: it is heavy for the command
line's start (tests/test_import_cost.py).
"""
from __future__ import annotations

import io
import os

import numpy as np

from clci_keras import fileio


def agg_figure(figsize, dpi):
    """A matplotlib ``Figure`` on its own Agg canvas: no pyplot, so nothing global and no display."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig):
    """The figure as PNG bytes (at its own dpi), for a caller that publishes them with other outputs."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save(fig, path, dpi=None, close=False):
    """Write the figure to ``path`` atomically (:func:`clci_keras.fileio.atomic_path`); returns ``path``.

    The format is the extension's (PNG without one); ``dpi`` defaults to the figure's.
    With ``close`` the pyplot figure is closed afterwards, whether or not the write succeeded.
    """
    path = os.fspath(path)
    try:
        with fileio.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=os.path.splitext(path)[1][1:] or "png")
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
    return path


def spread_slices(weight, n):
    """Up to ``n`` indices spread evenly from the first to the last non-zero entry of the 1D ``weight``
    (over its whole length when it is all zero), sorted, without repeats."""
    zs = np.flatnonzero(weight)
    if zs.size == 0:
        zs = np.arange(len(weight))
    return np.unique(np.linspace(zs.min(), zs.max(), min(n, zs.size)).round().astype(int))
