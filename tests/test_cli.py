"""The `clci-keras` entry point."""
import subprocess
import sys

import pytest

from clci_keras import __version__
from clci_keras.cli import SUBCOMMANDS, main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "summary" in out and "COMMAND" in out


def test_help_does_not_import_tensorflow():
    code = "import sys; from clci_keras.cli import main; main(['--help'])"
    proc = subprocess.run([sys.executable, "-c", code + "\n"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    check = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom clci_keras.cli import build_parser\nbuild_parser()\n"
         "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr


def test_summary_prints_parameter_count(capsys):
    assert main(["summary", "--quiet"]) == 0
    assert "36,838,305 parameters" in capsys.readouterr().out


def test_summary_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(100, 176, 1\)"):
        main(["summary", "--quiet", "--input-shape", "100", "176", "1"])


def test_every_declared_subcommand_has_help():
    assert set(SUBCOMMANDS) >= {"summary", "synth", "prep", "train", "evaluate", "tables", "demo", "predict"}
