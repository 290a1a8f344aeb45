"""Pickling for the channel: the only importer of cloudpickle.

Plain data goes through the C pickler (fast); anything that must travel by value
(lambdas, closures, objects from ``__main__`` or from modules registered with
``cloudpickle.register_pickle_by_value``) falls back to cloudpickle, which stays the one
authority on by-value pickling. Protocol-5 buffers at or above ``OUT_OF_BAND_THRESHOLD``
bytes leave the pickle stream and travel as segments beside the frame (see ``_buffers``).

A receiver trusts no size its peer names: ``from_wire`` checks every segment against the
limit the receiver allows before it maps or copies a byte.
"""

from __future__ import annotations

import _thread
import copyreg
import io
import pickle
import sys
import types

from freshproc import _buffers
from freshproc._errors import (
    FreshprocError,
    ProtocolError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    remote_error_class,
)
from freshproc._protocol import INLINE_LIMIT, MAX_FDS, Payload, Segment

# Every template imports this before its first fork: typing stays out of it at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, Literal, Protocol, TypeAlias, cast

    from freshproc._errors import Direction
else:

    def cast(kind: object, value: object) -> object:
        return value


#: Buffers at least this large travel out of band (by address, or in a memfd).
OUT_OF_BAND_THRESHOLD: Final = 256 * 1024
#: The most buffers one pickle sends out of band: a frame's descriptors also carry the
#: pickle itself and a request's two output-capture files.
MAX_OUT_OF_BAND: Final = MAX_FDS - 3
#: Without ``max_result_size``, how large a failure record (message, traceback text and
#: pickled exception together) may grow before its parts are truncated.
DEFAULT_FAILURE_LIMIT: Final = 16 << 20
#: No buffer is this large (a 48-bit address space): a bigger size is a malformed frame.
MAX_SEGMENT_SIZE: Final = 1 << 48
#: How many bytes a sender may name by address beyond its resident memory (see from_wire).
RESIDENT_MARGIN: Final = 64 << 20

# A pickle that names __main__ refers to the caller's script, which a worker does not
# have: such objects must go by value. A false positive (user data that happens to
# contain these bytes) only costs the slower path.
_MAIN_MARKER: Final = b"__main__"
# Room a reply needs beyond its payloads: tuples, flags, an exception's type name (cut to
# _NAME_LIMIT), the _TEXT_FLOOR of its message and traceback, and the truncation markers.
_RECORD_OVERHEAD: Final = 8 * 1024
_NAME_LIMIT: Final = 1024
# However small the limit, a failure's message and traceback keep this much.
_TEXT_FLOOR: Final = 2048
_ADDRESS_END: Final = 1 << 64

_FAILURE_FIELDS: Final = 7  # the length of a Failure

if TYPE_CHECKING:
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
    #: A call's captured (stdout, stderr), when the pool captures output.
    Captured: TypeAlias = tuple[bytes, bytes]

    class _CloudPickle(Protocol):
        """The part of cloudpickle (untyped) used here."""

        Pickler: type[pickle.Pickler]

        def list_registry_pickle_by_value(self) -> set[str]: ...


# cloudpickle loads on first need: a worker whose calls are all plain data never pays for
# it, and nobody can have registered a module for by-value pickling before then. It is
# published here only once whole: a thread that peeked at sys.modules while another was
# importing it would see a partly initialized module.
_cloudpickle: _CloudPickle | None = None
_fallback_pickler: type[pickle.Pickler] | None = None
_import_lock = _thread.allocate_lock()


def load_cloudpickle() -> _CloudPickle:
    """Import cloudpickle, once, under a lock (the import itself waits for another
    thread's import in progress); build the fallback pickler on it. A template warming
    up for its workers calls this rather than importing cloudpickle itself."""
    global _cloudpickle, _fallback_pickler
    with _import_lock:
        module = _cloudpickle
        if module is None:
            import cloudpickle

            _fallback_pickler = _make_fallback_pickler(cloudpickle)
            module = _cloudpickle = cloudpickle
    return module


