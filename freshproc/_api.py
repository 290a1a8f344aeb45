"""The module-level entry points and the default pool they share."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

from freshproc._pool import Pool

P = ParamSpec("P")
RetT = TypeVar("RetT")

_default_pool: Pool | None = None
_default_options: dict[str, Any] = {}
_default_lock = threading.Lock()


def default_pool() -> Pool:
    """The pool the module-level functions use: made on first use, closed at exit.
    ``freshproc.default_pool().recycle()`` replaces its workers."""
    global _default_pool
    pool = _default_pool
    if pool is not None and not pool.closed:
        return pool
    with _default_lock:
        if _default_pool is None or _default_pool.closed:
            _default_pool = Pool(**_default_options)
            atexit.register(_default_pool.close)
        return _default_pool


def configure_default_pool(**options: Any) -> None:
    """Make the default pool anew, from now on with these ``Pool`` options (used by
    ``%freshproc_reload``). The current one is closed: calls still running in it raise
    PoolClosedError."""
    global _default_pool
    with _default_lock:
        _default_options.update(options)
        previous, _default_pool = _default_pool, None
    if previous is not None:
        previous.close()


async def call(module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
    """Import ``module`` in a worker of the default pool and call its ``attr`` (dotted)
    with the arguments, keywords included. The caller never imports ``module``.

    Cancellation ends the worker running the call and re-raises the native cancellation.
    """
    return await default_pool().call(module, attr, *args, **kwargs)


@overload
async def run(fn: Callable[P, Coroutine[Any, Any, RetT]], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
@overload
async def run(fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
async def run(fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
    """Run ``fn(*args, **kwargs)`` in a worker of the default pool (``fn`` shipped by name
    when importable, else by value with cloudpickle).

    Cancellation ends the worker running the call and re-raises the native cancellation.
    """
    return await default_pool().run(fn, *args, **kwargs)


def call_sync(module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
    """Blocking ``call``."""
    return default_pool().call_sync(module, attr, *args, **kwargs)


@overload
def run_sync(fn: Callable[P, Coroutine[Any, Any, RetT]], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
@overload
def run_sync(fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
def run_sync(fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
    """Blocking ``run``."""
    return default_pool().run_sync(fn, *args, **kwargs)
