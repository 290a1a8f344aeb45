"""The far end of a relayed call (worker side): run a request that was pickled elsewhere.

``freshproc.dask`` pickles a call once, in the caller, with freshproc's own pickler (so
functions that must travel by value do). A Dask worker hands those bytes, unopened, to
the freshproc pool it holds, as the arguments of ``run`` here (called by name); this
module unpickles them in the freshproc worker, runs the target, and pickles the result
there too. So the Dask worker process never unpickles the user's objects, and never
imports the target's modules: only its freshproc worker does, as in a local pool.

A call that fails raises ``RelayedFailure``, carrying the failure record (the same one
a local call's ``CallFailure`` carries) for the caller to rebuild the exception from.
Services host a ``Relayed`` wrapper of their object, whose ``RELAY_METHOD`` does the same
for method calls.

Stdlib only (with the worker runtime): it is loaded into freshproc workers.
"""

from __future__ import annotations

import pickle
import types
from typing import Any, cast

from freshproc import _serialization, _worker

#: The method of a hosted ``Relayed`` object that runs a pickled method call.
RELAY_METHOD = "__freshproc_relay__"

#: A pickled call or result: the pickle stream and its out-of-band buffers.
Pickled = tuple[bytes, list[pickle.PickleBuffer]]


class RelayedFailure(Exception):
    """A relayed call failed: ``record`` is the pickled failure record (see
    ``_serialization.dumps_failure``), rebuilt into the exception by the caller."""

    def __init__(self, record: bytes) -> None:
        super().__init__("a relayed call failed")
        self.record = record

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.record,))


class RelayedMemoryError(RelayedFailure, MemoryError):
    """A relayed call raised MemoryError: a MemoryError still, so its worker is replaced."""


def run(data: bytes | memoryview, buffers: list[memoryview]) -> Pickled:
    """Unpickle ``(how, target, args, kwargs, async_library)``, run it as a worker runs a
    request, and return its result pickled; a failure raises ``RelayedFailure``."""
    try:
        how, target, args, kwargs, async_library = cast(
            "tuple[int, object, tuple[Any, ...], dict[str, Any], str]", _serialization.loads(data, buffers)
        )
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raised goes back to the caller
        raise _failure(exc, "arguments") from None
    try:
        result = _worker._call(_worker.resolve(how, target), args, kwargs, async_library)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
        raise _failure(exc) from None
    return pickled_result(result)


def pickled_result(result: object) -> Pickled:
    """``result`` pickled (its large buffers out of band, as ``PickleBuffer``s that the
    worker's own pickle sends out of band again); a failure raises ``RelayedFailure``."""
    try:
        data, buffers = _serialization.dumps(result)
    except BaseException as exc:  # noqa: BLE001 - a __reduce__ may raise anything
        record = _worker._result_failure(result, exc, _worker.settings.max_result_size)
        raise RelayedFailure(_serialization.dumps_failure(record, None)) from None
    return data, buffers


def host(data: bytes | memoryview, buffers: list[memoryview]) -> object:
    """A service's factory: unpickle ``(how, target, args, kwargs)``, build the object, and
    wrap it in ``Relayed`` (a coroutine factory's object once awaited)."""
    try:
        how, target, args, kwargs = cast(
            "tuple[int, object, tuple[Any, ...], dict[str, Any]]", _serialization.loads(data, buffers)
        )
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raised goes back to the caller
        raise _failure(exc, "arguments") from None
    try:
        obj = _worker.resolve(how, target)(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - goes back to the caller
        raise _failure(exc) from None
    if isinstance(obj, types.CoroutineType):
        return _wrap_awaited(cast("types.CoroutineType[object, object, object]", obj))
    return wrap(obj)


async def _wrap_awaited(coroutine: types.CoroutineType[object, object, object]) -> object:
    try:
        obj = await coroutine
    except BaseException as exc:  # noqa: BLE001 - goes back to the caller
        raise _failure(exc) from None
    return wrap(obj)


class Relayed:
    """A hosted object behind its relay: ``RELAY_METHOD`` runs pickled method calls; any
    other attribute (a health method called by name) is the object's own."""

    def __init__(self, target: object) -> None:
        self._relayed_target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._relayed_target, name)

    def __freshproc_relay__(self, data: bytes | memoryview, buffers: list[memoryview]) -> object:
        try:
            name, args, kwargs = cast(
                "tuple[str, tuple[Any, ...], dict[str, Any]]", _serialization.loads(data, buffers)
            )
        except Exception as exc:  # noqa: BLE001 - whatever unpickling raised goes back to the caller
            raise _failure(exc, "arguments") from None
        target = self._relayed_target
        try:
            method = getattr(target, name)
            if not callable(method):
                raise TypeError(
                    f"{type(target).__qualname__}.{name} is not a method (it is a {type(method).__qualname__})"
                )
            result = method(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - goes back to the caller
            raise _failure(exc) from None
        if isinstance(result, types.CoroutineType):
            return _pickled_awaited(cast("types.CoroutineType[object, object, object]", result))
        return pickled_result(result)


async def _pickled_awaited(coroutine: types.CoroutineType[object, object, object]) -> Pickled:
    try:
        result = await coroutine
    except BaseException as exc:  # noqa: BLE001 - goes back to the caller
        raise _failure(exc) from None
    return pickled_result(result)


class _RelayedAsyncManager(Relayed):
    async def __aenter__(self) -> Relayed:
        entered = await self._relayed_target.__aenter__()  # type: ignore[attr-defined]
        return Relayed(self._relayed_target if entered is None else entered)

    async def __aexit__(self, *exc_info: object) -> object:
        return await self._relayed_target.__aexit__(*exc_info)  # type: ignore[attr-defined]


class _RelayedManager(Relayed):
    def __enter__(self) -> Relayed:
        entered = self._relayed_target.__enter__()  # type: ignore[attr-defined]
        return Relayed(self._relayed_target if entered is None else entered)

    def __exit__(self, *exc_info: object) -> object:
        return self._relayed_target.__exit__(*exc_info)  # type: ignore[attr-defined]


def wrap(obj: object) -> Relayed:
    """``obj`` behind a relay with the lifecycle the service would give the object itself:
    entered and exited as a context manager (the entered object is relayed in turn), or
    closed (``close`` is the object's own, through ``__getattr__``)."""
    if hasattr(obj, "__aenter__"):
        return _RelayedAsyncManager(obj)
    if hasattr(obj, "__enter__"):
        return _RelayedManager(obj)
    return Relayed(obj)


def _failure(exc: BaseException, kind: _serialization.FailureKind = "raised") -> RelayedFailure:
    """The ``RelayedFailure`` that carries ``exc`` to the caller."""
    failure = _serialization.failure_from_exception(exc, kind, max_bytes=_worker.settings.max_result_size)
    record = _serialization.dumps_failure(failure, None)
    return RelayedMemoryError(record) if isinstance(exc, MemoryError) else RelayedFailure(record)
