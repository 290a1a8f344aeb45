"""Pickling for the channel: the only importer of cloudpickle.

Plain data goes through the C pickler (fast); anything that must travel by value
(lambdas, closures, objects from ``__main__`` or from modules registered with
``cloudpickle.register_pickle_by_value``) falls back to cloudpickle, which stays the one
authority on by-value pickling. Protocol-5 buffers at or above ``OUT_OF_BAND_THRESHOLD``
bytes leave the pickle stream and travel as segments beside the frame (see ``_buffers``).
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Final, Literal, TypeAlias, cast

from freshproc import _buffers
from freshproc._errors import Direction, RemoteError, RemoteTraceback, SerializationError, remote_error_class
from freshproc._protocol import INLINE_LIMIT, MAX_FDS, Payload, Segment

#: Buffers at least this large travel out of band (by address, or in a memfd).
OUT_OF_BAND_THRESHOLD: Final = 256 * 1024
#: The most buffers one pickle sends out of band: a frame's descriptors also carry the
#: pickle itself and a request's two output-capture files.
MAX_OUT_OF_BAND: Final = MAX_FDS - 3

# A pickle that names __main__ refers to the caller's script, which a worker does not
# have: such objects must go by value. A false positive (user data that happens to
# contain these bytes) only costs the slower path.
_MAIN_MARKER: Final = b"__main__"

FailureKind: TypeAlias = Literal["raised", "arguments", "result"]
#: The type of a failed call's exception and its base classes, most derived first and
#: ``object`` left out, each as (module, qualified name): the caller rebuilds what it can
#: from the classes it has already imported.
Lineage: TypeAlias = tuple[tuple[str, str], ...]
#: What a worker sends back when a call fails: (kind, type name, message, traceback text,
#: the pickled exception or None, the type's lineage, the pickled (args, __dict__) or
#: None). The last one rebuilds the exception with ``cls.__new__`` when its own pickling
#: fails on either side.
Failure: TypeAlias = tuple[FailureKind, str, str, str, bytes | None, Lineage, bytes | None]
_FAILURE_FIELDS: Final = 7
#: A call's captured (stdout, stderr), when the pool captures output.
Captured: TypeAlias = tuple[bytes, bytes]


def dumps(obj: object) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; return the stream and the buffers that go out of band."""
    buffers: list[pickle.PickleBuffer] = []

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        if len(buffers) >= MAX_OUT_OF_BAND:
            return True  # a frame carries at most MAX_FDS segments; the rest go in band
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


class Outgoing:
    """A pickle laid out for a frame."""

    __slots__ = ("fds", "keepalive", "payload")

    def __init__(self, payload: Payload, fds: list[int]) -> None:
        self.payload = payload
        #: Descriptors to send with the frame; the sender closes them once it is sent.
        self.fds = fds
        #: What segments sent by address point into: keep it alive until the receiver
        #: has copied them (the reply to a request; the next request after a reply).
        self.keepalive: list[object] = []

    def close(self) -> None:
        _buffers.close_all(self.fds)
        self.fds = []


def to_wire(data: bytes, buffers: list[pickle.PickleBuffer], *, direct: bool) -> Outgoing:
    """Lay a pickle out for a frame: inline if small, large parts as segments, by address
    when ``direct`` (and the buffer is writable), else in memfds."""
    outgoing = Outgoing(Payload(data), [])
    segments: list[Segment] = []
    try:
        parts: list[bytes | memoryview] = [buffer.raw() for buffer in buffers]
        if len(data) > INLINE_LIMIT:
            outgoing.payload = Payload(None)
            parts.insert(0, data)
        for part in parts:
            address = _buffers.address_of(part) if direct else None
            size = len(part) if isinstance(part, bytes) else part.nbytes
            if address is not None:
                outgoing.keepalive.append(part)
                segments.append(Segment(size, address))
            else:
                outgoing.fds.append(_buffers.write_segment(memoryview(part)))
                segments.append(Segment(size))
    except BaseException:
        outgoing.close()
        raise
    outgoing.payload = Payload(outgoing.payload.inline, tuple(segments))
    return outgoing


