"""The worker: receive a call, run it, reply. Runs in a process forked from the template.

Imports only the stdlib, the protocol, the transport and the serializer (principle: user
code starts from a small, known ``sys.modules``). Never executes anything from a frame
that fails to decode: a bad frame ends the worker.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import types
from collections.abc import Callable
from typing import Any, NoReturn, cast

from freshproc import _serialization, _transport
from freshproc._errors import ProtocolError, SerializationError
from freshproc._protocol import CallFailure, CallRequest, CallResult, Payload, SegmentsCopied, Shutdown

#: Exit status of a worker that received something it could not trust.
EXIT_PROTOCOL_ERROR = 70

# How a request names its target.
BY_NAME = 0  # target is (module, dotted attribute): imported here
BY_VALUE = 1  # target is the callable itself
BATCH = 2  # target is the callable; args is a list of argument tuples, one call each

# Pickle opcodes around captured output in a reply: (result, (stdout, stderr)).
_CAPTURE_FRAMING = 64

#: Set on functions wrapped by ``freshproc.isolated``; the worker calls ``__wrapped__``
#: instead, or a decorated function imported by name would call back into a pool.
ISOLATED_MARKER = "__freshproc_isolated__"


class _Settings:
    """Per-worker settings, set by the template before it forks workers."""

    max_result_size: int | None = None
    #: The process that made the pool (the only one that calls on it): segments it sends
    #: by address live in its memory.
    owner_pid: int = 0
    #: Whether segments may travel by address (the template checked it can read the
    #: caller's memory); otherwise they travel in memfds.
    direct_copy: bool = False


settings = _Settings()


def serve(channel: socket.socket) -> NoReturn:
    """Serve calls on ``channel`` until the parent says stop or goes away."""
    _rehearse()
    last_reply: list[object] = []  # what the last reply's by-address segments point into
    while True:
        try:
            received = _transport.recv(channel)
        except (ProtocolError, OSError):
            _exit(EXIT_PROTOCOL_ERROR)
        if received is None:
            _exit(0)
        # The caller copied the last reply's segments before it sent anything more.
        last_reply.clear()
        message, fds = received
        match message:
            case CallRequest(call_id, payload):
                reply, outgoing = _execute(call_id, payload, fds)
                try:
                    _transport.send(channel, reply, outgoing.fds)
                except OSError:
                    _exit(0)  # the parent went away mid-reply
                finally:
                    outgoing.close()
                last_reply.extend(outgoing.keepalive)
            case SegmentsCopied():
                pass  # last_reply was cleared above
            case Shutdown():
                _exit(0)
            case _:
                for fd in fds:
                    os.close(fd)
                _exit(EXIT_PROTOCOL_ERROR)


def _execute(
    call_id: int, payload: Payload, fds: list[int]
) -> tuple[CallResult | CallFailure, _serialization.Outgoing]:
    limit = settings.max_result_size
    try:
        # The owner may name by address as much of its own memory as it likes.
        request = _serialization.loads_from_wire(payload, fds, "arguments", settings.owner_pid, resident_bound=False)
        if not (isinstance(request, tuple) and len(request) == 5):
            raise SerializationError("a request is a 5-tuple", direction="arguments", stage="load")
    except ProtocolError:
        _exit(EXIT_PROTOCOL_ERROR)  # sizes or memfds it cannot trust: run nothing
    except SerializationError as exc:
        failure = _serialization.failure_from_exception(exc.__cause__ or exc, "arguments", max_bytes=limit)
        return _failure(call_id, failure, None, recycle=False)
    how, target, args, kwargs, capture = cast("tuple[int, object, tuple[Any, ...], dict[str, Any], bool]", request)

    capture_output = _OutputCapture(limit) if capture else None
    recycle = False
    result: object
    try:
        function = _resolve(how, target)
        if how == BATCH:
            result, recycle = _run_batch(function, args, max_result_size=limit)
        else:
            result = _call(function, args, kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
        captured = capture_output.finish() if capture_output else None
        failure = _serialization.failure_from_exception(exc, max_bytes=limit)
        return _failure(call_id, failure, captured, recycle=isinstance(exc, MemoryError))
    captured = capture_output.finish() if capture_output is not None else None
    if captured is None:
        _flush_output()
    value: object = (result, captured) if captured is not None else result
    max_size = limit
    if limit is not None:
        if how == BATCH:  # each item was checked against the limit by _run_batch
            max_size = _serialization.reply_limit(limit, len(args))
        elif captured is not None:  # the limit is the result's; the output is bounded apart
            max_size = limit + len(captured[0]) + len(captured[1]) + _CAPTURE_FRAMING
    try:
        outgoing = _serialization.dumps_to_wire(value, "result", direct=settings.direct_copy, max_size=max_size)
    except BaseException as exc:  # noqa: BLE001 - a result's __reduce__ may raise anything, SystemExit included
        return _failure(call_id, _result_failure(result, exc, limit), captured, recycle=False)
    return CallResult(call_id, outgoing.payload, recycle), outgoing


def _rehearse() -> None:
    """Run a no-op request through the whole request path once, while still idle.

    A forked worker shares the template's memory until it writes to it; the first call
    writes to every page its code path touches, and each write costs a page copy. Doing
    that here, before any request arrives, takes those copies off the first call's time.
    It imports nothing, so the worker's modules stay the template's.
    """
    outgoing = _serialization.dumps_to_wire((BY_NAME, ("builtins", "len"), ((),), {}, False), "arguments", direct=False)
    _, reply = _execute(0, outgoing.payload, outgoing.fds)
    reply.close()


def _call(function: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    result = function(*args, **kwargs)
    if isinstance(result, types.CoroutineType):
        import asyncio  # only coroutine targets pay for asyncio

        result = asyncio.run(_await(result))
    return result


def _run_batch(
    function: Callable[..., object], items: tuple[Any, ...], *, max_result_size: int | None = None
) -> tuple[list[tuple[bool, object]], bool]:
    """Run one call per argument tuple; each outcome is (True, value) or (False, failure).
    The second value asks for the worker to be replaced (a MemoryError happened).

    ``max_result_size`` applies to each result: one that pickles larger (or not at all)
    becomes that item's failure. Checking costs a pickle per item, so only with a limit.
    """
    outcomes: list[tuple[bool, object]] = []
    recycle = False
    for item in items:
        try:
            value = _call(function, item, {})
        except BaseException as exc:  # noqa: BLE001 - reported per item
            recycle = recycle or isinstance(exc, MemoryError)
            outcomes.append((False, _serialization.failure_from_exception(exc, max_bytes=max_result_size)))
            continue
        failure = _oversized(value, max_result_size) if max_result_size is not None else None
        outcomes.append((True, value) if failure is None else (False, failure))
    return outcomes, recycle


def _oversized(value: object, max_size: int) -> _serialization.Failure | None:
    """A "result" failure if ``value`` pickles larger than ``max_size`` or cannot be
    pickled at all; None if it fits."""
    try:
        data, buffers = _serialization.dumps(value)
        problem: BaseException | None = _serialization.size_error(data, buffers, max_size)
    except BaseException as exc:  # noqa: BLE001 - its __reduce__ may raise anything, SystemExit included
        problem = exc
    return None if problem is None else _result_failure(value, problem, max_size)


def _result_failure(value: object, exc: BaseException, limit: int | None) -> _serialization.Failure:
    """The failure to report when ``value`` could not be pickled because of ``exc``: a
    SerializationError in the caller, naming the value's type. A KeyboardInterrupt or
    SystemExit raised by a ``__reduce__`` is reported so too, by name."""
    if isinstance(exc, SerializationError) and exc.__cause__ is not None:
        exc = exc.__cause__
    kind, _, message, text, _ = _serialization.failure_from_exception(exc, "result", max_bytes=limit)
    if not isinstance(exc, Exception):
        message = f"{type(exc).__name__}: {message}"
    return (kind, type(value).__qualname__, message, text, None)


def _failure(
    call_id: int, failure: _serialization.Failure, captured: _serialization.Captured | None, *, recycle: bool
) -> tuple[CallFailure, _serialization.Outgoing]:
    data = _serialization.dumps_failure(failure, captured)
    outgoing = _serialization.to_wire(data, [], direct=settings.direct_copy)
    return CallFailure(call_id, outgoing.payload, recycle), outgoing


def _resolve(how: int, target: object) -> Callable[..., object]:
    if how == BY_NAME:
        module_name, attribute = cast("tuple[str, str]", target)
        obj: object = sys.modules.get(module_name) or importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    elif how in (BY_VALUE, BATCH):
        obj = target
    else:
        raise ProtocolError(f"unknown target kind {how!r}")
    if getattr(obj, ISOLATED_MARKER, False):
        obj = obj.__wrapped__  # type: ignore[attr-defined]
    if not callable(obj):
        raise TypeError(f"{type(obj).__qualname__!r} object is not callable")
    return cast("Callable[..., object]", obj)


async def _await(coroutine: types.CoroutineType[object, object, object]) -> object:
    return await coroutine


def _flush_output() -> None:
    # Output written before the return must reach the caller's streams before the result.
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001, S110 - a broken stream must not fail the call
            pass


class _OutputCapture:
    """Sends descriptors 1 and 2 into memfds for one call (C-level writes included).

    With ``max_bytes`` (the pool's ``max_result_size``) the two streams together keep at
    most that many bytes: a longer one loses its middle, replaced by a marker saying how
    much went, and what is cut is never read. Without it, the output is kept whole.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        _flush_output()
        self._max_bytes = max_bytes
        self._saved = (os.dup(1), os.dup(2))
        self._files = (os.memfd_create("stdout", os.MFD_CLOEXEC), os.memfd_create("stderr", os.MFD_CLOEXEC))
        os.dup2(self._files[0], 1)
        os.dup2(self._files[1], 2)

    def finish(self) -> tuple[bytes, bytes]:
        _flush_output()
        for target, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, target)
            os.close(saved)
        sizes = (os.fstat(self._files[0]).st_size, os.fstat(self._files[1]).st_size)
        kept = _share(sizes, self._max_bytes)
        outputs = [_read_kept(fd, size, keep) for fd, size, keep in zip(self._files, sizes, kept, strict=True)]
        for fd in self._files:
            os.close(fd)
        return outputs[0], outputs[1]


def _share(sizes: tuple[int, int], budget: int | None) -> tuple[int, int]:
    """How many bytes of each stream to keep, together within ``budget``: a stream
    smaller than half of it leaves the rest to the other."""
    first, second = sizes
    if budget is None or first + second <= budget:
        return sizes
    half = budget // 2
    if first <= half:
        return first, budget - first
    if second <= budget - half:
        return budget - second, second
    return half, budget - half


def _read_kept(fd: int, size: int, keep: int) -> bytes:
    """The captured bytes in ``fd``: all ``size`` of them, or the first and last
    ``keep`` // 2 with a marker between."""
    if keep >= size:
        return _read_at(fd, 0, size)
    head = keep // 2
    tail = keep - head
    marker = f"\n{_serialization.truncation_marker(size - keep)}\n".encode()
    return _read_at(fd, 0, head) + marker + _read_at(fd, size - tail, tail)


def _read_at(fd: int, offset: int, count: int) -> bytes:
    chunks = []
    end = offset + count
    while offset < end and (chunk := os.pread(fd, min(end - offset, 1 << 20), offset)):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _exit(code: int) -> NoReturn:
    _flush_output()
    os._exit(code)
