"""The paper's Tables 1 and 2 from run folders, beside the published values.

A *run folder* is a training output folder (``config.json`` from
:func:`clci_keras.training.train`) holding an evaluation summary
``summary_test.json`` (:func:`clci_keras.evaluation.evaluate.evaluate_run`).
:func:`collect_runs` finds them below a root folder; all runs of the same
model (e.g. the five folds) are pooled: their per-patient rows
(``scores_test.csv``) are concatenated and averaged, so every patient counts
once. (X-Net's script averages the five fold means instead; with folds of
45-46 patients the two differ in the third decimal at most.)

Each table is written as CSV, Markdown and LaTeX. Every measured row names
the data it was measured on (file, number of test patients, folds) and rows
measured on synthetic data are marked ``[SYNTHETIC]`` (CSV column
``synthetic``), because their values say nothing about ATLAS.

*Dry runs* (``clci-keras recipe --dry``: training capped by ``--max-steps``,
recorded in the run's ``config.json``, or an evaluation of ``--max-subjects``
of the part, ``"partial": true`` in the summary) check that the recipe runs;
their numbers mean nothing. Their rows are marked ``[DRY RUN]`` (CSV column
``dry_run``, LaTeX ‡) and say what was capped. A model whose runs mix dry and
real ones is refused (``ValueError`` naming both), since pooling them would
give a number that is neither.

Which models each table has, Table 2's switches and the published values are
defined once in :mod:`clci_keras.models.paper` (:data:`TABLE1`, :data:`TABLE2`,
:data:`PAPER`, the metrics as :data:`COLUMNS`), re-exported here.
"""
from __future__ import annotations

import csv
import glob
import io
import math
import os

from clci_keras.evaluation.evaluate import slab_bounds
from clci_keras.evaluation.metrics import summarize
from clci_keras.fileio import atomic_text, exclusive, read_json
from clci_keras.models.paper import METRICS, PAPER, TABLE1, TABLE2  # noqa: F401  (re-exported)
from clci_keras.run_layout import CONFIG_FILE, scores_file, summary_file

#: Paper metrics in table order: (key in our summaries, column title, decimals).
COLUMNS = METRICS


def _read_object(path):
    """A JSON object from ``path``; ValueError naming the file if it is not one."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _read_run(run, summary_path, part):
    """``(model, summary, config, rows)`` of one run folder (model ``None``: not a run)."""
    summary = _read_object(summary_path)
    cfg_path = os.path.join(run, CONFIG_FILE)
    cfg = _read_object(cfg_path) if os.path.exists(cfg_path) else {}
    model = summary.get("model") or cfg.get("model")
    csv_path = os.path.join(run, scores_file(part))
    rows = _read_rows(csv_path) if model and os.path.exists(csv_path) else []
    return model, summary, cfg, rows


def _model_of(run):
    """The model a run folder's ``config.json`` names, or the folder's name."""
    try:
        return _read_object(os.path.join(run, CONFIG_FILE)).get("model") or os.path.basename(run)
    except (OSError, ValueError):
        return os.path.basename(run)


def collect_runs(root, part="test", broken=None):
    """``{model name: run info}`` for every run folder below ``root``.

    Run info: ``runs`` (folders), ``rows`` (per-patient score dicts),
    ``data`` (provenance of the first run), ``synthetic``, ``folds``.

    A run folder whose summary, config or scores cannot be read raises a
    ValueError/OSError naming the file; with a list ``broken`` it is appended
    there as ``(run folder, model, message)`` and left out instead.
    """
    found = {}
    pattern = os.path.join(os.fspath(root), "**", summary_file(part))
    for summary_path in sorted(glob.glob(pattern, recursive=True)):
        run = os.path.dirname(summary_path)
        try:
            model, summary, cfg, rows = _read_run(run, summary_path, part)
        except (OSError, ValueError) as e:
            if broken is None:
                raise
            broken.append((run, _model_of(run), str(e)))
            continue
        if not model:
            continue
        info = found.setdefault(model, {"runs": [], "rows": [], "data": summary.get("data", {}),
                                        "synthetic": False, "folds": [], "summaries": [], "dry": []})
        info["runs"].append(run)
        info["dry"].append(_dry_run(cfg, summary))
        info["rows"].extend(rows)
        info["summaries"].append(summary)
        info["synthetic"] |= bool(summary.get("data", {}).get("synthetic"))
        if summary.get("fold", cfg.get("fold")) is not None:
            info["folds"].append(summary.get("fold", cfg.get("fold")))
    for model, info in found.items():
        dry = [r for r, d in zip(info["runs"], info["dry"]) if d]
        if dry and len(dry) < len(info["runs"]):
            real = [r for r in info["runs"] if r not in dry]
            raise ValueError(f"{root}: model {model!r} has dry runs ({', '.join(dry)}) beside real ones "
                             f"({', '.join(real)}); move the dry runs (--max-steps / --max-subjects) elsewhere")
        info["dry_run"] = bool(dry)
    return found


def _dry_run(cfg, summary):
    """What was capped in a dry run (``{}``: a real run): ``max_steps`` of training,
    ``scored``/``of`` test patients of a partial evaluation."""
    out = {}
    if cfg.get("max_steps") is not None:
        out["max_steps"] = cfg["max_steps"]
    if summary.get("partial"):
        out["scored"], out["of"] = len(summary.get("subjects") or []), summary.get("part_subjects")
    return out


def _read_rows(path):
    """Per-patient rows of a scores CSV; ValueError naming the file and line of a cut row."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for r in reader:
            if None in r or None in r.values():  # more or fewer fields than the header
                raise ValueError(f"{path}, line {reader.line_num}: {len(reader.fieldnames or ())} fields "
                                 "expected; the row is cut short or malformed")
            rows.append({k: (float(v) if v != "" and _isnum(v) else (math.nan if v == "" else v))
                         for k, v in r.items()})
    return rows


