"""Shared pytest fixtures: small synthetic ATLAS-like datasets (session-scoped).

* ``synthetic_r11_dir``: R1.1 release tree, 4 subjects, seed 0 (subject 0
  has two lesion masks).
* ``synthetic_h5``: ``clci-keras prep`` of ``synthetic_r11_dir``
  (4 x 189 slices, intensity scheme "r1.1").
* ``synthetic_v2_dir`` / ``synthetic_v2_h5``: 2.0 BIDS tree, 3 subjects, seed 1,
  and its HDF5 file (intensity scheme "v2").
* ``notebook_01``: notebook 01 run in QUICK mode (3 subjects), the data of notebooks 02-05.

Treat them as read-only; copy before modifying.

The README's test command runs the files on two pytest-xdist workers, one file
per worker at a time (``--dist loadfile``: a file's module fixtures, e.g. the
notebook chain 01 -> 05, stay in one process). The longest files are handed
out first (:data:`LONGEST_FIRST`) so that the two workers finish together.
"""
import importlib.util
import os
import sys
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_configure(config):
    """Malloc settings of the library for every test; xdist hands out files in LONGEST_FIRST order.

    Tests that train or predict through Keras directly then allocate as the library
    does (no page faults for each freed step buffer); outcomes do not depend on it.
    """
    from clci_keras.data.reader import keep_freed_memory

    keep_freed_memory()
    # pytest-xdist >= 3.2 hands out files with the most tests first (--loadscope-reorder, its
    # default); the files are handed out in LONGEST_FIRST order instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


#: JAX's persistent compilation cache, shared by the tests' JAX child processes (and kept between
#: runs): building a network compiles one small XLA program per weight initialiser, and every
#: training or prediction step one more, which a later process then loads instead (the same
#: programs, so the same results).
JAX_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": os.path.join(tempfile.gettempdir(), "clci_keras_tests_jax_cache"),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

SYNTH_R11_SUBJECTS = 4
SYNTH_V2_SUBJECTS = 3

#: Test files handed to the workers first, longest first (the rest keep their order); from the
#: per-test ``--durations`` of a full run (benchmarks/RESULTS.md, CI sections).
LONGEST_FIRST = ("test_backends.py", "test_notebooks.py", "test_clci_net.py", "test_training.py",
                 "test_deferred_init.py", "test_fresh_interpreter.py", "test_gpu_check.py", "test_comparators.py",
                 "test_multiworker.py", "test_recipe.py", "test_register.py", "test_bids.py", "test_predict.py",
                 "test_cli.py", "test_seeding.py", "test_reliability.py", "test_reliability_3.py",
                 "test_determinism.py", "test_model_card.py", "test_export.py", "test_batchnorm.py",
                 "test_plain_logs.py", "test_published.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside each file is kept


@pytest.fixture(scope="session")
def synthetic_r11_dir(tmp_path_factory):
    from clci_keras.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synth") / "atlas_r11"
    generate_dataset(out, layout="r1.1", n_subjects=SYNTH_R11_SUBJECTS, seed=0)
    return out


@pytest.fixture(scope="session")
def synthetic_h5(synthetic_r11_dir, tmp_path_factory):
    from clci_keras.data.preprocess import prepare_h5

    out = tmp_path_factory.mktemp("h5") / "atlas_r11.h5"
    prepare_h5(synthetic_r11_dir, out, progress=False)
    return out


@pytest.fixture(scope="session")
def synthetic_v2_dir(tmp_path_factory):
    from clci_keras.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synth") / "atlas_v2"
    generate_dataset(out, layout="v2", n_subjects=SYNTH_V2_SUBJECTS, seed=1)
    return out


@pytest.fixture(scope="session")
def synthetic_v2_h5(synthetic_v2_dir, tmp_path_factory):
    from clci_keras.data.preprocess import prepare_h5

    out = tmp_path_factory.mktemp("h5") / "atlas_v2.h5"
    prepare_h5(synthetic_v2_dir, out, progress=False)
    return out


@pytest.fixture(scope="session")
def notebook_01(tmp_path_factory):
    """``(folder, executed notebook)`` of notebook 01 in QUICK mode, run once per test process
    (from a copy saved with stale outputs): the 3-subject ``atlas.h5`` that notebooks 02-05 use,
    here and in tests/test_backends.py's notebook-02 kernels on JAX and PyTorch. Read-only."""
    from test_notebooks import dirty_copy, execute

    out = tmp_path_factory.mktemp("nb01")
    source = dirty_copy("01_prepare_data", tmp_path_factory.mktemp("dirty") / "01_prepare_data.ipynb")
    yield out, execute("01_prepare_data", out, source=source, keep=True)
    (out / "atlas.h5").unlink(missing_ok=True)  # ~100 MB


def slow_prep_script(src, out, pids, slow_body, sigint_default=False):
    """``python -c`` code of a ``clci-keras prep SRC -o OUT --workers 2`` whose every subject first
    writes a file named after its worker's PID into ``pids``, then runs ``slow_body`` (fault
    injection for the interrupt tests). ``sigint_default``: start with Ctrl-C's default action, as
    a terminal's foreground command does (a runner launched as a background job of a
    non-interactive shell passes SIGINT down ignored, POSIX)."""
    body = "".join(f"    {line}\n" for line in slow_body)
    return ("import os, signal, sys, time\n"
            + ("signal.signal(signal.SIGINT, signal.default_int_handler)\n" if sigint_default else "")
            + "import clci_keras.data.preprocess as pp\n"
            "def slow(*a, **k):\n"
            f"    open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close()\n"
            + body
            + "pp.process_subject = slow\n"
            "from clci_keras.cli import main\n"
            f"sys.exit(main(['prep', {str(src)!r}, '-o', {str(out)!r}, '--workers', '2', '--quiet']))\n")


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def benchmark_script(name):
    """``benchmarks/<name>.py`` as a module (its folder on ``sys.path`` while it loads: ``_harness``)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(BENCHMARKS)
    return module


def wait_for(predicate, proc, what, timeout=600):
    """Wait until ``predicate()``; fail if ``proc`` ends first (a hang guard only, not a time limit)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"the command ended before {what}: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
