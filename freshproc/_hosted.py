"""The object a service worker hosts (worker side): built once, on the first request that
needs it, by the factory its service named; then every method call of the service runs on
it, until the worker ends.

The factory travels in the template's configuration (pickled by the caller), so every
worker forked for the service, a restarted one included, builds its own object: a restart
costs a fork plus the factory call. An object that is a context manager is entered after
it is built and exited by ``close``. Coroutine methods, and ``__aenter__``/``__aexit__``,
run on one event loop that lives as long as the object, so what they keep between calls
(sessions, locks, tasks) stays bound to the same loop.

With ``max_concurrency`` above 1 the caller sends the worker more channels
(``serve_channels``); each is served by a thread of its own, so plain methods run on up to
that many threads at once, and the event loop runs on a thread of its own too: coroutine
methods called from any channel interleave on it.

Stdlib only: it is part of the worker runtime.
"""

from __future__ import annotations

import _socket
import _thread
import pickle
import types

TYPE_CHECKING = False  # typing stays out of the worker runtime at run time
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from typing import Any, cast
else:

    def cast(kind: object, value: object) -> object:
        return value


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
    #: The loop runs on this thread once calls may come from several channels at once.
    loop_thread: threading.Thread | None = None
    concurrent = False


state = _State()
#: Held while the object is built (two channels may ask for it at once).
_lock = _thread.allocate_lock()
#: Held while the event loop's thread is started.
_loop_lock = _thread.allocate_lock()


def serve_channels(channels: list[_socket.socket], serve: Callable[[_socket.socket], None]) -> None:
    """Serve each of ``channels`` with ``serve`` on a thread of its own, from now on."""
    state.concurrent = True
    for channel in channels:
        import threading  # services only: every template and worker imports this module

        threading.Thread(target=_serve_then_close, args=(serve, channel), name="freshproc-channel", daemon=True).start()


def _serve_then_close(serve: Callable[[_socket.socket], None], channel: _socket.socket) -> None:
    # The channel is this thread's alone: closed here when served to its end, rather than
    # left to the garbage collector (an unclosed socket, a ResourceWarning) as the thread ends.
    try:
        serve(channel)
    finally:
        channel.close()


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
        loop, thread = state.loop, state.loop_thread
        if thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            state.loop_thread = None
        if loop is not None:
            loop.close()
            state.loop = None


def build() -> None:
    """Build the object now, if it is not built yet."""
    _built()


def _built() -> object:
    if state.built:
        return state.obj
    with _lock:
        return _build_once()


def _build_once() -> object:
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
    import asyncio  # only services with coroutine methods pay for asyncio

    coroutine = cast("types.CoroutineType[object, object, object]", result)
    if state.concurrent:
        return asyncio.run_coroutine_threadsafe(coroutine, _running_loop()).result()
    if state.loop is None:
        state.loop = asyncio.new_event_loop()
    return cast("Callable[[object], object]", state.loop.run_until_complete)(coroutine)


def _running_loop() -> Any:
    """The object's event loop, running on its own thread (started on first use)."""
    if state.loop_thread is None:
        with _loop_lock:
            if state.loop_thread is None:
                import asyncio

                if state.loop is None:
                    state.loop = asyncio.new_event_loop()
                import threading

                thread = threading.Thread(target=state.loop.run_forever, name="freshproc-loop", daemon=True)
                thread.start()
                state.loop_thread = thread
    return state.loop
