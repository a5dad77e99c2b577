"""Self-contained HTML pages: one report per segmented scan and a group page (BIDS App).

Every picture is a PNG embedded as a ``data:`` URI and the style sheet is inline, so a page
needs nothing but itself: no network, no neighbouring files (as fMRIPrep's reports, which a
browser opens from the derivative folder). The pages take plain values (arrays, PNG bytes,
dicts), not inference objects: :mod:`clci_keras.bids.participant` and
:mod:`clci_keras.bids.group` compute them.

Pictures here are drawn on arrays in RAS voxel order (x right, y anterior, z superior), axial
slices shown in neurological convention (the subject's right on the picture's right).
"""
from __future__ import annotations

import base64
import html
import os

import numpy as np

from clci_keras.fileio import atomic_text
from clci_keras.plotting import agg_figure, png_bytes, spread_slices

_STYLE = """
body{font-family:sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;
font-size:.9em}th{background:#f2f2f2}img{max-width:100%}.warn{color:#a40}.ok{color:#070}
.muted{color:#777;font-size:.85em}tr.flagged td{background:#fff1dc}
"""


def png_data_uri(png):
    """``data:image/png;base64,...`` of PNG bytes."""
    if not isinstance(png, (bytes, bytearray)) or not bytes(png[:8]) == b"\x89PNG\r\n\x1a\n":
        raise ValueError("expected PNG bytes (starting with the PNG signature)")
    return "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")


def outline_montage_png(background, outlines=(), overlay=None, title="", n_slices=8, columns=4, dpi=72,
                        focus=None):
    """PNG bytes of axial slices of ``background`` with contours and an optional colour overlay.

    Args:
        background: 3D array in RAS voxel order.
        outlines: ``[(array, colour), ...]``: each array's 0.5 contour (masks, a thresholded template).
        overlay: ``(array, colormap, vmax)``: values > 0 drawn in colour over the background.
        title: figure title.
        n_slices: slices spread over the extent of ``focus`` (an array; default: the background's
            upper half of intensities).
    """
    bg = np.asarray(background, dtype=np.float32)
    if bg.ndim != 3:
        raise ValueError(f"background must be a 3D array, got shape {bg.shape}")
    if focus is None:
        focus = bg > np.percentile(bg, 50)
    picks = spread_slices(np.asarray(focus).any(axis=(0, 1)), n_slices)
    lo, hi = np.percentile(bg, [1, 99.5])
    rows = int(np.ceil(len(picks) / columns))
    fig = agg_figure((2.0 * columns, 2.3 * rows + 0.4), dpi)
    for k, z in enumerate(picks):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(bg[:, :, z].T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1,
                  interpolation="nearest")
        if overlay is not None:
            arr, cmap, vmax = overlay
            sl = np.ma.masked_less_equal(np.asarray(arr, np.float32)[:, :, z].T, 0)
            ax.imshow(sl, cmap=cmap, origin="lower", vmin=0, vmax=vmax, alpha=0.8, interpolation="nearest")
        for arr, colour in outlines:
            sl = np.asarray(arr)[:, :, z].T.astype(np.float32)
            if sl.max() > 0.5 > sl.min():
                ax.contour(sl, levels=[0.5], colors=colour, linewidths=0.7)
        ax.set_title(f"z={z}", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    return png_bytes(fig)


def overlap_figure_png(template, fraction, n_subjects, n_slices=12, columns=6, dpi=72):
    """PNG bytes of the lesion-overlap map (fraction of scans, 0-1) over the template, with a colour bar."""
    fraction = np.asarray(fraction, dtype=np.float32)
    focus = fraction > 0 if fraction.any() else None
    vmax = max(float(fraction.max()), 1.0 / max(n_subjects, 1))
    png = outline_montage_png(template, overlay=(fraction, "hot", vmax), n_slices=n_slices, columns=columns,
                              dpi=dpi, focus=focus,
                              title=f"lesion overlap of {n_subjects} scan(s): fraction lesioned (max {vmax:.2f})")
    return png


def _table(rows, columns=None, flag=None):
    """An HTML table of dicts (``columns``: their order; default the first row's keys); rows whose
    ``flag`` column is not empty are marked (class ``flagged``)."""
    if not rows:
        return "<p class='muted'>(none)</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(("<tr class='flagged'>" if flag and r.get(flag) else "<tr>")
                   + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    if v is None:
        return ""
    return str(v)


def _kv_table(d):
    return _table([{"key": k, "value": v if not isinstance(v, dict) else ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items())}
                   for k, v in d.items()], ["key", "value"])