def dumps(
    obj: object, *, out_of_band: bool = True, cross_version: str | None = None
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle ``obj``; return the stream and the buffers that go out of band (none when
    ``out_of_band`` is false: then every buffer is in the stream).

    ``cross_version``: the Python version of a receiver that is not the caller's minor
    version: anything that would need pickling by value raises ``by_value_refused``."""
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

    callback = keep_in_band if out_of_band else None
    if cross_version is not None:
        return _dumps_by_reference(obj, callback, buffers, cross_version)
    loaded = _cloudpickle
    if loaded is None and "cloudpickle" in sys.modules:
        loaded = load_cloudpickle()  # imported by someone else (maybe still importing)
    if loaded is None or not loaded.list_registry_pickle_by_value():
        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=callback)
        except (pickle.PicklingError, AttributeError, TypeError):
            pass
        else:
            if _MAIN_MARKER not in data:
                return data, buffers
        buffers.clear()
    load_cloudpickle()
    assert _fallback_pickler is not None  # built with the module
    with io.BytesIO() as file:
        _fallback_pickler(file, protocol=5, buffer_callback=callback).dump(obj)
        return file.getvalue(), buffers


class _NeedsByValue(Exception):
    pass


class _RefusingMain(pickle.Pickler):
    """Pickles by reference only, refusing functions and classes of ``__main__`` (which a
    plain pickle names by reference, and which no worker can import)."""

    def reducer_override(self, obj: object) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and getattr(obj, "__module__", None) == "__main__":
            raise _NeedsByValue
        return NotImplemented


def _dumps_by_reference(
    obj: object,
    callback: Callable[[pickle.PickleBuffer], bool] | None,
    buffers: list[pickle.PickleBuffer],
    version: str,
) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """``dumps`` for a receiver on another Python version: never by value."""
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=callback)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        # By value, or not at all? Only the refusal is ours to explain.
        buffers.clear()
        load_cloudpickle()
        assert _fallback_pickler is not None
        with io.BytesIO() as file:
            _fallback_pickler(file, protocol=5).dump(obj)  # raises if nothing can pickle it
        raise by_value_refused(version) from exc
    if _MAIN_MARKER not in data:
        return data, buffers
    buffers.clear()
    with io.BytesIO() as file:
        try:
            _RefusingMain(file, protocol=5, buffer_callback=callback).dump(obj)
        except _NeedsByValue:
            raise by_value_refused(version) from None
        return file.getvalue(), buffers


def by_value_refused(version: str) -> FreshprocError:
    """Why a value that must be pickled by value cannot go to a worker on Python ``version``."""
    caller = ".".join(map(str, sys.version_info[:3]))
    return FreshprocError(
        f"this call would ship code by value (a lambda, a closure, a function or class from __main__, "
        f"or one that cannot be imported by name), but the workers run Python {version} and the caller "
        f"Python {caller}: bytecode does not cross Python versions. Call by name instead: put the "
        "function in a module the workers can import (on their sys.path, or Pool(sys_path=[...])) and "
        "pass it to run(), or use call(module, name, ...); plain data travels fine"
    )


def _make_fallback_pickler(cloudpickle: _CloudPickle) -> type[pickle.Pickler]:
    """cloudpickle's pickler, refusing open files.

    cloudpickle's own file reducer reads a text file whole and sends an ``io.StringIO`` in
    its place: a silent copy, not the file. Files (``io.IOBase`` instances) are refused
    instead, unless their type pickles itself (``io.BytesIO``, say) or the user registered
    a reducer for it in ``copyreg.dispatch_table``, which is then used (cloudpickle's own
    table would otherwise take precedence over it).
    """
    base = cloudpickle.Pickler

    def reducer_override(self: pickle.Pickler, obj: object) -> object:
        if isinstance(obj, io.IOBase):
            registered = copyreg.dispatch_table.get(type(obj))
            if registered is not None:
                return registered(obj)
            if _is_open_file(type(obj)):
                raise pickle.PicklingError(_refuse_file(obj))
        return base.reducer_override(self, obj)

    return cast("type[pickle.Pickler]", type("FallbackPickler", (base,), {"reducer_override": reducer_override}))


# In-memory streams pickle their contents by design: they are values, not open files.
_IN_MEMORY_STREAMS: Final = (io.BytesIO, io.StringIO)
_IO_MODULES: Final = frozenset({"io", "_io", "_pyio", "builtins"})


def _is_open_file(cls: type) -> bool:
    """Whether ``cls`` (an ``io.IOBase`` type) lacks a pickling of its own, so that only
    a file reducer would send it."""
    if issubclass(cls, _IN_MEMORY_STREAMS):
        return False
    return not any(
        name in vars(klass)
        for klass in cls.__mro__
        if klass.__module__ not in _IO_MODULES
        for name in ("__reduce__", "__reduce_ex__", "__getstate__")
    )


def _refuse_file(obj: object) -> str:
    kind = type(obj).__qualname__
    name = getattr(obj, "name", None)
    what = f"{name!r} ({kind})" if name is not None else f"an unnamed {kind}"
    return (
        f"cannot send an open file, {what}: send its path or its contents instead, "
        f"or register a reducer for {kind} in copyreg.dispatch_table"
    )


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
    if not buffers and len(data) <= INLINE_LIMIT:  # most calls and replies
        return Outgoing(Payload(data, ()), [])
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


def from_wire(
    payload: Payload, fds: list[int], sender_pid: int, *, max_bytes: int | None = None, resident_bound: bool = True
) -> tuple[bytes | memoryview, list[memoryview]]:
    """Map or copy a received payload's segments; closes ``fds`` whatever happens.

    No size the sender names is trusted: before anything is mapped or copied, every
    segment must have a size a buffer can have, and all of them with the inline pickle
    must fit ``max_bytes`` (see ``reply_limit``). Without ``max_bytes``, segments named by
    address must fit the sender's resident (and swapped-out) memory plus
    ``RESIDENT_MARGIN``: a sender cannot have more than that to share, while a sparse
    mapping could name gigabytes it never touched and make the receiver allocate them. A
    file mapping the sender never read is the one honest case this refuses; the margin
    lets such results through up to 64 MiB. The worker passes ``resident_bound=False``
    for its owner, the process it serves. Memfd segments must be sealed, exactly sized
    and fully written (``_buffers.map_segment``).

    :raises ProtocolError: a size is malformed or over the limit, or a memfd is unsealed
        or wrongly sized: the sender is broken or hostile.
    :raises OSError: a segment could not be mapped or copied.
    """
    inline = payload.inline
    if inline is not None and not payload.segments and not fds:  # a small call: nothing else to check
        if max_bytes is not None and len(inline) > max_bytes:
            raise ProtocolError(
                f"process {sender_pid} sent {len(inline)} bytes, over the {max_bytes} bytes its limit allows"
            )
        return inline, []
    views: list[memoryview] = []
    try:
        _check_sizes(payload, len(fds), sender_pid, max_bytes, resident_bound=resident_bound)
        descriptors = iter(fds)
        for segment in payload.segments:
            if segment.address is None:
                try:
                    views.append(_buffers.map_segment(next(descriptors), segment.size))
                except ProtocolError as exc:
                    raise ProtocolError(f"process {sender_pid} sent a bad segment: {exc}") from None
            else:
                views.append(_buffers.read_remote(sender_pid, segment.address, segment.size))
    finally:
        _buffers.close_all(fds)
    if inline is not None:
        return inline, views
    return views[0], views[1:]


def _check_sizes(
    payload: Payload, fd_count: int, sender_pid: int, max_bytes: int | None, *, resident_bound: bool
) -> None:
    total = len(payload.inline) if payload.inline is not None else 0
    by_address = 0
    descriptors = 0
    for segment in payload.segments:
        size, address = segment.size, segment.address
        if not 0 <= size <= MAX_SEGMENT_SIZE:
            raise ProtocolError(f"process {sender_pid} sent a segment of {size} bytes, not a size a buffer can have")
        total += size
        if address is None:
            descriptors += 1
        elif size == 0 or not 0 < address < _ADDRESS_END - size:
            raise ProtocolError(f"process {sender_pid} sent a segment of {size} bytes at {address:#x}: not a buffer")
        else:
            by_address += size
    if descriptors != fd_count:
        raise ProtocolError(f"process {sender_pid} sent {fd_count} descriptors for {descriptors} memfd segments")
    if max_bytes is not None:
        if total > max_bytes:
            raise ProtocolError(f"process {sender_pid} sent {total} bytes, over the {max_bytes} bytes its limit allows")
    elif resident_bound and by_address > RESIDENT_MARGIN:
        resident = _buffers.resident_bytes(sender_pid)
        if resident is not None and by_address > resident + RESIDENT_MARGIN:
            raise ProtocolError(
                f"process {sender_pid} named {by_address} bytes of its memory to copy, more than it holds "
                f"({resident} bytes resident or swapped out)"
            )


def reply_limit(max_result_size: int | None, calls: int = 1) -> int | None:
    """The most bytes a reply may hold, inline pickle and segments together, for a
    request of ``calls`` calls (a ``map`` batch carries several) when each result is
    limited to ``max_result_size``; None without a limit.

    A worker keeps each call's result, and each failure record, within the limit, and the
    captured output of the request too (``_worker``): the allowance is one limit per call
    and one for the output, each with room for framing. Pass it to ``from_wire``.
    """
    if max_result_size is None:
        return None
    part = max_result_size + max_result_size // 64 + _RECORD_OVERHEAD
    return (max(calls, 1) + 1) * part


def dumps_to_wire(
    obj: object, direction: Direction, *, direct: bool, max_size: int | None = None, cross_version: str | None = None
) -> Outgoing:
    """Pickle ``obj`` for the wire, raising SerializationError that names what failed
    (or, for a receiver on another Python version, ``by_value_refused``)."""
    try:
        data, buffers = dumps(obj, cross_version=cross_version)
        if max_size is not None and (problem := size_error(data, buffers, max_size)) is not None:
            raise problem
    except FreshprocError as exc:
        if isinstance(exc, SerializationError):
            raise SerializationError(
                f"cannot pickle the {_describe(direction)} ({type(obj).__qualname__}): {exc}",
                direction=direction,
                stage="dump",
            ) from exc
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle the {_describe(direction)} ({type(obj).__qualname__}): {exc}",
            direction=direction,
            stage="dump",
        ) from exc
    return to_wire(data, buffers, direct=direct)


def size_error(data: bytes, buffers: list[pickle.PickleBuffer], max_size: int) -> ValueError | None:
    """The error to report if a pickle (stream and out-of-band buffers) exceeds ``max_size``."""
    size = len(data) + sum(buffer.raw().nbytes for buffer in buffers)
    if size > max_size:
        return ValueError(f"it pickles to {size} bytes, over the limit of {max_size}")
    return None


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


def loads_from_wire(
    payload: Payload,
    fds: list[int],
    direction: Direction,
    sender_pid: int,
    *,
    max_bytes: int | None = None,
    resident_bound: bool = True,
) -> object:
    """Receive and unpickle a payload (see ``from_wire`` and ``loads_received``); a
    ProtocolError from ``from_wire`` propagates."""
    try:
        data, buffers = from_wire(payload, fds, sender_pid, max_bytes=max_bytes, resident_bound=resident_bound)
    except (OSError, ValueError) as exc:
        raise SerializationError(
            f"cannot receive the {_describe(direction)}: {exc}", direction=direction, stage="load"
        ) from exc
    return loads_received(data, buffers, direction)


def _describe(direction: Direction) -> str:
    return "call's arguments" if direction == "arguments" else "call's result"


# -- failures ---------------------------------------------------------------------------


def failure_from_exception(
    exc: BaseException, kind: FailureKind = "raised", *, max_bytes: int | None = None
) -> Failure:
    """Describe an exception raised in the worker so the parent can rebuild it.

    The traceback is formatted here and dropped from the exception; the exception itself
    is included only if it survives a pickle round trip (some custom exceptions pickle but
    cannot be rebuilt), and only for ordinary exceptions: a SystemExit or
    KeyboardInterrupt raised by a target must not end the caller. Its type's lineage and,
    when they pickle, its ``args`` and ``__dict__`` travel beside it (see ``Failure``).

    The record stays within ``max_bytes`` (the pool's ``max_result_size``, else
    ``DEFAULT_FAILURE_LIMIT``) give or take a few markers: the pickled exception (every
    buffer in band) may take half, else it is left out (its args and ``__dict__`` too); the
    message and the traceback text a quarter each (2 KiB at least), else they are cut,
    saying how much went.
    """
    import traceback  # loaded on the first failure: most workers never need it

    budget = DEFAULT_FAILURE_LIMIT if max_bytes is None else max_bytes
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None
    message = _safe_str(exc)
    pickled: bytes | None = None
    if kind == "raised" and isinstance(exc, Exception):
        pickled = _pickle_exception(exc, budget // 2)
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if type(exc).__module__ == "builtins":
        name = type(exc).__qualname__
    state = _pickled_state(exc) if kind == "raised" and isinstance(exc, Exception) else None
    if state is not None and (
        len(state) > budget // 2 or (pickled is not None and len(state) > _STATE_BESIDE_PICKLE_LIMIT)
    ):
        state = None
    return (
        kind,
        bounded_text(name, _NAME_LIMIT),
        bounded_text(message, max(budget // 4, _TEXT_FLOOR)),
        bounded_text(text, max(budget // 4, _TEXT_FLOOR), keep_end=True),
        pickled,
        _lineage(type(exc)),
        state,
    )


def _pickle_exception(exc: Exception, max_bytes: int) -> bytes | None:
    """``exc`` pickled with every buffer in band, if that fits ``max_bytes`` and it can
    be rebuilt; else None (it then travels as a RemoteError)."""
    try:
        candidate, _ = dumps(exc, out_of_band=False)
        if len(candidate) > max_bytes:
            return None
        pickle.loads(candidate)
    except BaseException:  # noqa: BLE001 - its __reduce__ or __init__ may raise anything, SystemExit included
        return None
    return candidate


def bounded_text(text: str, max_bytes: int, *, keep_end: bool = False) -> str:
    """``text`` if its UTF-8 form fits ``max_bytes``, else cut to that (its start, or its
    start and end when ``keep_end``) with a marker saying how much was cut."""
    if len(text) * 4 <= max_bytes:  # fits even at four bytes a character
        return text
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    marker = truncation_marker(len(encoded) - max_bytes)
    if not keep_end:
        return encoded[:max_bytes].decode("utf-8", "ignore") + marker
    head = max_bytes // 2
    start = encoded[:head].decode("utf-8", "ignore")
    end = encoded[len(encoded) - (max_bytes - head) :].decode("utf-8", "ignore")
    return f"{start}\n{marker}\n{end}"


def truncation_marker(omitted: int) -> str:
    """``... [truncated 39.0 MiB]``: the mark left where ``omitted`` bytes were cut."""
    size = float(omitted)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            amount = f"{omitted} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
            return f"... [truncated {amount}]"
        size /= 1024
    raise AssertionError("unreachable")


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
    # BaseException: a __reduce__ may raise anything, SystemExit included.
    try:
        return _dumps_in_band((exc.args, vars(exc)))
    except BaseException:  # noqa: BLE001, S110 - then without the attributes that fail
        pass
    picklable = {key: value for key, value in vars(exc).items() if _pickles(value)}
    try:
        return _dumps_in_band((exc.args, picklable))
    except BaseException:  # noqa: BLE001 - the args themselves do not pickle
        return None


def _pickles(value: object) -> bool:
    try:
        _dumps_in_band(value)
    except BaseException:  # noqa: BLE001 - any failure means no
        return False
    return True


def _dumps_in_band(obj: object) -> bytes:
    data, _ = dumps(obj, out_of_band=False)
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
