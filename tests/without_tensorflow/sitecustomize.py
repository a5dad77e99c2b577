"""Make TensorFlow (and tf_keras) unimportable in every process started with this folder on PYTHONPATH.

Used by tests/test_backends.py to run the JAX and PyTorch backend set as on a
machine without TensorFlow, child processes (notebook kernels, workers)
included. Every finder on ``sys.meta_path`` is wrapped so that it does not
find these packages: ``import tensorflow`` raises ``ModuleNotFoundError`` and
``importlib.util.find_spec("tensorflow")`` returns None, as when the package
is not installed (PyTorch and Keras probe it that way; a finder that raised
would break them).
"""
import sys

_NAMES = ("tensorflow", "tf_keras")


def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in _NAMES)


class _Hide:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            return None
        find = getattr(self._finder, "find_spec", None)
        return None if find is None else find(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