def _isnum(v):
    try:
        float(v)
        return True
    except ValueError:
        return False


def _measured(info):
    """Means of the paper's columns over the pooled patients (or the summaries)."""
    if info["rows"]:
        s = summarize(info["rows"], names=[c[0] for c in COLUMNS])
        return [s[k]["mean"] for k, _, _ in COLUMNS], len(info["rows"])
    s = info["summaries"][0]["scores"]
    return [s[k]["mean"] for k, _, _ in COLUMNS], s["dsc"]["n"]


def _data_label(info, n):
    d = info["data"]
    name = os.path.basename(str(d.get("h5", "?")))
    folds = f", folds {sorted(set(info['folds']))}" if info["folds"] else ""
    layout = d.get("layout", "")
    tag = "SYNTHETIC " if info["synthetic"] else ""
    dry = ""
    if info.get("dry_run"):
        tag += "DRY RUN "
        steps = sorted({d["max_steps"] for d in info["dry"] if "max_steps" in d})
        partial = [d for d in info["dry"] if "scored" in d]
        if steps:
            dry += f"; training capped at {'/'.join(map(str, steps))} steps"
        if partial:
            of = sum(d["of"] or 0 for d in partial)
            dry += f"; {sum(d['scored'] for d in partial)} of {of} test patients scored"

    slabs = sorted({x["slices"] for x in info.get("summaries", []) if slab_bounds(x.get("slices"))})
    if slabs:  # evaluate --slices A:B: the rest of each volume counted as no lesion
        dry += f"; only slices {'/'.join(slabs)} predicted"
    return f"{tag}{name} ({layout}{', ' if layout else ''}{n} test patients{folds}{dry})"


def build_table(which, runs):
    """Rows (dicts) of Table ``1`` or ``2``: published and measured values side by side."""
    spec = TABLE1 if int(which) == 1 else TABLE2
    out = []
    for entry in spec:
        if int(which) == 1:
            label, model, published = entry
            switches = None
        else:
            label, model, switches, published = entry
        row = {"method": label, "model": model}
        if switches is not None:
            row.update({"aspp": switches[0], "clf": switches[1], "inference": switches[2]})
        for i, (key, title, _) in enumerate(COLUMNS):
            row[f"paper_{key}"] = published[i] if published else None
        info = runs.get(model)
        left_out = (info or {}).get("broken", [])
        if info and info["runs"]:
            vals, n = _measured(info)
            for (key, _, _), v in zip(COLUMNS, vals):
                row[f"measured_{key}"] = v
            row["measured_on"] = _data_label(info, n)
            row["synthetic"] = info["synthetic"]
            row["dry_run"] = info.get("dry_run", False)
            row["runs"] = len(info["runs"])
        else:
            for key, _, _ in COLUMNS:
                row[f"measured_{key}"] = None
            row["measured_on"] = "not run"
            row["synthetic"] = None
            row["dry_run"] = None
            row["runs"] = 0
        if left_out:
            note = f"{len(left_out)} unreadable run folder(s) left out: {', '.join(left_out)}"
            row["measured_on"] = f"{row['measured_on']}; {note}" if row["runs"] else f"not measured: {note}"
        out.append(row)
    return out


def _fmt(v, dec):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{dec}f}"


