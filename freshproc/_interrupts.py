"""Keeping KeyboardInterrupt out of the worker set's critical sections.

A Ctrl-C raises KeyboardInterrupt between any two bytecodes of the main thread. Landing
inside the bookkeeping that checks a worker out or in, it would leave the pool with a
worker that nobody owns, and every later call waiting for it. As trio does, the
functions that must run whole are marked (``protected``), and a SIGINT that arrives
while one of them is on the stack is held until it returns, then raised.

Two handlers can see the SIGINT:
- freshproc's own, installed on the main thread by ``install()`` when a pool starts there
  with Python's default handler in place (and put back when the last such pool closes).
  Outside protected code it does exactly what the default handler does.
- trio's, under ``trio.run``: the protected functions are registered with trio's own
  KeyboardInterrupt protection (``register_with_trio``), so trio delivers the interrupt at
  the task's next checkpoint instead.
Under ``asyncio.run`` (3.11+), asyncio's handler turns Ctrl-C into a cancellation, which
only lands at an ``await``: no critical section has one.
"""

from __future__ import annotations

import functools
import signal
import threading
import types
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
RetT = TypeVar("RetT")

_protected_codes: set[types.CodeType] = set()
_protected_functions: list[Callable[..., object]] = []
_registered_with_trio = False

#: A SIGINT held back while protected code ran (the frame it arrived in), or None.
_pending: list[types.FrameType | None] = []
_install_lock = threading.Lock()
_installs = 0


def protected(function: Callable[P, RetT]) -> Callable[P, RetT]:
    """Mark ``function`` as a critical section: a SIGINT that arrives while it runs is
    raised when it returns (or raises)."""
    _protected_codes.add(function.__code__)
    _protected_functions.append(function)

    @functools.wraps(function)
    def run_whole(*args: P.args, **kwargs: P.kwargs) -> RetT:
        try:
            return function(*args, **kwargs)
        finally:
            if _pending:
                _deliver()

    return run_whole


def _deliver() -> None:
    _pending.clear()
    raise KeyboardInterrupt


def _in_protected_code(frame: types.FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _protected_codes:
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: types.FrameType | None) -> None:
    if _in_protected_code(frame):
        _pending.append(frame)
        return
    signal.default_int_handler(signum, frame)


def install() -> bool:
    """Hold SIGINTs back from protected code on the main thread, if Python's default
    handler is in place (a program's own handler is left alone). True if this call
    installed or kept the handler; pair it with ``uninstall()``."""
    global _installs
    if threading.current_thread() is not threading.main_thread():
        return False
    with _install_lock:
        current = signal.getsignal(signal.SIGINT)
        if current is _handler:
            _installs += 1
            return True
        if current is not signal.default_int_handler:
            return False
        try:
            signal.signal(signal.SIGINT, _handler)
        except (ValueError, OSError):  # not possible here (an embedded interpreter, say)
            return False
        _installs += 1
        return True


def uninstall() -> None:
    """Undo one ``install()``; the last one puts Python's default handler back (from the
    main thread, and only if nobody replaced ours meanwhile)."""
    global _installs
    with _install_lock:
        _installs = max(0, _installs - 1)
        if _installs or threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGINT) is _handler:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        except (ValueError, OSError):
            pass


def register_with_trio() -> None:
    """Have trio hold KeyboardInterrupt back from the protected functions too (called
    when a pool first serves a trio task; trio is imported by then)."""
    global _registered_with_trio
    if _registered_with_trio:
        return
    import trio

    for function in _protected_functions:
        trio.lowlevel.enable_ki_protection(function)
    _registered_with_trio = True