def _img(png, alt):
    return f"<img src='{png_data_uri(png)}' alt='{html.escape(alt)}'>"


def _page(title, body):
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def subject_report(*, title, summary, overlay_png, lesion, components, intensity, card=None, registration=None,
                   registration_png=None, warnings=(), outputs=(), load=(), flags=None):
    """The HTML text of one scan's report.

    Args:
        title: page title (``sub-01_ses-1``).
        summary: ``{key: value}`` of the run (input file, weights, threshold, grid, ...).
        overlay_png: PNG bytes: the lesion outline over the scan on its own grid.
        lesion: ``{"volume_ml", "components", "hemisphere", ...}`` of the whole mask.
        components: one dict per connected component (the per-lesion table's rows); rows with
            ``flags`` are marked.
        load: the lesion-load table's rows (regions and corticospinal tracts).
        flags: ``{flag: meaning}`` shown under the component table.
        intensity: ``{"scheme", "p99_5", "accepted", "passed", ...}``: the intensity check.
        card: the weights' model card (``{key: value}``) or ``None`` when the weights have none.
        registration: ``{key: value}`` of the registration or ``None`` (not registered).
        registration_png: PNG bytes: template outline over the registered scan (with ``registration``).
        warnings: lines to show as warnings.
        outputs: the files written for the scan (relative names).

    Returns:
        str: a complete, self-contained HTML document.
    """
    parts = ["<h2>Summary</h2>", _kv_table(summary)]
    parts.append("<h2>Warnings</h2>")
    if warnings:
        parts.append("<ul>" + "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in warnings) + "</ul>")
    else:
        parts.append("<p class='ok'>none</p>")
    parts += ["<h2>Lesion</h2>", _kv_table(lesion), "<h3>Components (26-connected)</h3>",
              _table(components, flag="flags")]
    if flags:
        parts.append("<p class='muted'>flagged rows (marked): " + "; ".join(
            f"{html.escape(k)}: {html.escape(v)}" for k, v in flags.items()) + "</p>")
    if load:
        parts += ["<h3>Lesion load (template space)</h3>", _table(list(load))]
    parts += ["<h2>Lesion overlay (native scan)</h2>", _img(overlay_png, "lesion outline over the scan, components "
                                                                         "numbered as in the table")]
    parts.append("<h2>Registration check</h2>")
    if registration is None:
        parts.append("<p class='muted'>not registered (the scan is on the template grid or in an MNI152 space)</p>")
    else:
        parts.append(_kv_table(registration))
        if registration_png is not None:
            parts.append(_img(registration_png, "template brain outline over the registered scan"))
    parts += ["<h2>Intensity check</h2>", _kv_table(intensity), "<h2>Model card</h2>"]
    parts.append(_kv_table(card) if card else "<p class='muted'>the weights have no model card</p>")
    if outputs:
        parts += ["<h2>Outputs</h2>", "<ul>" + "".join(f"<li>{html.escape(o)}</li>" for o in outputs) + "</ul>"]
    return _page(title, "\n".join(parts))


def group_report(*, title, summary, rows, columns, overlap_png, load=(), load_total=None):
    """The HTML text of the group page: a summary, the table of every scan, the overlap figure and
    the lesion-load rows ``load`` (of ``load_total`` in the table file)."""
    body = "\n".join(["<h2>Summary</h2>", _kv_table(summary), "<h2>Lesion overlap</h2>",
                      _img(overlap_png, "lesion overlap map"), "<h2>Scans</h2>", _table(rows, columns)])
    if load:
        shown = "" if load_total in (None, len(load)) else f" (first {len(load)} of {load_total} rows)"
        body += f"\n<h2>Lesion load (template space){shown}</h2>\n" + _table(list(load))
    return _page(title, body)


def write_html(path, text):
    """Write an HTML page atomically (:func:`clci_keras.fileio.atomic_text`)."""
    path = os.fspath(path)
    with atomic_text(path, newline="\n") as f:
        f.write(text)
    return path
