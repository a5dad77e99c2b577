"""``import clci_keras``, the CLI module and the help of the commands load no heavy module.

Imports sit at the top of each module (issue 36), except these *heavy* ones,
which stay inside the functions that need them. Measured on the development
machine (``python3 -X importtime -c "import numpy; import X"``: cumulative
time on top of NumPy, which costs 0.15 s itself):

====================  ========   ==========================  =========
module                seconds    module                      seconds
====================  ========   ==========================  =========
tf2onnx                 17.8     nilearn (``nilearn.image``)     2.4
keras                   17.1     onnx                            1.9
tensorflow              15.3     dipy (``dipy.align``)           1.5
jax                      2.6     sklearn                         1.5
torch                    1.5     matplotlib (``pyplot``)         1.3
bids (pybids)            0.61    tensorboard (``.summary``)      0.21
onnxruntime              0.15    pandas                          0.15
====================  ========   ==========================  =========

Not heavy (moved to the top where they were used inside functions): the
standard library, NumPy, h5py (0.03 s), tqdm (0.08 s), PIL; nibabel (0.18 s)
and SciPy (``scipy.ndimage`` 0.47 s) are the data layer's own dependencies,
loaded by ``clci_keras.data`` for every command but the bare ``--help``.
"""
import os
import subprocess
import sys

import pytest

HEAVY = ("keras", "tensorflow", "jax", "torch", "bids", "dipy", "nilearn", "onnx", "onnxruntime", "tf2onnx",
         "matplotlib", "pandas", "sklearn", "tensorboard")

_PROBE = """
import sys
{code}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print("HEAVY:" + ",".join(heavy))
"""

_CLI = """
from clci_keras.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
"""


def _heavy_after(code):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(code=code, heavy=HEAVY)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("HEAVY:")][-1]
    return [m for m in line[len("HEAVY:"):].split(",") if m]


@pytest.mark.parametrize("code", ["import clci_keras", "import clci_keras.cli"])
def test_importing_the_package_loads_no_heavy_module(code):
    heavy = _heavy_after(code)
    assert not heavy, f"`{code}` loads heavy modules: {heavy[:10]} (import them inside the functions that use them)"


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["bids", "--help"]])
def test_command_help_loads_no_heavy_module(argv):
    heavy = _heavy_after(_CLI.format(argv=argv))
    assert not heavy, (f"`clci-keras {' '.join(argv)}` loads heavy modules: {heavy[:10]} "
                       "(import them inside the functions that use them)")
