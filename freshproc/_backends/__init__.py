"""Process backends: where workers come from. Loaded lazily by name."""

from __future__ import annotations

import importlib

from freshproc._backends._base import WorkerSource, WorkerSourceOptions

_BACKENDS = {"local": "freshproc._backends._local"}


def names() -> list[str]:
    """The backends that can be named."""
    return sorted(_BACKENDS)


def create_source(name: str, options: WorkerSourceOptions) -> WorkerSource:
    """Make the worker source of backend ``name``."""
    try:
        module_name = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(_BACKENDS))}") from None
    module = importlib.import_module(module_name)
    source: WorkerSource = module.create_source(options)
    return source
