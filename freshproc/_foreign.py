"""The template's side of environments: borrowing the caller's packages, and the facts
the template reports in its handshake (see ``_environments``, the caller's side).

Runs under whichever interpreter the pool names, so it imports only what Python starts
with (``sys``, ``os``) and, when a package is borrowed, ``importlib.machinery``.
"""

from __future__ import annotations

import os
import pickle
import sys

TYPE_CHECKING = False  # typing stays out of the worker runtime at run time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


class _Borrowed:
    """A finder, first on ``sys.meta_path``, for a few top-level packages that must be
    the caller's (cloudpickle: values pickled by value are the caller's cloudpickle's to
    read): each is looked up in the caller's folder that holds it, and nowhere else. The
    folder itself is not put on ``sys.path``, so nothing else of the caller's leaks in."""

    def __init__(self, folders: Mapping[str, str]) -> None:
        self.folders = dict(folders)

    def find_spec(self, name: str, path: object = None, target: object = None) -> Any:
        folder = self.folders.get(name)
        if folder is None:
            return None
        from importlib.machinery import PathFinder  # only a borrowing template pays for it

        return PathFinder.find_spec(name, [folder])


def borrow(folders: Mapping[str, str]) -> None:
    """Make each named package importable from the caller's folder that holds it."""
    if folders:
        sys.meta_path.insert(0, _Borrowed(folders))


def facts(caller_version: tuple[int, ...] | None, pdeathsig: bool) -> str:
    """What the template tells the parent about itself when it is ready: a literal that
    ``ast.literal_eval`` reads (no import here; the parent trusts nothing it cannot read)."""
    return repr(
        {
            "version": tuple(sys.version_info[:3]),
            "caller_version": caller_version,
            "implementation": sys.implementation.name,
            "executable": sys.executable,
            "highest_protocol": pickle.HIGHEST_PROTOCOL,
            "sys_path": list(sys.path),
            "cwd": os.getcwd(),
            "pdeathsig": pdeathsig,
            # Hot reload leaves this interpreter's standard library unwatched.
            "stdlib": os.path.dirname(os.__file__),
        }
    )
