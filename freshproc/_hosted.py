"""The object a service worker hosts (worker side): built once, on the first request that
needs it, by the factory its service named; then every method call of the service runs on
it, until the worker ends.

The factory travels in the template's configuration (pickled by the caller), so every
worker forked for the service, a restarted one included, builds its own object: a restart
costs a fork plus the factory call. An object that is a context manager is entered after
it is built and exited by ``close``. Coroutine methods, and ``__aenter__``/``__aexit__``,
run on one event loop that lives as long as the object, so what they keep between calls
(sessions, locks, tasks) stays bound to the same loop.

Stdlib only: it is part of the worker runtime.
"""

from __future__ import annotations

import pickle
import types
from collections.abc import Callable
from typing import Any, cast

#: The factory, as the caller pickled it: (how, target, args, kwargs), with ``how`` and
#: ``target`` as in a call request (by name or by value). Set by the template.
factory: bytes | None = None
#: Resolves a target as a call request names it: the worker's own ``resolve``, set when
#: the worker runtime loads (importing it from here would import the freshproc package,
#: and with it the pool and anyio, into a worker).
resolver: Callable[[int, object], Callable[..., object]] | None = None


class _State:
    obj: object = None
    #: The context manager the object came from (``__enter__``'s result may be another
    #: object), exited by ``close``.
    manager: object = None
    built = False
    #: The factory raised: this worker can serve nothing, and asks to be replaced.
    broken = False
    loop: Any = None  # an asyncio event loop, made for the first coroutine


state = _State()


def call_method(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    """Call the hosted object's method ``name`` (building the object first if needed)."""
    obj = _built()
    method = getattr(obj, name)  # AttributeError names the type and the method
    if not callable(method):
        raise TypeError(f"{type(obj).__qualname__}.{name} is not a method (it is a {type(method).__qualname__})")
    return _finish(method(*args, **kwargs))


def close() -> None:
    """End the hosted object: ``__aexit__`` / ``__exit__`` for a context manager, else its
    ``close()`` if it has one. Nothing if it was never built."""
    if not state.built:
        return
    obj, manager = state.obj, state.manager
    try:
        if hasattr(manager, "__aexit__"):
            _finish(manager.__aexit__(None, None, None))
        elif hasattr(manager, "__exit__"):
            manager.__exit__(None, None, None)
        elif callable(getattr(obj, "close", None)):
            _finish(obj.close())  # type: ignore[attr-defined]
    finally:
        if state.loop is not None:
            state.loop.close()
            state.loop = None


def build() -> None:
    """Build the object now, if it is not built yet."""
    _built()


def _built() -> object:
    if state.broken:
        raise RuntimeError("this service worker's object could not be built")
    if not state.built:
        if factory is None:
            raise RuntimeError("this worker hosts no object (it is not a service worker)")
        try:
            state.obj = _build(factory)
        except BaseException:
            state.broken = True
            raise
        state.built = True
    return state.obj


def _build(pickled: bytes) -> object:
    how, target, args, kwargs = cast("tuple[int, object, tuple[Any, ...], dict[str, Any]]", pickle.loads(pickled))
    assert resolver is not None, "the worker runtime sets the resolver"
    function = resolver(how, target)
    obj = _finish(function(*args, **kwargs))
    if hasattr(obj, "__aenter__"):
        state.manager = obj
        entered = _finish(obj.__aenter__())
        return obj if entered is None else entered
    if hasattr(obj, "__enter__"):
        state.manager = obj
        entered = obj.__enter__()
        return obj if entered is None else entered
    return obj


def _finish(result: object) -> object:
    """A coroutine runs to completion on the object's event loop; anything else as is."""
    if not isinstance(result, types.CoroutineType):
        return result
    if state.loop is None:
        import asyncio  # only services with coroutine methods pay for asyncio

        state.loop = asyncio.new_event_loop()
    coroutine = cast("types.CoroutineType[object, object, object]", result)
    return cast("Callable[[object], object]", state.loop.run_until_complete)(coroutine)