def to_markdown(rows, which):
    title = ("Table 1: comparison with five methods" if int(which) == 1 else
             "Table 2: ablation (ASPP, CLF, context inference)")
    head = ["Method"]
    if int(which) == 2:
        head += ["ASPP", "CLF", "Inference"]
    for _, t, _ in COLUMNS:
        head += [f"{t} (paper)", f"{t} (ours)"]
    head.append("measured on")
    lines = [f"**{title}.** Paper: {PAPER}. Ours: per-patient 3D scores, mean over test patients; "
             "VOE and RVD in %, RVD signed. Rows marked [SYNTHETIC] were measured on synthetic "
             "data and are not comparable with the paper."
             + (" Rows marked [DRY RUN] come from dry runs (training capped by --max-steps, a few test "
                "patients scored): they show that the recipe runs, their numbers mean nothing."
                if any(r.get("dry_run") for r in rows) else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [("[SYNTHETIC] " if r["synthetic"] else "") + ("[DRY RUN] " if r.get("dry_run") else "")
                 + r["method"]]
        if int(which) == 2:
            cells += ["✓" if r[k] else "" for k in ("aspp", "clf", "inference")]
        for key, _, dec in COLUMNS:
            cells += [_fmt(r[f"paper_{key}"], dec), _fmt(r[f"measured_{key}"], dec)]
        cells.append(r["measured_on"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#",
        "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _tex(s):
    """Escape LaTeX special characters."""
    return "".join(_TEX.get(c, c) for c in str(s))


def to_latex(rows, which):
    n_sw = 3 if int(which) == 2 else 0
    cols = "l" + "c" * n_sw + "cc" * len(COLUMNS) + "l"
    head1 = ["Method"] + (["ASPP", "CLF", "Inf."] if n_sw else [])
    head1 += [rf"\multicolumn{{2}}{{c}}{{{t}}}" for _, t, _ in COLUMNS] + ["measured on"]
    head2 = [""] * (1 + n_sw) + ["paper", "ours"] * len(COLUMNS) + [""]
    caption = ("Comparison with five methods" if int(which) == 1 else "Ablation study") + (
        f". Paper: {PAPER}. Ours: per-patient 3D scores; VOE, RVD in \\%. "
        r"$^\dagger$ measured on synthetic data, not comparable with the paper.")
    if any(r.get("dry_run") for r in rows):
        caption += r" $^\ddagger$ dry run (training capped, few patients scored): not a result."
    lines = [r"\begin{table}[t]", r"\centering", r"\scriptsize",
             rf"\caption{{{caption}}}", rf"\begin{{tabular}}{{{cols}}}", r"\hline",
             " & ".join(head1) + r" \\", " & ".join(head2) + r" \\", r"\hline"]
    for r in rows:
        cells = [_tex(r["method"]) + (r"$^\dagger$" if r["synthetic"] else "")
                 + (r"$^\ddagger$" if r.get("dry_run") else "")]
        if n_sw:
            cells += [r"\checkmark" if r[k] else "" for k in ("aspp", "clf", "inference")]
        for key, _, dec in COLUMNS:
            cells += [_fmt(r[f"paper_{key}"], dec).replace("–", "--"),
                      _fmt(r[f"measured_{key}"], dec).replace("–", "--")]
        cells.append(_tex(r["measured_on"]))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _atomic_write(path, text):
    with atomic_text(path, newline="") as f:
        f.write(text)


def to_csv_text(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def write_tables(runs_dir, out_dir, part="test", tables=(1, 2), broken=None):
    """Write ``table{1,2}.{csv,md,tex}`` to ``out_dir``; returns ``{name: path}``.

    With a list ``broken``, unreadable run folders are appended to it (see
    :func:`collect_runs`) and the tables are written from the others; a row
    whose runs were left out says so in ``measured_on``. One run per ``out_dir`` at a
    time (:func:`clci_keras.fileio.exclusive`: a second one fails at once, naming the first).
    """
    runs = collect_runs(runs_dir, part, broken)
    for run, model, _ in broken or ():
        runs.setdefault(model, {"runs": []}).setdefault("broken", []).append(run)
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    with exclusive(out_dir, what="tables folder", inside=True):  # two runs never mix their tables
        for which in tables:
            rows = build_table(which, runs)
            for ext, text in (("csv", to_csv_text(rows)), ("md", to_markdown(rows, which)),
                              ("tex", to_latex(rows, which))):
                path = os.path.join(out_dir, f"table{which}.{ext}")
                _atomic_write(path, text)
                written[f"table{which}.{ext}"] = path
    return written
