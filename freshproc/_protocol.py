"""The wire protocol: one immutable class per message kind, and frame encode/decode.

No I/O happens here. A frame is a fixed header followed by a body::

    magic b"FP" | version (u8) | kind (u8) | body length (u32) | body

Messages are tuples with named fields, declared as ``typing.NamedTuple`` classes for the
type checker but built at run time by ``_MessageType``: the worker runtime is imported by
every template before its first fork, and NamedTuple costs about 0.15 ms a class (the
dataclasses module alone costs more than the whole protocol), this about 0.02 ms. Being
tuples, messages of two kinds with equal fields compare equal; nothing compares messages of
different kinds.

Frames travel as single SOCK_SEQPACKET records, so a record is always one whole frame;
the length field still guards against truncation. Large pickles and protocol-5 buffers do
not travel in frames at all: each is a ``Segment``, either a memfd descriptor riding along
(SCM_RIGHTS) or an address in the sender's memory that the receiver copies from directly.
"""

from __future__ import annotations

import struct
from _collections import _tuplegetter  # type: ignore[import-not-found,unused-ignore]  # namedtuple's field getter

from freshproc._errors import ProtocolError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Final, TypeAlias
    from typing import NamedTuple as _Message

MAGIC: Final = b"FP"
VERSION: Final = 1
HEADER: Final = struct.Struct("!2sBBI")
#: The largest pickle kept inline in a frame; anything larger goes out of band.
INLINE_LIMIT: Final = 64 * 1024
#: The largest frame either side accepts (inline payload plus a generous margin).
MAX_FRAME: Final = INLINE_LIMIT + 64 * 1024
#: The most descriptors one frame may carry.
MAX_FDS: Final = 64

_CALL = struct.Struct("!QBH")  # call id, flags, count of out-of-band segments
_CALL_FRAME = struct.Struct("!2sBBIQBH")  # HEADER then _CALL: a call frame's fixed start
_SEGMENT = struct.Struct("!BQQ")  # kind, size, address
_PID = struct.Struct("!i")
_READY = struct.Struct("!iB")  # pid, direct copy works
_EXIT = struct.Struct("!iii")  # pid, exit code (or -1), signal (or 0)
_TERMINATE = struct.Struct("!id")  # pid, grace seconds
_COUNT = struct.Struct("!I")
_CALL_ID = struct.Struct("!Q")
_STARTED = struct.Struct("!q")

_FLAG_INLINE = 1
_FLAG_RECYCLE = 2  # replies only
_FLAG_CAPTURE = 4  # requests only
_FLAG_PIPELINED = 8  # requests only
_KNOWN_FLAGS = _FLAG_INLINE | _FLAG_RECYCLE | _FLAG_CAPTURE | _FLAG_PIPELINED
_REQUEST_FLAGS = _FLAG_CAPTURE | _FLAG_PIPELINED


