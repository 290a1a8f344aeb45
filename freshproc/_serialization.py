"""Pickling for the channel: the only importer of cloudpickle.

Plain data goes through the C pickler (fast); anything that must travel by value
(lambdas, closures, objects from ``__main__`` or from modules registered with
``cloudpickle.register_pickle_by_value``) falls back to cloudpickle, which stays the one
authority on by-value pickling. Protocol-5 buffers at or above ``OUT_OF_BAND_THRESHOLD``
bytes leave the pickle stream and travel as shared-memory segments.
"""

from __future__ import annotations

import pickle
import sys
from typing import Final, Literal, TypeAlias, cast

from freshproc import _buffers
from freshproc._errors import Direction, RemoteError, RemoteTraceback, SerializationError
from freshproc._protocol import INLINE_LIMIT, Payload

#: Buffers at least this large travel out of band, as shared memory.
OUT_OF_BAND_THRESHOLD: Final = 256 * 1024

# A pickle that names __main__ refers to the caller's script, which a worker does not
# have: such objects must go by value. A false positive (user data that happens to
# contain these bytes) only costs the slower path.
_MAIN_MARKER: Final = b"__main__"

FailureKind: TypeAlias = Literal["raised", "arguments", "result"]
#: What a worker sends back when a call fails: (kind, type name, message,
#: traceback text, the pickled exception or None).
Failure: TypeAlias = tuple[FailureKind, str, str, str, bytes | None]
#: A call's captured (stdout, stderr), when the pool captures output.
Captured: TypeAlias = tuple[bytes, bytes]


def dumps(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; return the stream and the buffers that go out of band."""
    buffers: list[pickle.PickleBuffer] = []

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            size = buffer.raw().nbytes
        except BufferError:  # not contiguous: pickle it in band
            return True
        if size < OUT_OF_BAND_THRESHOLD:
            return True
        buffers.append(buffer)
        return False

    # cloudpickle loads on first need: a worker whose calls are all plain data never pays
    # for it, and nobody can have registered a module for by-value pickling before then.
    loaded = sys.modules.get("cloudpickle")
    if loaded is None or not loaded.list_registry_pickle_by_value():
        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=keep_in_band)
        except (pickle.PicklingError, AttributeError, TypeError):
            pass
        else:
            if _MAIN_MARKER not in data:
                return data, buffers
        buffers.clear()
    import cloudpickle  # loaded on first need, see above

    return cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_in_band), buffers


def loads(data: bytes | memoryview, buffers: list[memoryview]) -> object:
    return pickle.loads(data, buffers=buffers)


def to_wire(data: bytes, buffers: list[pickle.PickleBuffer]) -> tuple[Payload, list[int]]:
    """Lay a pickle out for a frame; the caller closes the returned descriptors once sent."""
    fds: list[int] = []
    sizes: list[int] = []
    try:
        inline: bytes | None = data
        if len(data) > INLINE_LIMIT:
            inline = None
            fds.append(_buffers.write_segment(memoryview(data)))
            sizes.append(len(data))
        for buffer in buffers:
            view = buffer.raw()
            fds.append(_buffers.write_segment(view))
            sizes.append(view.nbytes)
    except BaseException:
        _buffers.close_all(fds)
        raise
    return Payload(inline, tuple(sizes)), fds


def from_wire(payload: Payload, fds: list[int]) -> tuple[bytes | memoryview, list[memoryview]]:
    """Map a received payload's segments; closes ``fds`` whatever happens."""
    try:
        segments = [_buffers.map_segment(fd, size) for fd, size in zip(fds, payload.segment_sizes, strict=True)]
    finally:
        _buffers.close_all(fds)
    if payload.inline is not None:
        return payload.inline, segments
    return segments[0], segments[1:]


def dumps_to_wire(obj: object, direction: Direction, max_size: int | None = None) -> tuple[Payload, list[int]]:
    """Pickle ``obj`` for the wire, raising SerializationError that names what failed."""
    try:
        data, buffers = dumps(obj)
        if max_size is not None:
            size = len(data) + sum(buffer.raw().nbytes for buffer in buffers)
            if size > max_size:
                raise ValueError(f"it pickles to {size} bytes, over the limit of {max_size}")
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle the {_describe(direction)} ({type(obj).__qualname__}): {exc}",
            direction=direction,
            stage="dump",
        ) from exc
    return to_wire(data, buffers)


def loads_from_wire(payload: Payload, fds: list[int], direction: Direction) -> object:
    """Unpickle a payload, raising SerializationError that names what failed."""
    data, buffers = from_wire(payload, fds)
    try:
        return loads(data, buffers)
    except Exception as exc:
        raise SerializationError(
            f"cannot unpickle the {_describe(direction)}: {type(exc).__name__}: {exc}",
            direction=direction,
            stage="load",
        ) from exc


def _describe(direction: Direction) -> str:
    return "call's arguments" if direction == "arguments" else "call's result"


# -- failures ---------------------------------------------------------------------------


def failure_from_exception(exc: BaseException, kind: FailureKind = "raised") -> Failure:
    """Describe an exception raised in the worker so the parent can rebuild it.

    The traceback is formatted here and dropped from the exception; the exception itself
    is included only if it survives a pickle round trip (some custom exceptions pickle but
    cannot be rebuilt), and only for ordinary exceptions: a SystemExit or
    KeyboardInterrupt raised by a target must not end the caller.
    """
    import traceback  # loaded on the first failure: most workers never need it

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    pickled: bytes | None = None
    if kind == "raised" and isinstance(exc, Exception):
        try:
            candidate, buffers = dumps(exc)
            if not buffers:
                pickle.loads(candidate)
                pickled = candidate
        except Exception:  # noqa: BLE001 - then it travels as a RemoteError
            pickled = None
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if type(exc).__module__ == "builtins":
        name = type(exc).__qualname__
    return (kind, name, _safe_str(exc), text, pickled)


def exception_from_failure(failure: Failure) -> BaseException:
    """Rebuild the exception a worker described, its traceback text as ``__cause__``."""
    kind, type_name, message, text, pickled = failure
    cause = RemoteTraceback(f'\n"""\n{text}"""')
    exc: BaseException
    if kind in ("arguments", "result"):
        stage: Literal["dump", "load"] = "load" if kind == "arguments" else "dump"
        exc = SerializationError(
            f"cannot {'unpickle' if stage == 'load' else 'pickle'} the {_describe(kind)} "
            f"in the worker: {type_name}: {message}",
            direction=kind,
            stage=stage,
        )
    elif pickled is not None:
        try:
            loaded = pickle.loads(pickled)
        except Exception:  # noqa: BLE001 - then it arrives as a RemoteError
            loaded = None
        exc = loaded if isinstance(loaded, BaseException) else RemoteError(type_name, message, text)
    else:
        exc = RemoteError(type_name, message, text)
    exc.__cause__ = cause
    return exc


def dumps_failure(failure: Failure, captured: Captured | None) -> bytes:
    return pickle.dumps((failure, captured), protocol=5)


def loads_failure(data: bytes | memoryview) -> tuple[Failure, Captured | None]:
    value = pickle.loads(data)
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple) and len(value[0]) == 5):
        raise TypeError(f"malformed failure record: {type(value).__name__}")
    return cast("tuple[Failure, Captured | None]", value)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - any failing __str__
        return f"<unprintable {type(exc).__name__}>"
