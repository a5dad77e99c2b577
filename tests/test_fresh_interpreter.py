"""The README's and docs' first Python lines in a fresh interpreter, as a user's plain script runs them.

pytest, ipykernel, the command line and some site ``.pth`` hooks (an editable install's finder)
import standard modules such as ``importlib.util`` before our code runs, which once hid a
``list_models()`` that failed in a plain ``python``. So each check here starts a new interpreter
with ``-S`` (no site hooks run), finds the package and its dependencies through ``PYTHONPATH``
only, and loads nothing first.
"""
import os
import pathlib
import re
import site
import subprocess
import sys

import pytest

from conftest import JAX_CACHE_ENV

ROOT = pathlib.Path(__file__).resolve().parent.parent
BACKENDS = ("tensorflow", "jax", "torch")


def _bare_python(code, cwd, backend="tensorflow"):
    """Run ``code`` in ``python -S`` with only the repository and site-packages on the path."""
    paths = [str(ROOT), *site.getsitepackages()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KERAS_BACKEND"))}
    env.update(PYTHONPATH=os.pathsep.join(paths), KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu", **JAX_CACHE_ENV)  # (a disk cache: no imports)
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_bare_interpreter_has_no_preloaded_helpers(tmp_path):
    # the premise of this file: without site hooks, importlib.util is not loaded before our code
    out = _bare_python("import sys; print('importlib.util' in sys.modules)", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "tensorflow"] + ["tensorflow"])
def test_list_models_and_build_model_first_thing(tmp_path, backend):
    code = ("import clci_keras\n"
            "print(clci_keras.list_models())\n"
            "m = clci_keras.build_model('baseline', input_shape=(32, 32, 1))\n"
            "print(m.name, m.output_shape)\n")
    out = _bare_python(code, tmp_path, backend)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "'clci_net'" in lines[0] and "'pspnet'" in lines[0]
    assert lines[1] == "baseline (None, 32, 32, 1)"


def _readme_block(heading):
    """The first ```python block after ``heading`` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_readme_using_the_model_block_runs_as_written(tmp_path):
    block = _readme_block("## Using the model")
    # The block loads "weights.h5": save the block's own model there just before, so every line
    # runs in order, as written, in the fresh interpreter.
    load = next(line for line in block.splitlines() if "load_weights(" in line)
    code = block.replace(load, 'clci_keras.save_weights_legacy(model, "weights.h5")\n' + load)
    out = _bare_python(code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "export.h5").stat().st_size > 100e6  # 36.8 M float32 parameters


def test_every_import_line_of_the_readme_and_docs_runs_first_thing(tmp_path):
    # each page's python blocks' import lines, page by page, in a fresh bare interpreter
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    code = []
    for page in pages:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            code += [line for line in block.splitlines() if line.startswith(("import ", "from "))]
    assert any("clci_keras.inference.engine" in line for line in code)  # the pages this checks
    out = _bare_python("\n".join(dict.fromkeys(code)) + "\nprint('ok')\n", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
