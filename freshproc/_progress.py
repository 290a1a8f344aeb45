"""Progress reporting for maps: ``progress=True`` (a tqdm bar) or a callable.

A map counts an item as done when its call has finished, whatever its outcome, and
reports through a ``Progress``: a tqdm bar (``tqdm.auto``, which draws a widget in a
notebook and text elsewhere) when ``progress=True`` and tqdm is installed, the user's
callable when one is given. Without tqdm, ``progress=True`` runs the map plainly and the
``freshproc`` logger says once how to get the bar. ``progress=False`` makes no ``Progress``
at all: the map's only cost is a ``None`` check per finished batch.

Reports may come from several threads (an executor's loop thread, a thread that adds a
done callback to a finished future): a lock keeps the counts a callable sees in order.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Sized
from typing import Protocol, TypeAlias

from freshproc._logging import logger

#: Called with (items done, items in all, or None when the input's length is unknown).
ProgressCallback: TypeAlias = Callable[[int, "int | None"], object]

#: What ``progress=`` takes.
ProgressOption: TypeAlias = "bool | ProgressCallback"

_hinted = False


class _Bar(Protocol):
    """The part of a tqdm bar that a map uses."""

    def update(self, n: int = 1) -> object: ...
    def close(self) -> None: ...


class Progress:
    """Counts finished items and reports them to a bar or a callable, until closed."""

    def __init__(self, total: int | None, *, bar: _Bar | None = None, callback: ProgressCallback | None = None):
        self._bar = bar
        self._callback = callback
        self._lock = threading.Lock()
        self.done = 0
        self.total = total
        self._closed = False

    def advance(self, items: int) -> None:
        """``items`` more are done; reaching the total closes the progress."""
        with self._lock:
            if self._closed:
                return
            self.done += items
            try:
                if self._bar is not None:
                    self._bar.update(items)
                if self._callback is not None:
                    self._callback(self.done, self.total)
            except Exception:  # noqa: BLE001 - logged: a broken progress callable must not break the map
                self._callback = None
                logger.exception("the progress callable raised; no more progress is reported for this map")
            finished = self.total is not None and self.done >= self.total
        if finished:
            self.close()

    def close(self) -> None:
        """Stop reporting (the map is over, or was left early). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._bar is not None:
            self._bar.close()


def start(option: ProgressOption, total: int | None, fn: Callable[..., object]) -> Progress | None:
    """The progress ``option`` asks for (None for none), over ``total`` items of a map of ``fn``."""
    if option is False:
        return None
    if option is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            _hint_once()
            return None
        return Progress(total, bar=tqdm(total=total, desc=_name_of(fn), unit="item", dynamic_ncols=True))
    if not callable(option):
        raise TypeError(f"progress must be True, False or a callable taking (done, total), got {option!r}")
    return Progress(total, callback=option)


def total_of(iterables: Iterable[object]) -> int | None:
    """How many items ``zip(*iterables)`` yields, if every iterable knows its length."""
    lengths = []
    for iterable in iterables:
        if not isinstance(iterable, Sized):
            return None
        lengths.append(len(iterable))
    return min(lengths, default=0)


def _hint_once() -> None:
    global _hinted
    if not _hinted:
        _hinted = True
        logger.warning("progress=True shows a bar only with tqdm installed: pip install 'freshproc[progress]'")


def _name_of(fn: Callable[..., object]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)
