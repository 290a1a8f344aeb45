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
    try:
        # The owner may name by address as much of its own memory as it likes.
        request = _serialization.loads_from_wire(payload, fds, "arguments", settings.owner_pid, resident_bound=False)
        if not (isinstance(request, tuple) and len(request) == 5):
            raise SerializationError("a request is a 5-tuple", direction="arguments", stage="load")
    except ProtocolError:
        _exit(EXIT_PROTOCOL_ERROR)  # sizes or memfds it cannot trust: run nothing
    except SerializationError as exc:
        failure = _serialization.failure_from_exception(exc.__cause__ or exc, "arguments")
        return _failure(call_id, failure, None, recycle=False)
    how, target, args, kwargs, capture = cast("tuple[int, object, tuple[Any, ...], dict[str, Any], bool]", request)

    capture_output = _OutputCapture() if capture else None
    recycle = False
    result: object
    try:
        function = _resolve(how, target)
        if how == BATCH:
            result, recycle = _run_batch(function, args)
        else:
            result = _call(function, args, kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
        captured = capture_output.finish() if capture_output else None
        failure = _serialization.failure_from_exception(exc)
        return _failure(call_id, failure, captured, recycle=isinstance(exc, MemoryError))
    captured = capture_output.finish() if capture_output is not None else None
    if captured is None:
        _flush_output()
    value: object = (result, captured) if captured is not None else result
    try:
        outgoing = _serialization.dumps_to_wire(
            value, "result", direct=settings.direct_copy, max_size=settings.max_result_size
        )
    except SerializationError as exc:
        failure = _serialization.failure_from_exception(exc.__cause__ or exc, "result")
        failure = (failure[0], type(result).__qualname__, *failure[2:])
        return _failure(call_id, failure, captured, recycle=False)
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


def _run_batch(function: Callable[..., object], items: tuple[Any, ...]) -> tuple[list[tuple[bool, object]], bool]:
    """Run one call per argument tuple; each outcome is (True, value) or (False, failure).
    The second value asks for the worker to be replaced (a MemoryError happened)."""
    outcomes: list[tuple[bool, object]] = []
    recycle = False
    for item in items:
        try:
            outcomes.append((True, _call(function, item, {})))
        except BaseException as exc:  # noqa: BLE001 - reported per item
            recycle = recycle or isinstance(exc, MemoryError)
            outcomes.append((False, _serialization.failure_from_exception(exc)))
    return outcomes, recycle


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
    """Sends descriptors 1 and 2 into memfds for one call (C-level writes included)."""

    def __init__(self) -> None:
        _flush_output()
        self._saved = (os.dup(1), os.dup(2))
        self._files = (os.memfd_create("stdout", os.MFD_CLOEXEC), os.memfd_create("stderr", os.MFD_CLOEXEC))
        os.dup2(self._files[0], 1)
        os.dup2(self._files[1], 2)

    def finish(self) -> tuple[bytes, bytes]:
        _flush_output()
        outputs = []
        for target, saved, captured in zip((1, 2), self._saved, self._files, strict=True):
            os.dup2(saved, target)
            os.close(saved)
            os.lseek(captured, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(captured, 1 << 20):
                chunks.append(chunk)
            os.close(captured)
            outputs.append(b"".join(chunks))
        return outputs[0], outputs[1]


def _exit(code: int) -> NoReturn:
    _flush_output()
    os._exit(code)
