"""The object the campaign's service phase hosts: each method call runs a function of the
campaign's targets (``tests.faults``, ``tests.stress.pidpipe``) inside it, so a service
call can fault in the same ways as a pool call. Stdlib only: it is imported in workers."""

from __future__ import annotations

import importlib


class Faults:
    def __init__(self) -> None:
        self.calls = 0

    def run(self, module: str, attr: str, *args: object) -> object:
        """``module.attr(*args)``, counted."""
        self.calls += 1
        return getattr(importlib.import_module(module), attr)(*args)