class _Fields(tuple):  # type: ignore[type-arg]  # each message class has its own fields
    """What every message class has: shown, compared and pickled as ``typing.NamedTuple``'s
    are (``_MessageType`` gives each its constructor)."""

    __slots__ = ()
    _fields: tuple[str, ...]
    _field_defaults: dict[str, Any]

    def __repr__(self) -> str:
        shown = ", ".join(f"{field}={value!r}" for field, value in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({shown})"

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickle passes the fields to __new__
        return tuple(self)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def _replace(self, **changes: Any) -> _Fields:
        return type(self)(**{**self._asdict(), **changes})


class _MessageType(type):
    """Builds a message class from its annotated fields and their defaults, as
    ``typing.NamedTuple`` does: a ``_Fields`` tuple with one read-only property per field
    (namedtuple's own getter) and ``__match_args__`` for pattern matching.

    Like NamedTuple's metaclass, it hands back a class whose type is plain ``type``:
    ``isinstance`` against a class with a metaclass of its own takes CPython's slow path
    (an ``__instancecheck__`` lookup), and every frame received is matched against message
    classes several times (measured: encode and decode each 1.6x slower that way)."""

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
        fields = tuple(namespace.get("__annotations__", {}))
        defaults = {field: namespace.pop(field) for field in fields if field in namespace}
        for index, field in enumerate(fields):
            namespace[field] = _tuplegetter(index, f"Alias for field number {index}")
        namespace.update(__slots__=(), __match_args__=fields, _fields=fields, _field_defaults=defaults)
        namespace["__new__"] = _positional_new(fields, tuple(defaults.values()))
        return type.__new__(type, name, (_Fields,), namespace)


def _positional_new(fields: tuple[str, ...], defaults: tuple[Any, ...]) -> Callable[..., Any]:
    """A message class's constructor, compiled as namedtuple compiles its own: a message
    is made for every frame sent and received, and named parameters are the fastest way
    in (a generic ``*args`` one cost a warm call about 3 % more caller instructions). Its
    source is built from the class's own field names only."""
    parameters = ", ".join(fields)
    tuple_of = f"({parameters},)" if fields else "()"
    new: Callable[..., Any] = eval(f"lambda _cls, {parameters}: _tuple_new(_cls, {tuple_of})", _NEW_GLOBALS)
    new.__defaults__ = defaults or None
    new.__name__ = "__new__"
    return new


_NEW_GLOBALS = {"_tuple_new": tuple.__new__, "__builtins__": {}}


if not TYPE_CHECKING:
    # What message classes derive from in their source: creating one runs _MessageType.
    _Message = type.__new__(_MessageType, "_Message", (), {})


class Segment(_Message):
    """Bytes that travel beside a frame: in the next descriptor that goes with it
    (``address`` None), or at ``address`` in the sender's memory, which the sender keeps
    alive until the receiver has copied them."""

    size: int
    address: int | None = None


_KIND_DESCRIPTOR = 0
_KIND_ADDRESS = 1


class Payload(_Message):
    """Pickled bytes: ``inline`` if they fit in the frame, else the first segment; then one
    segment per out-of-band buffer, in order."""

    inline: bytes | None
    segments: tuple[Segment, ...] = ()


# Parent -> worker
class CallRequest(_Message):
    call_id: int
    payload: Payload
    #: Two more descriptors follow the segments' ones: files the worker sends the call's
    #: stdout and stderr to (the caller reads them, even if the worker dies).
    capture: bool = False
    #: More requests may be queued behind this one (pipelined dispatch): the worker reads
    #: ahead what is on its channel before it starts it and before it replies.
    pipelined: bool = False


class Shutdown(_Message):
    """Parent -> template: end every worker and exit. (A worker that gets one exits.)"""


class SegmentsCopied(_Message):
    """Parent -> worker: the oldest reply still holding by-address segments is copied; the
    worker may let go of what they point into."""


class CancelQueued(_Message):
    """Parent -> worker: the call ``call_id``, sent while another ran, was given up. If the
    worker has not started it, it never will (it answers ``CallSkipped``)."""

    call_id: int


class OpenChannels(_Message):
    """Parent -> service worker: ``number`` more channels (their worker ends are the
    descriptors that go with the frame), each served on a thread of its own, so that
    several calls run at once (a service's ``max_concurrency``)."""

    number: int


# Worker -> parent
class CallResult(_Message):
    call_id: int
    payload: Payload
    #: The worker asks to be replaced before its next call (after a MemoryError, say).
    recycle: bool = False


class FilesLoaded(_Message):
    """Worker -> parent, just before a reply (template -> parent, just before
    ``TemplateReady``): files that its new modules and shared objects came from, for hot
    reload. ``started_ns`` is the coarse wall clock (the one file timestamps use) when the
    call (or the template) started: a file changed since then may have been loaded in
    its old version. Sent only by pools with reload on, only when something new loaded."""

    started_ns: int
    files: tuple[str, ...]


class CallFailure(_Message):
    """The call raised, or its arguments or result could not be (un)pickled. The payload
    is a pickled ``serialization.Failure``."""

    call_id: int
    payload: Payload
    recycle: bool = False


class CallSkipped(_Message):
    """Worker -> parent: the queued call ``call_id`` was cancelled before it started, and
    never ran. May come ahead of the reply of the call running before it."""

    call_id: int


# Parent -> template
class SpawnWorkers(_Message):
    number: int


class TerminateWorker(_Message):
    """SIGTERM the worker's process group, SIGKILL it after ``grace_seconds``."""

    pid: int
    grace_seconds: float


# Template -> parent
class TemplateReady(_Message):
    pid: int
    #: The template could read the parent's memory: segments may travel by address.
    direct_copy: bool = False
    #: What the template says of itself (its Python version, the caller's, its sys.path...):
    #: a Python literal, read with ``ast.literal_eval`` (see ``_foreign.facts``).
    facts: str = ""


class TemplateFailed(_Message):
    """The template could not start; ``details`` is its traceback."""

    details: str


class WorkerSpawned(_Message):
    """A worker was forked; its channel is the one descriptor that goes with the frame."""

    pid: int


class WorkerExited(_Message):
    pid: int
    exitcode: int | None
    signal: int | None


class SpawnFailed(_Message):
    """The template could not start ``number`` of the workers it was asked for (``fork``
    failed: a process limit, memory); it carries on. ``reason`` is the error's text."""

    number: int
    reason: str


Message: TypeAlias = (
    CallRequest
    | CallResult
    | CallFailure
    | Shutdown
    | SpawnWorkers
    | TerminateWorker
    | TemplateReady
    | TemplateFailed
    | WorkerSpawned
    | WorkerExited
    | SegmentsCopied
    | SpawnFailed
    | CancelQueued
    | CallSkipped
    | FilesLoaded
    | OpenChannels
)

_KIND_OF: Final[dict[type[Message], int]] = {
    CallRequest: 1,
    CallResult: 2,
    CallFailure: 3,
    Shutdown: 4,
    SpawnWorkers: 5,
    TerminateWorker: 6,
    TemplateReady: 7,
    TemplateFailed: 8,
    WorkerSpawned: 9,
    WorkerExited: 10,
    SegmentsCopied: 11,
    SpawnFailed: 12,
    FilesLoaded: 13,
    OpenChannels: 14,
    CancelQueued: 15,
    CallSkipped: 16,
}


def fd_count(message: Message) -> int:
    """How many descriptors must accompany ``message`` on the wire."""
    kind = type(message)
    if kind is CallResult or kind is CallFailure or kind is CallRequest:  # every call's frames
        payload = message.payload  # type: ignore[union-attr]
        count = sum(segment.address is None for segment in payload.segments) if payload.segments else 0
        return count + 2 if kind is CallRequest and message.capture else count  # type: ignore[union-attr]
    match message:
        case WorkerSpawned():
            return 1
        case OpenChannels(number):
            return number
        case _:
            return 0


def encode(message: Message) -> bytes:
    """Encode one message as a frame."""
    body: bytes
    match message:
        case CallRequest(call_id, payload, capture, pipelined):
            flags = _FLAG_CAPTURE if capture else 0
            if pipelined:
                flags |= _FLAG_PIPELINED
            return _encode_call(1, call_id, payload, flags)
        case CallResult(call_id, payload, recycle):
            return _encode_call(2, call_id, payload, _FLAG_RECYCLE if recycle else 0)
        case CallFailure(call_id, payload, recycle):
            return _encode_call(3, call_id, payload, _FLAG_RECYCLE if recycle else 0)
        case Shutdown() | SegmentsCopied():
            body = b""
        case SpawnWorkers(number) | OpenChannels(number):
            body = _COUNT.pack(number)
        case TerminateWorker(pid, grace_seconds):
            body = _TERMINATE.pack(pid, grace_seconds)
        case TemplateReady(pid, direct_copy, facts):
            body = _READY.pack(pid, direct_copy) + facts.encode("utf-8", "replace")
        case WorkerSpawned(pid):
            body = _PID.pack(pid)
        case TemplateFailed(details):
            body = details.encode("utf-8", "replace")
        case WorkerExited(pid, exitcode, signal):
            body = _EXIT.pack(pid, -1 if exitcode is None else exitcode, signal or 0)
        case SpawnFailed(number, reason):
            body = _COUNT.pack(number) + reason.encode("utf-8", "replace")
        case CancelQueued(call_id) | CallSkipped(call_id):
            body = _CALL_ID.pack(call_id)
        case FilesLoaded(started_ns, files):
            body = _STARTED.pack(started_ns) + "\0".join(files).encode("utf-8", "surrogateescape")
    if len(body) + HEADER.size > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(MAGIC, VERSION, _KIND_OF[type(message)], len(body)) + body


def decode(frame: bytes) -> Message:
    """Decode one frame; raise ProtocolError for anything malformed."""
    if len(frame) < HEADER.size:
        raise ProtocolError(f"truncated frame: {len(frame)} bytes, shorter than its header")
    if len(frame) > MAX_FRAME:
        raise ProtocolError(f"oversized frame: {len(frame)} bytes")
    magic, version, kind, length = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (expected {VERSION})")
    if len(frame) - HEADER.size != length:
        raise ProtocolError(f"frame body is {len(frame) - HEADER.size} bytes, header says {length}")
    try:
        if kind in (1, 2, 3):  # every call's frames: read in place, the body not copied out first
            return _decode_call_frame(kind, frame)
        return _decode_body(kind, frame[HEADER.size :])
    except struct.error as exc:
        raise ProtocolError(f"malformed body for frame kind {kind}: {exc}") from None


def _decode_call_frame(kind: int, frame: bytes) -> Message:
    call_id, payload, flags = _decode_call(frame, HEADER.size)
    if kind == 1:
        if flags & _FLAG_RECYCLE:
            raise ProtocolError("a call request cannot carry the recycle flag")
        return CallRequest(call_id, payload, bool(flags & _FLAG_CAPTURE), bool(flags & _FLAG_PIPELINED))
    if flags & _REQUEST_FLAGS:
        raise ProtocolError("a reply cannot carry the capture or pipelined flag")
    return (CallResult if kind == 2 else CallFailure)(call_id, payload, bool(flags & _FLAG_RECYCLE))


def _decode_body(kind: int, body: bytes) -> Message:
    """Any frame but a call's (``_decode_call_frame``)."""
    if kind == 4:
        _expect_empty(body)
        return Shutdown()
    if kind == 5:
        (number,) = _unpack_exact(_COUNT, body)
        return SpawnWorkers(number)
    if kind == 6:
        pid, grace = _unpack_exact(_TERMINATE, body)
        if not grace >= 0.0:  # also rejects NaN
            raise ProtocolError(f"bad grace period {grace!r}")
        return TerminateWorker(pid, grace)
    if kind == 7:
        if len(body) < _READY.size:
            raise ProtocolError(f"truncated template-ready body: {len(body)} bytes")
        pid, direct_copy = _READY.unpack_from(body)
        if direct_copy not in (0, 1):
            raise ProtocolError(f"bad direct-copy flag {direct_copy}")
        return TemplateReady(pid, bool(direct_copy), body[_READY.size :].decode("utf-8", "replace"))
    if kind == 9:
        (pid,) = _unpack_exact(_PID, body)
        return WorkerSpawned(pid)
    if kind == 8:
        return TemplateFailed(body.decode("utf-8", "replace"))
    if kind == 10:
        pid, exitcode, signal = _unpack_exact(_EXIT, body)
        return WorkerExited(pid, None if exitcode < 0 else exitcode, signal or None)
    if kind == 11:
        _expect_empty(body)
        return SegmentsCopied()
    if kind == 12:
        if len(body) < _COUNT.size:
            raise ProtocolError(f"body is {len(body)} bytes, expected at least {_COUNT.size}")
        (number,) = _COUNT.unpack_from(body)
        return SpawnFailed(number, body[_COUNT.size :].decode("utf-8", "replace"))
    if kind == 13:
        if len(body) < _STARTED.size:
            raise ProtocolError(f"body is {len(body)} bytes, expected at least {_STARTED.size}")
        (started_ns,) = _STARTED.unpack_from(body)
        names = body[_STARTED.size :]
        return FilesLoaded(started_ns, tuple(names.decode("utf-8", "surrogateescape").split("\0")) if names else ())
    if kind == 14:
        (number,) = _unpack_exact(_COUNT, body)
        return OpenChannels(number)
    if kind in (15, 16):
        (call_id,) = _unpack_exact(_CALL_ID, body)
        return (CancelQueued if kind == 15 else CallSkipped)(call_id)
    raise ProtocolError(f"unknown frame kind {kind}")


def _encode_call(kind: int, call_id: int, payload: Payload, flags: int) -> bytes:
    """A whole call frame (header included): the one frame kind on every call's path, so
    a call with nothing out of band is packed in one go."""
    inline, segments = payload
    if inline is not None:
        flags |= _FLAG_INLINE
        if not segments:
            if _CALL_FRAME.size + len(inline) > MAX_FRAME:
                raise ProtocolError(f"frame of {_CALL.size + len(inline)} bytes exceeds the {MAX_FRAME}-byte limit")
            return _CALL_FRAME.pack(MAGIC, VERSION, kind, _CALL.size + len(inline), call_id, flags, 0) + inline
    if len(segments) > MAX_FDS:
        raise ProtocolError(f"{len(segments)} out-of-band segments exceed the limit of {MAX_FDS}")
    parts = [_CALL.pack(call_id, flags, len(segments))]
    for segment in segments:
        if segment.address is None:
            parts.append(_SEGMENT.pack(_KIND_DESCRIPTOR, segment.size, 0))
        else:
            parts.append(_SEGMENT.pack(_KIND_ADDRESS, segment.size, segment.address))
    if inline is not None:
        parts.append(inline)
    body = b"".join(parts)
    if len(body) + HEADER.size > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(MAGIC, VERSION, kind, len(body)) + body


def _decode_call(body: bytes, start: int) -> tuple[int, Payload, int]:
    """A call frame's body, from ``start`` in ``body`` to its end."""
    call_id, flags, count = _CALL.unpack_from(body, start)
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown call flags {flags:#x}")
    if count > MAX_FDS:
        raise ProtocolError(f"{count} out-of-band segments exceed the limit of {MAX_FDS}")
    offset = start + _CALL.size
    end = offset + count * _SEGMENT.size
    if end > len(body):
        raise ProtocolError("call frame is shorter than its segment table")
    segments = []
    for index in range(count):
        kind, size, address = _SEGMENT.unpack_from(body, offset + index * _SEGMENT.size)
        if kind == _KIND_DESCRIPTOR and address == 0:
            segments.append(Segment(size))
        elif kind == _KIND_ADDRESS and address != 0:
            segments.append(Segment(size, address))
        else:
            raise ProtocolError(f"bad segment entry: kind {kind}, address {address:#x}")
    rest = body[end:]
    if flags & _FLAG_INLINE:
        inline: bytes | None = rest
    elif rest:
        raise ProtocolError("call frame has trailing bytes but no inline payload")
    else:
        inline = None
        if not segments:
            raise ProtocolError("call frame has neither an inline nor an out-of-band pickle")
    return call_id, Payload(inline, tuple(segments)), flags


def _unpack_exact(layout: struct.Struct, body: bytes) -> tuple[Any, ...]:
    if len(body) != layout.size:
        raise ProtocolError(f"body is {len(body)} bytes, expected {layout.size}")
    return layout.unpack(body)


def _expect_empty(body: bytes) -> None:
    if body:
        raise ProtocolError(f"expected an empty body, got {len(body)} bytes")