def from_wire(payload: Payload, fds: list[int], sender_pid: int) -> tuple[bytes | memoryview, list[memoryview]]:
    """Map or copy a received payload's segments; closes ``fds`` whatever happens."""
    views: list[memoryview] = []
    try:
        descriptors = iter(fds)
        for segment in payload.segments:
            if segment.address is None:
                views.append(_buffers.map_segment(next(descriptors), segment.size))
            else:
                views.append(_buffers.read_remote(sender_pid, segment.address, segment.size))
    finally:
        _buffers.close_all(fds)
    if payload.inline is not None:
        return payload.inline, views
    return views[0], views[1:]


def dumps_to_wire(obj: object, direction: Direction, *, direct: bool, max_size: int | None = None) -> Outgoing:
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
    return to_wire(data, buffers, direct=direct)


def loads_received(data: bytes | memoryview, buffers: list[memoryview], direction: Direction) -> object:
    """Unpickle received bytes, raising SerializationError that names what failed."""
    try:
        return loads(data, buffers)
    except Exception as exc:
        raise SerializationError(
            f"cannot unpickle the {_describe(direction)}: {type(exc).__name__}: {exc}",
            direction=direction,
            stage="load",
        ) from exc


def loads_from_wire(payload: Payload, fds: list[int], direction: Direction, sender_pid: int) -> object:
    """Receive and unpickle a payload (see ``from_wire`` and ``loads_received``)."""
    try:
        data, buffers = from_wire(payload, fds, sender_pid)
    except (OSError, ValueError) as exc:
        raise SerializationError(
            f"cannot receive the {_describe(direction)}: {exc}", direction=direction, stage="load"
        ) from exc
    return loads_received(data, buffers, direction)


def _describe(direction: Direction) -> str:
    return "call's arguments" if direction == "arguments" else "call's result"


# -- failures ---------------------------------------------------------------------------


