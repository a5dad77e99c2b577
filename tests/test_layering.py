"""Imports go one way: data -> models -> {training, evaluation, inference} -> experiments -> cli.

Every ``clci_keras.*`` import of every module is read from its syntax tree,
function-level (lazy) imports included, so a shortcut taken inside a function
is caught too. ``reports`` formats tables and figures from evaluation results
(it may read evaluation's summaries; workflows and the CLI call it).

Packages are checked first; then modules: no import circle between any two
modules (a lazy import only postpones a circle; :func:`_module_imports` says how
an import becomes an edge), and no module takes a private ``_name`` of another.
What several layers use lives in leaf modules that import nothing of the package
(:data:`LEAVES`: ``run_layout`` holds the run folder's file names, ``fileio`` the one writer
and the JSON reader/writer; ``data/constants.py`` is the data layer's own leaf), or in top-level
modules that import only leaves (:data:`ON_LEAVES`: ``hardware`` describes the machine with
the CPU flags and GPUs that ``precision`` reads for its bf16 fallback; ``plotting`` holds the
figure helpers, which publish through ``fileio``). The run folder's file
names are spelled only in ``run_layout``: no other module restates them as string literals.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "clci_keras"
LEAVES = {"version", "precision", "fileio", "process", "run_layout"}
#: Top-level modules every layer may import that import only leaves: ``{module: leaves it imports}``.
ON_LEAVES = {"hardware": {"precision"}, "plotting": {"fileio"}}
ALLOWED = {
    "data": set(),
    "models": {"data"},
    "training": {"data", "models"},
    "evaluation": {"data", "models"},
    "inference": {"data", "models"},
    "reports": {"data", "models", "evaluation"},
    "experiments": {"data", "models", "training", "evaluation", "inference", "reports"},
    "bids": {"data", "models", "inference", "reports", "evaluation"},
    "cli": {"data", "models", "training", "evaluation", "inference", "reports", "experiments", "bids"},
}


def _imports():
    """``[(package, imported package, file)]`` for every clci_keras-internal import."""
    out = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        pkg = parts[0][:-3] if parts[0].endswith(".py") else parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.startswith("clci_keras."):
                    out.append((pkg, name.split(".")[1], str(path.relative_to(ROOT.parent))))
    return out


def test_every_package_is_covered():
    pkgs = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert pkgs <= set(ALLOWED), f"packages without a layering rule: {pkgs - set(ALLOWED)}"


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_imports_follow_the_layers(pkg):
    bad = [f"{f} imports clci_keras.{t}" for p, t, f in _imports()
           if p == pkg and t != pkg and t not in LEAVES and t not in ON_LEAVES and t not in ALLOWED[pkg]]
    assert not bad, "\n".join(bad)


def test_leaf_modules_import_nothing_of_the_package():
    bad = [f"{f} imports clci_keras.{t}" for p, t, f in _imports() if p in LEAVES and t != p]
    assert not bad


def test_modules_on_leaves_import_only_their_leaves():
    bad = [f"{f} imports clci_keras.{t}" for p, t, f in _imports()
           if p in ON_LEAVES and t != p and t not in ON_LEAVES[p]]
    assert not bad and all(leaves <= LEAVES for leaves in ON_LEAVES.values())



# --- module level: no import circle, no private name across modules ----------------------------

def _module_name(path):
    """``clci_keras/data/reader.py`` -> ``clci_keras.data.reader``; a package's ``__init__.py``
    is the package's own node (``clci_keras.data``)."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _module_imports():
    """``{module: {imported module: [(line, name)]}}`` for every ``clci_keras`` import, anywhere.

    How an import becomes an edge:

    * ``import clci_keras.a.b`` and ``from clci_keras.a.b import name`` -> ``clci_keras.a.b``;
    * ``from clci_keras.a import b`` where ``b`` is a submodule (or subpackage) ->
      ``clci_keras.a.b``; where ``b`` is a name the package's ``__init__`` defines or re-exports ->
      the package node ``clci_keras.a`` (its ``__init__.py``), which therefore depends on
      everything that ``__init__`` imports.
    * Python also runs every parent package's ``__init__`` on the way to a submodule; that
      implicit step is *not* an edge, otherwise every package that re-exports its submodules
      (``clci_keras.data`` re-exports ``reader``, which lives in ``clci_keras.data``) would be a
      circle by construction. What counts is which namespace the code reads a name from: a module
      that takes a name from its own package's ``__init__`` is in a circle with it.
    * Imports inside functions, methods and ``if`` blocks count like top-level ones: a lazy import
      only postpones a circle. Imports by string (``importlib.import_module``: the CLI's
      subcommand dispatch, the model registry's built-in discovery, the top-level lazy names) are
      plug-in lookups, not edges.
    """
    graph = {m: {} for m in MODULES}
    for mod, path in MODULES.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [(a.name, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against this module's package
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append((sub if sub in MODULES else base, a.name))
            for target, name in targets:
                if target == "clci_keras" or target.startswith("clci_keras."):
                    graph[mod].setdefault(target, []).append((node.lineno, name))
    return graph


def _cycles(graph):
    """Strongly connected components of more than one module (or a module importing itself)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):  # Tarjan; the graph has ~100 nodes, recursion depth is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_sees_long_circles_and_self_imports():
    graph = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": [], "d": []}, "e": {}}
    assert _cycles(graph) == [["a", "b", "c"], ["d"]]


def test_every_import_names_an_existing_module():
    graph = _module_imports()
    bad = [f"{m} imports {t}" for m, ts in graph.items() for t in ts if t not in MODULES]
    assert not bad, "\n".join(bad)


def test_no_import_circle_between_modules():
    graph = _module_imports()
    lines = []
    for comp in _cycles(graph):
        lines.append("circle: " + ", ".join(comp))
        for m in comp:
            for t, uses in sorted(graph[m].items()):
                if t in comp:
                    names = ", ".join(sorted({n for _, n in uses}))
                    where = ", ".join(str(n) for n in sorted({ln for ln, _ in uses}))
                    lines.append(f"  {m} -> {t} ({names}; line {where})")
    assert not lines, "\n".join(lines)


def test_no_private_name_crosses_modules():
    """``from clci_keras.x import _name`` from another module: a private name is nobody's contract."""
    bad = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clci_keras"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and node.module != mod:
                        bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} imports "
                                   f"{a.name} from {node.module}")
    assert not bad, "\n".join(bad)


