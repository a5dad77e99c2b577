"""Imports go one way: data -> models -> {training, evaluation, inference} -> experiments -> cli.

Every ``clci_keras.*`` import of every module is read from its syntax tree,
function-level (lazy) imports included, so a shortcut taken inside a function
is caught too. ``reports`` formats tables and figures from evaluation results
(it may read evaluation's summaries; workflows and the CLI call it).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "clci_keras"
LEAVES = {"version", "hardware", "fileio"}
ALLOWED = {
    "data": set(),
    "models": {"data"},
    "training": {"data", "models"},
    "evaluation": {"data", "models"},
    "inference": {"data", "models"},
    "reports": {"data", "models", "evaluation"},
    "experiments": {"data", "models", "training", "evaluation", "inference", "reports"},
    "cli": {"data", "models", "training", "evaluation", "inference", "reports", "experiments"},
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
           if p == pkg and t != pkg and t not in LEAVES and t not in ALLOWED[pkg]]
    assert not bad, "\n".join(bad)


def test_leaf_modules_import_nothing_of_the_package():
    bad = [f"{f} imports clci_keras.{t}" for p, t, f in _imports() if p in ("hardware", "fileio") and t != p]
    assert not bad