def failure_from_exception(exc: BaseException, kind: FailureKind = "raised") -> Failure:
    """Describe an exception raised in the worker so the parent can rebuild it.

    The traceback is formatted here and dropped from the exception; the exception itself
    is included only if it survives a pickle round trip (some custom exceptions pickle but
    cannot be rebuilt), and only for ordinary exceptions: a SystemExit or
    KeyboardInterrupt raised by a target must not end the caller. Its type's lineage and,
    when they pickle, its ``args`` and ``__dict__`` travel beside it (see ``Failure``).
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
    state = _pickled_state(exc) if kind == "raised" and isinstance(exc, Exception) else None
    if pickled is not None and state is not None and len(state) > _STATE_BESIDE_PICKLE_LIMIT:
        state = None
    return (kind, name, _safe_str(exc), text, pickled, _lineage(type(exc)), state)


def exception_from_failure(failure: Failure) -> Exception:
    """Rebuild the exception a worker described, its traceback text as ``__cause__``.

    Only from classes in modules the caller has already imported: by its own pickle, else
    from its ``args`` and ``__dict__``, else as a RemoteError that also derives from the
    nearest base classes the caller has (see ``_errors.remote_error_class``).
    """
    kind, type_name, message, text, pickled, lineage, state = failure
    cause = RemoteTraceback(f'\n"""\n{text}"""')
    exc: Exception
    if kind in ("arguments", "result"):
        stage: Literal["dump", "load"] = "load" if kind == "arguments" else "dump"
        exc = SerializationError(
            f"cannot {'unpickle' if stage == 'load' else 'pickle'} the {_describe(kind)} "
            f"in the worker: {type_name}: {message}",
            direction=kind,
            stage=stage,
        )
    else:
        exc = _rebuild_raised(type_name, message, text, pickled, lineage, state)
    exc.__cause__ = cause
    return exc


#: An exception that pickled also sends its (args, __dict__) for a caller-side fallback
#: only up to this size: a large one would otherwise travel twice.
_STATE_BESIDE_PICKLE_LIMIT: Final = 64 * 1024


def _lineage(cls: type[BaseException]) -> Lineage:
    return tuple((str(getattr(base, "__module__", "")), base.__qualname__) for base in cls.__mro__[:-1])


def _pickled_state(exc: BaseException) -> bytes | None:
    """Pickle ``(exc.args, exc.__dict__)`` apart from the class, leaving out the entries of
    ``__dict__`` that do not pickle; None if even that fails."""
    try:
        return _dumps_in_band((exc.args, vars(exc)))
    except Exception:  # noqa: BLE001, S110 - then without the attributes that fail
        pass
    picklable = {key: value for key, value in vars(exc).items() if _pickles(value)}
    try:
        return _dumps_in_band((exc.args, picklable))
    except Exception:  # noqa: BLE001 - the args themselves do not pickle
        return None


def _pickles(value: object) -> bool:
    try:
        _dumps_in_band(value)
    except Exception:  # noqa: BLE001 - any failure means no
        return False
    return True


def _dumps_in_band(obj: object) -> bytes:
    data, buffers = dumps(obj)
    if buffers:
        raise ValueError("a failure record carries no out-of-band buffers")
    return data


def _rebuild_raised(
    type_name: str, message: str, text: str, pickled: bytes | None, lineage: Lineage, state: bytes | None
) -> Exception:
    module, qualname = lineage[0] if lineage else ("", type_name)
    error: Exception | None = None  # why the last way to rebuild it failed
    if pickled is not None:
        try:
            loaded = _KnownModulesUnpickler(io.BytesIO(pickled)).load()
        except Exception as exc:  # noqa: BLE001 - then from its state
            error = exc
        else:
            if isinstance(loaded, Exception):
                return loaded
    cls = _imported_class(module, qualname)
    if state is not None and cls is not None and issubclass(cls, Exception):
        try:
            args, attributes = _KnownModulesUnpickler(io.BytesIO(state)).load()
            rebuilt = cls.__new__(cls)
            rebuilt.args = args
            rebuilt.__dict__.update(attributes)
        except Exception as exc:  # noqa: BLE001 - then it arrives as a RemoteError
            error = exc
        else:
            return rebuilt
    if ("builtins", "Exception") not in lineage:
        reason = f"{type_name} is not re-raised in the caller: only an Exception is"
    elif module not in sys.modules:
        reason = f"module {module} is not imported in the caller"
    elif cls is None:
        reason = f"{type_name} is not found in the caller"
    elif error is not None:
        reason = f"rebuilding it raised {type(error).__name__}: {_safe_str(error)}"
    else:
        reason = "it could not be pickled in the worker"
    bases = _nearest_imported_bases(lineage)
    return remote_error_class(bases)(type_name, message, text, module=module or None, reason=reason)


def _imported_class(module: str, qualname: str) -> type | None:
    """The class ``module.qualname`` if the caller has imported its module, else None.
    Looks only in ``__dict__``s: a module's ``__getattr__`` might import something."""
    found: object = sys.modules.get(module)
    for part in qualname.split("."):
        try:
            found = vars(found).get(part)
        except TypeError:  # no __dict__ (or found is None)
            return None
    return found if isinstance(found, type) else None


def _nearest_imported_bases(lineage: Lineage) -> tuple[type[Exception], ...]:
    """The classes of ``lineage`` the caller has imported, nearest first, without those a
    RemoteError already is or that another one picked derives from (only Exceptions)."""
    bases: list[type[Exception]] = []
    for module, qualname in lineage:
        cls = _imported_class(module, qualname)
        if cls is None or not issubclass(cls, Exception) or issubclass(RemoteError, cls):
            continue
        if not any(issubclass(base, cls) for base in bases):
            bases.append(cls)
    return tuple(bases)


class _KnownModulesUnpickler(pickle.Unpickler):
    """Rebuilds an exception only from modules the caller has imported already (and
    cloudpickle, for classes that travel by value): an exception defined in the target's
    module must not import that module into the caller. Otherwise it is a RemoteError."""

    def find_class(self, module: str, name: str) -> object:
        if module not in sys.modules and module.split(".")[0] != "cloudpickle":
            raise pickle.UnpicklingError(f"{module} is not imported in the caller")
        return super().find_class(module, name)


def dumps_failure(failure: Failure, captured: Captured | None) -> bytes:
    return pickle.dumps((failure, captured), protocol=5)


def loads_failure(data: bytes | memoryview) -> tuple[Failure, Captured | None]:
    value = pickle.loads(data)
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], tuple)
        and len(value[0]) == _FAILURE_FIELDS
    ):
        raise TypeError(f"malformed failure record: {type(value).__name__}")
    return cast("tuple[Failure, Captured | None]", value)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - any failing __str__
        return f"<unprintable {type(exc).__name__}>"