# --- the run folder's file names: spelled once, in run_layout ------------------------------------

#: String literals equal to a run folder name that mean something else: ``{file: {literal}}``.
NOT_RUN_FILES = {
    "clci_keras/models/weights.py": {"config.json"},  # a member of a Keras ``.keras`` archive
    "clci_keras/training/config.py": {"tensorboard"},  # the TrainConfig field
    "clci_keras/cli/train.py": {"tensorboard"},  # the flag's destination (that field)
}


def _run_folder_names():
    """The string constants of ``run_layout`` and the patterns its name helpers build."""
    from clci_keras import run_layout

    names = {v for k, v in vars(run_layout).items() if k.isupper() and isinstance(v, str)}
    assert {"config.json", "result.json", "log.csv", "latest.json"} <= names
    return names


def _f_string_pattern(node):
    """An f-string with ``{}`` for each replacement field: ``f"scores_{part}.csv"`` -> ``scores_{}.csv``."""
    return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)


def test_run_folder_names_are_not_restated():
    import re

    names = _run_folder_names()
    patterns = re.compile(r"(scores_\{\}.*\.csv|summary_\{\}.*\.json|\{\}_weights\.h5)\Z")
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = str(path.relative_to(ROOT.parent))
        if rel == "clci_keras/run_layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr) and patterns.match(_f_string_pattern(node)):
                bad.append(f"{rel}:{node.lineno}: f-string {_f_string_pattern(node)!r}")
            elif (isinstance(node, ast.Constant) and node.value in names
                  and node.value not in NOT_RUN_FILES.get(rel, ())):
                bad.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert not bad, "run folder names restated (take them from clci_keras.run_layout):\n" + "\n".join(sorted(bad))
