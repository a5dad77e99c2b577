"""Log files hold plain lines: Keras's ``fit`` progress included (no ANSI escapes, no carriage returns)."""
import io
import os
import subprocess
import sys

from test_training import MODEL, fast, tiny  # noqa: F401  (the module-scoped tiny HDF5 file and split)

from clci_keras.training.trainer import fit_verbosity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_fit_verbosity_is_plain_off_a_terminal():
    assert fit_verbosity("auto", _Terminal()) == 1 and fit_verbosity(1, _Terminal()) == 1
    assert fit_verbosity("auto", io.StringIO()) == 2 and fit_verbosity(1, io.StringIO()) == 2
    assert fit_verbosity(0, _Terminal()) == 0 and fit_verbosity(2, _Terminal()) == 2
    closed = io.StringIO()
    closed.close()
    assert fit_verbosity("auto", closed) == 2


def test_a_training_written_to_a_log_file_has_plain_lines(tiny, tmp_path):
    h5, split = tiny
    log = tmp_path / "train.log"
    code = ("import sys, test_training as t; from clci_keras.training import train; "
            "train(t.MODEL, sys.argv[1], sys.argv[2], sys.argv[3], "
            "**t.fast(epochs=2, steps_per_epoch=2, verbose='auto'))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]))
    with open(log, "wb") as out:  # the library's default verbosity, stdout and stderr to a file
        res = subprocess.run([sys.executable, "-c", code, h5, split, str(tmp_path / "run")], stdout=out,
                             stderr=subprocess.STDOUT, env=env, timeout=900)
    text = log.read_bytes().decode("utf8", errors="replace")
    assert res.returncode == 0, text[-3000:]
    assert "Epoch 2/2" in text and "2/2 - " in text  # Keras's own lines are there, one per epoch
    assert "\x1b" not in text and "\r" not in text and "\b" not in text, repr(text[-1500:])
