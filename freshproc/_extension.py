"""The IPython extension's entry points, importable without IPython: ``%load_ext
freshproc`` looks them up on the package, and only then is ``freshproc.ipython`` (and
IPython with it) imported."""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    """Called by ``%load_ext freshproc``: adds ``%%fresh``, ``%freshproc_reload`` and
    ``%freshproc`` (see ``freshproc.ipython``)."""
    from freshproc import ipython as extension

    extension.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Called by ``%unload_ext freshproc``: closes the pool ``%%fresh`` uses."""
    from freshproc import ipython as extension

    extension.unload_ipython_extension(ipython)
