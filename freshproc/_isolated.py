"""``@isolated``: a function whose every call runs in a worker.

A decorated ``def`` stays a blocking call (``f.aio(...)`` awaits it from async code); a
decorated ``async def`` stays awaitable and runs on an event loop inside the worker.
A function that lives in an importable module travels by name, so a recycled worker runs
the module's code as it is on disk now; one from ``__main__`` or a local scope travels by
value (cloudpickle).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

from freshproc._api import default_pool
from freshproc._call import Request
from freshproc._policy import validate_timeout
from freshproc._pool import Pool
from freshproc._worker import BY_NAME, BY_VALUE, ISOLATED_MARKER

P = ParamSpec("P")
RetT = TypeVar("RetT")


class _Isolated(Generic[P, RetT]):
    # Copied from the decorated function by functools.update_wrapper.
    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]

    def __init__(self, fn: Callable[P, Any], pool: Pool | None, fresh: bool, timeout: float | None) -> None:
        functools.update_wrapper(cast("Callable[..., Any]", self), fn)
        setattr(self, ISOLATED_MARKER, True)
        self._fn = fn
        self._pool = pool
        self._fresh = fresh
        self._timeout = validate_timeout(timeout)
        qualname = getattr(fn, "__qualname__", "")
        module = getattr(fn, "__module__", None)
        self._by_name = module not in (None, "__main__") and "<locals>" not in qualname

    def _target_pool(self) -> Pool:
        if self._pool is not None:
            return self._pool
        if self._fresh:
            return _shared_fresh_pool()
        return default_pool()

    def _request(self, args: tuple[object, ...], kwargs: dict[str, object]) -> Request:
        if self._by_name:
            return Request(BY_NAME, (self._fn.__module__, self._fn.__qualname__), args, kwargs)
        return Request(BY_VALUE, self._fn, args, kwargs)

    def _timeout_for(self, pool: Pool) -> float | None:
        return self._timeout if self._timeout is not None else pool.options.timeout

    async def _call_async(self, args: tuple[object, ...], kwargs: dict[str, object]) -> RetT:
        pool = self._target_pool()
        return cast("RetT", await pool.submit(self._request(args, kwargs), policy_timeout=self._timeout_for(pool)))

    def _call_sync(self, args: tuple[object, ...], kwargs: dict[str, object]) -> RetT:
        pool = self._target_pool()
        return cast("RetT", pool.submit_sync(self._request(args, kwargs), policy_timeout=self._timeout_for(pool)))

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        # A decorated method binds like a function: the instance travels with each call
        # (by value), as its first argument.
        if instance is None:
            return self
        return _BoundIsolated(self, instance)

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Pickled (as an argument, say), it stands for the plain function: by name where
        # it lives in a module, so it keeps its module's globals, else by value.
        if self._by_name:
            return (_import_unwrapped, (self._fn.__module__, self._fn.__qualname__))
        return (_unwrap, (self._fn,))


class IsolatedFunction(_Isolated[P, RetT]):
    """A decorated ``def``: calling it blocks until the worker returns."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> RetT:
        return self._call_sync(args, kwargs)

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> RetT:
        """Await the call from async code instead of blocking."""
        return await self._call_async(args, kwargs)


class IsolatedCoroutineFunction(_Isolated[P, RetT]):
    """A decorated ``async def``: calling it returns a coroutine."""

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> RetT:
        return await self._call_async(args, kwargs)


class _BoundIsolated:
    """A decorated method looked up on an instance."""

    __slots__ = ("_function", "_instance")

    def __init__(self, function: _Isolated[Any, Any], instance: object) -> None:
        self._function = function
        self._instance = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(self._instance, *args, **kwargs)  # type: ignore[operator]

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        return self._function.aio(self._instance, *args, **kwargs)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<bound isolated method {self._function.__qualname__} of {self._instance!r}>"


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _import_unwrapped(module: str, qualname: str) -> Callable[..., Any]:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return getattr(obj, "__wrapped__", obj)  # type: ignore[no-any-return]


_fresh_pool: Pool | None = None
_fresh_pool_lock = threading.Lock()


def _shared_fresh_pool() -> Pool:
    """The pool behind ``@isolated(fresh=True)`` without an explicit pool: made on first
    use, closed at exit."""
    global _fresh_pool
    with _fresh_pool_lock:
        if _fresh_pool is None or _fresh_pool.closed:
            _fresh_pool = Pool(fresh=True)
            atexit.register(_fresh_pool.close)
        return _fresh_pool


@overload
def isolated(fn: Callable[P, Coroutine[Any, Any, RetT]], /) -> IsolatedCoroutineFunction[P, RetT]: ...  # type: ignore[overload-overlap]
@overload
def isolated(fn: Callable[P, RetT], /) -> IsolatedFunction[P, RetT]: ...
@overload
def isolated(*, pool: Pool | None = None, fresh: bool = False, timeout: float | None = None) -> _Decorator: ...
def isolated(
    fn: Callable[P, Any] | None = None,
    /,
    *,
    pool: Pool | None = None,
    fresh: bool = False,
    timeout: float | None = None,
) -> IsolatedFunction[P, Any] | IsolatedCoroutineFunction[P, Any] | _Decorator:
    """Make every call of the decorated function run in a worker.

    Cancelling an awaited call ends the worker running it; a blocking call interrupted by
    KeyboardInterrupt does the same.

    :param pool: the pool to use (default: the module-level default pool, or a shared
        ``fresh=True`` pool when ``fresh`` is set).
    :param fresh: run every call in a worker that has run no earlier call.
    :param timeout: seconds; a longer call raises CallTimeoutError and its worker is ended.
    """
    decorator = _Decorator(pool, fresh, timeout)
    if fn is None:
        return decorator
    if inspect.iscoroutinefunction(fn):
        return IsolatedCoroutineFunction(fn, pool, fresh, timeout)
    return IsolatedFunction(fn, pool, fresh, timeout)


class _Decorator:
    def __init__(self, pool: Pool | None, fresh: bool, timeout: float | None) -> None:
        if pool is not None and fresh and not pool.options.fresh:
            raise ValueError("fresh=True needs a pool made with fresh=True (or no pool)")
        validate_timeout(timeout)
        self._pool, self._fresh, self._timeout = pool, fresh, timeout

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, RetT]], /) -> IsolatedCoroutineFunction[P, RetT]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, RetT], /) -> IsolatedFunction[P, RetT]: ...
    def __call__(self, fn: Callable[P, Any], /) -> IsolatedFunction[P, Any] | IsolatedCoroutineFunction[P, Any]:
        if inspect.iscoroutinefunction(fn):
            return IsolatedCoroutineFunction(fn, self._pool, self._fresh, self._timeout)
        return IsolatedFunction(fn, self._pool, self._fresh, self._timeout)


__all__ = ["IsolatedCoroutineFunction", "IsolatedFunction", "isolated"]
