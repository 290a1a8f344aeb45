"""Exceptions that pickle badly, raised inside workers by tests/test_exceptions.py. The
caller imports this module too, so their classes are there to rebuild them with."""

from __future__ import annotations

import threading


class PluginError(Exception):
    """A custom ``__init__``: pickle calls ``PluginError(msg)``, which cannot work."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


class NoPickle(Exception):
    """Its own pickling raises."""

    def __init__(self, msg: str, detail: str) -> None:
        super().__init__(msg)
        self.detail = detail

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("NoPickle refuses to be pickled")


def raise_plugin_error(code: int, msg: str) -> None:
    raise PluginError(code, msg)


def raise_no_pickle(msg: str, detail: str) -> None:
    raise NoPickle(msg, detail)


def raise_plugin_error_holding_a_lock(code: int) -> None:
    error = PluginError(code, "holds a lock")
    error.lock = threading.Lock()  # type: ignore[attr-defined]
    raise error
