"""The module-level entry points and the default pool they share."""

from __future__ import annotations

import atexit
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, overload

if sys.version_info >= (3, 11):
    from typing import TypeVarTuple, Unpack
else:
    from typing_extensions import TypeVarTuple, Unpack

from freshproc._pool import Pool

RetT = TypeVar("RetT")
PosArgsT = TypeVarTuple("PosArgsT")

_default_pool: Pool | None = None
_default_lock = threading.Lock()


def default_pool() -> Pool:
    """The pool the module-level functions use: made on first use, closed at exit."""
    global _default_pool
    pool = _default_pool
    if pool is not None and not pool.closed:
        return pool
    with _default_lock:
        if _default_pool is None or _default_pool.closed:
            _default_pool = Pool()
            atexit.register(_default_pool.close)
        return _default_pool


async def call(module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
    """Import ``module`` in a worker of the default pool and call its ``attr`` (dotted)
    with the arguments, keywords included. The caller never imports ``module``.

    Cancellation ends the worker running the call and re-raises the native cancellation.
    """
    return await default_pool().call(module, attr, *args, **kwargs)


@overload
async def run(fn: Callable[[Unpack[PosArgsT]], Coroutine[Any, Any, RetT]], /, *args: Unpack[PosArgsT]) -> RetT: ...
@overload
async def run(fn: Callable[[Unpack[PosArgsT]], RetT], /, *args: Unpack[PosArgsT]) -> RetT: ...
async def run(fn: Callable[[Unpack[PosArgsT]], Any], /, *args: Unpack[PosArgsT]) -> Any:
    """Run ``fn(*args)`` in a worker of the default pool (``fn`` shipped with cloudpickle).

    Cancellation ends the worker running the call and re-raises the native cancellation.
    """
    return await default_pool().run(fn, *args)


def call_sync(module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
    """Blocking ``call``."""
    return default_pool().call_sync(module, attr, *args, **kwargs)


@overload
def run_sync(fn: Callable[[Unpack[PosArgsT]], Coroutine[Any, Any, RetT]], /, *args: Unpack[PosArgsT]) -> RetT: ...
@overload
def run_sync(fn: Callable[[Unpack[PosArgsT]], RetT], /, *args: Unpack[PosArgsT]) -> RetT: ...
def run_sync(fn: Callable[[Unpack[PosArgsT]], Any], /, *args: Unpack[PosArgsT]) -> Any:
    """Blocking ``run``."""
    return default_pool().run_sync(fn, *args)
