"""Name → builder registry for every model of the paper's Tables 1 and 2.

Builders register themselves at import time with :func:`register_model`;
:func:`build_model` and :func:`list_models` import the built-in model modules
listed in :data:`BUILTIN_MODULES` on first use. Which table row a model
reproduces comes from :mod:`clci_keras.models.paper` (the paper's tables,
defined once).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from typing import Callable

from clci_keras.models.paper import table_of

#: Modules whose import registers the built-in models.
BUILTIN_MODULES = (
    "clci_keras.models.clci_net_variants",
    "clci_keras.models.fcn8s",
    "clci_keras.models.pspnet",
    "clci_keras.models.deeplabv3plus",
    "clci_keras.models.denseunet",
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder, fixed options and documentation."""

    name: str
    builder: Callable
    description: str
    reference: str
    options: dict = dataclasses.field(default_factory=dict)
    table: str = ""  # which paper table row(s) it reproduces, e.g. "Table 1: FCN-8s"


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register_model(name, builder, *, description, reference, options=None, table=None):
    """Register ``builder`` under ``name`` (lower-case, unique).

    ``table`` (which paper table row(s) the model reproduces) defaults to
    :func:`clci_keras.models.paper.table_of` ``(name)``: ``""`` for a model
    outside the paper's tables.
    """
    if name in _REGISTRY and _REGISTRY[name].builder is not builder:
        raise ValueError(f"model name {name!r} is already registered")
    table = table_of(name) if table is None else table
    _REGISTRY[name] = ModelSpec(name, builder, description, reference, dict(options or {}), table)
    return builder


def _load_builtins():
    global _loaded
    if _loaded:
        return
    for module in BUILTIN_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    _loaded = True


def list_models():
    """Sorted list of registered model names."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_model_spec(name):
    """The :class:`ModelSpec` of ``name``; ``ValueError`` listing the known names."""
    _load_builtins()
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def build_model(name, input_shape=(224, 176, 1), num_class=1, **options):
    """Build the registered model ``name``.

    Args:
        name: one of :func:`list_models`.
        input_shape: ``(H, W, C)`` of the input slices.
        num_class: output channels (sigmoid for 1, softmax otherwise).
        **options: builder-specific keyword arguments; they override the
            registered fixed options.
    """
    spec = get_model_spec(name)
    kwargs = {**spec.options, **options}
    kwargs.setdefault("name", spec.name)
    return spec.builder(input_shape=input_shape, num_class=num_class, **kwargs)
