"""The worker: receive a call, run it, reply. Runs in a process forked from the template.

Imports only the stdlib, the protocol, the transport and the serializer (principle: user
code starts from a small, known ``sys.modules``). Never executes anything from a frame
that fails to decode: a bad frame ends the worker.
"""

from __future__ import annotations

import _socket
import importlib
import os
import sys
import types

from freshproc import _hosted, _loaded, _serialization, _transport
from freshproc._errors import ProtocolError, SerializationError
from freshproc._inbox import Inbox
from freshproc._protocol import (
    INLINE_LIMIT,
    CallFailure,
    CallRequest,
    CallResult,
    FilesLoaded,
    Payload,
    Shutdown,
)

TYPE_CHECKING = False  # typing stays out of the worker runtime at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn, cast

    #: A request: (how, target, positional arguments, keyword arguments, capture output,
    #: the caller's async library: "asyncio" or "trio").
    _Request = tuple[int, object, tuple[Any, ...], dict[str, Any], bool, str]
else:

    def cast(kind: object, value: object) -> object:
        return value


#: Exit status of a worker that received something it could not trust.
EXIT_PROTOCOL_ERROR = 70

# How a request names its target.
BY_NAME = 0  # target is (module, dotted attribute): imported here
BY_VALUE = 1  # target is the callable itself
BATCH = 2  # target is the callable; args is a list of argument tuples, one call each
METHOD = 3  # target is the name of a method of the object this worker hosts (a service)
CLOSE_HOSTED = 4  # end the hosted object (close, __exit__, __aexit__); the worker then goes
BUILD_HOSTED = 5  # build the hosted object now (a service starting), if not built yet

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
    #: Hot reload is on: say which files each call loaded code from, before its reply.
    report_loaded: bool = False


settings = _Settings()


def serve(channel: _socket.socket) -> NoReturn:
    """Serve calls on ``channel`` until the parent says stop or goes away."""
    _rehearse()
    serve_channel(channel)
    _exit(0)


def serve_channel(channel: _socket.socket) -> None:
    """Serve calls on ``channel`` until it reaches its end (then return), the parent says
    stop, or a frame cannot be trusted (then the worker exits)."""
    inbox = Inbox(channel, _open_channels)
    while True:
        try:
            received = inbox.next_request()
        except (ProtocolError, OSError):
            _exit(EXIT_PROTOCOL_ERROR)
        match received:
            case None:
                return
            case Shutdown():
                _exit(0)
            case (CallRequest(call_id, payload, capture, pipelined), fds):
                started_ns = _loaded.coarse_now_ns() if settings.report_loaded else 0
                output_files = (fds[-2], fds[-1]) if capture else None
                reply, outgoing = _execute(call_id, payload, fds[:-2] if capture else fds, output_files)
                try:
                    # Cancels that came meanwhile are answered ahead of the reply.
                    other = inbox.read_ahead() if pipelined else None
                    if started_ns:
                        report_loaded(channel, started_ns)
                    _transport.send(channel, reply, outgoing.fds)
                except (ProtocolError, OSError):
                    _exit(0)  # the parent went away mid-reply, or broke the protocol
                finally:
                    outgoing.close()
                if any(segment.address is not None for segment in reply.payload.segments):
                    inbox.hold(outgoing.keepalive)
                if reply.recycle:
                    inbox.refuse()
                if isinstance(other, Shutdown):
                    _exit(0)
                if other is not None:
                    _exit(EXIT_PROTOCOL_ERROR)
            case _:
                _exit(EXIT_PROTOCOL_ERROR)


def _open_channels(fds: list[int]) -> None:
    _hosted.serve_channels([_socket.socket(fileno=fd) for fd in fds], serve_channel)


def report_loaded(channel: _socket.socket, started_ns: int) -> None:
    """Send the files loaded since the last report (none: nothing is sent), in frames
    that fit the protocol's limit."""
    files = _loaded.new_files()
    while files:
        size = 0
        count = 0
        while count < len(files) and size + len(files[count]) * 4 + 1 < INLINE_LIMIT:
            size += len(files[count]) * 4 + 1
            count += 1
        count = max(count, 1)
        _transport.send(channel, FilesLoaded(started_ns, tuple(files[:count])))
        files = files[count:]


def _execute(
    call_id: int, payload: Payload, fds: list[int], output_files: tuple[int, int] | None = None
) -> tuple[CallResult | CallFailure, _serialization.Outgoing]:
    capture_output = _OutputCapture(output_files) if output_files is not None else None
    try:
        return _run_request(call_id, payload, fds, capture_output)
    finally:
        if capture_output is not None:
            capture_output.finish()


def _run_request(
    call_id: int, payload: Payload, fds: list[int], capture_output: _OutputCapture | None
) -> tuple[CallResult | CallFailure, _serialization.Outgoing]:
    limit = settings.max_result_size
    try:
        # The owner may name by address as much of its own memory as it likes.
        request = _serialization.loads_from_wire(payload, fds, "arguments", settings.owner_pid, resident_bound=False)
        if not (isinstance(request, tuple) and len(request) == 6):
            raise SerializationError("a request is a 6-tuple", direction="arguments", stage="load")
    except ProtocolError:
        _exit(EXIT_PROTOCOL_ERROR)  # sizes or memfds it cannot trust: run nothing
    except SerializationError as exc:
        failure = _serialization.failure_from_exception(exc.__cause__ or exc, "arguments", max_bytes=limit)
        return _failure(call_id, failure, None, recycle=False)
    how, target, args, kwargs, _, async_library = cast("_Request", request)

    # A worker asks to be replaced after a MemoryError, after its hosted object failed to
    # build, and once that object is closed.
    recycle = how == CLOSE_HOSTED
    result: object
    try:
        if how == METHOD:
            result = _hosted.call_method(cast("str", target), args, kwargs)
        elif how == CLOSE_HOSTED:
            _hosted.close()
            result = None
        elif how == BUILD_HOSTED:
            _hosted.build()
            result = None
        else:
            function = resolve(how, target)
            if how == BATCH:
                result, recycle = _run_batch(function, args, max_result_size=limit)
            else:
                result = _call(function, args, kwargs, async_library)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
        if capture_output is not None:
            capture_output.finish()
        failure = _serialization.failure_from_exception(exc, max_bytes=limit)
        recycle = recycle or isinstance(exc, MemoryError) or _hosted.state.broken
        return _failure(call_id, failure, None, recycle=recycle)
    if capture_output is not None:
        capture_output.finish()
    else:
        _flush_output()
    max_size = limit
    if limit is not None and how == BATCH:  # each item was checked against the limit by _run_batch
        max_size = _serialization.reply_limit(limit, len(args))
    try:
        outgoing = _serialization.dumps_to_wire(result, "result", direct=settings.direct_copy, max_size=max_size)
    except BaseException as exc:  # noqa: BLE001 - a result's __reduce__ may raise anything, SystemExit included
        return _failure(call_id, _result_failure(result, exc, limit), None, recycle=False)
    return CallResult(call_id, outgoing.payload, recycle), outgoing


def _rehearse() -> None:
    """Run a no-op request through the whole request path once, while still idle.

    A forked worker shares the template's memory until it writes to it; the first call
    writes to every page its code path touches, and each write costs a page copy. Doing
    that here, before any request arrives, takes those copies off the first call's time.
    It imports nothing, so the worker's modules stay the template's.
    """
    outgoing = _serialization.dumps_to_wire(
        (BY_NAME, ("builtins", "len"), ((),), {}, False, "asyncio"), "arguments", direct=False
    )
    _, reply = _execute(0, outgoing.payload, outgoing.fds)
    reply.close()


def _call(
    function: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any], async_library: str = "asyncio"
) -> object:
    """Call ``function``; a coroutine it returns runs to completion on a new event loop of
    ``async_library`` ("asyncio" or "trio", the caller's), imported only then."""
    result = function(*args, **kwargs)
    if isinstance(result, types.CoroutineType):
        coroutine = cast("types.CoroutineType[object, object, object]", result)
        if async_library == "trio":
            try:
                import trio  # only trio callers with coroutine targets pay for trio
            except BaseException:
                coroutine.close()
                raise
            return trio.run(_await, coroutine)
        if async_library != "asyncio":
            coroutine.close()
            raise ValueError(f"unknown async library {async_library!r}: expected 'asyncio' or 'trio'")
        import asyncio  # only coroutine targets pay for asyncio

        result = asyncio.run(_await(coroutine))
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
    kind, _, message, text, _, lineage, _ = _serialization.failure_from_exception(exc, "result", max_bytes=limit)
    if not isinstance(exc, Exception):
        message = f"{type(exc).__name__}: {message}"
    return (kind, type(value).__qualname__, message, text, None, lineage, None)


def _failure(
    call_id: int, failure: _serialization.Failure, captured: _serialization.Captured | None, *, recycle: bool
) -> tuple[CallFailure, _serialization.Outgoing]:
    data = _serialization.dumps_failure(failure, captured)
    outgoing = _serialization.to_wire(data, [], direct=settings.direct_copy)
    return CallFailure(call_id, outgoing.payload, recycle), outgoing


def resolve(how: int, target: object) -> Callable[..., object]:
    """The callable a request (or a service's factory) names."""
    if how == BY_NAME:
        module_name, attribute = cast("tuple[str, str]", target)
        try:
            obj: object = sys.modules.get(module_name) or importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except (ModuleNotFoundError, AttributeError) as exc:
            _explain_missing_target(exc, module_name)
            raise
    elif how in (BY_VALUE, BATCH):
        obj = target
    else:
        raise ProtocolError(f"unknown target kind {how!r}")
    if getattr(obj, ISOLATED_MARKER, False):
        obj = obj.__wrapped__  # type: ignore[attr-defined]
    if not callable(obj):
        raise TypeError(f"{type(obj).__qualname__!r} object is not callable")
    return cast("Callable[..., object]", obj)


_hosted.resolver = resolve


def _explain_missing_target(exc: ModuleNotFoundError | AttributeError, module_name: str) -> None:
    """Say where the worker looked when the target's own module (or a package on its way)
    cannot be found, and that the caller's ``__main__`` is not the worker's."""
    if module_name == "__main__":
        _add_note(
            exc,
            "freshproc: the caller's __main__ is not the worker's (a worker runs no script): "
            "pass the function itself to run() instead, it travels by value",
        )
    elif isinstance(exc, ModuleNotFoundError) and _on_the_way_to(exc.name, module_name):
        _add_note(
            exc,
            f"freshproc: the worker looked for {module_name!r} on sys.path {sys.path[:4]!r}"
            f"{' ...' if len(sys.path) > 4 else ''} with cwd {os.getcwd()!r}",
        )


def _on_the_way_to(missing: str | None, module_name: str) -> bool:
    """Whether ``missing`` is ``module_name`` or one of its parent packages."""
    return missing is not None and (module_name == missing or module_name.startswith(missing + "."))


def _add_note(exc: BaseException, note: str) -> None:
    if sys.version_info >= (3, 11):
        exc.add_note(note)
        return
    # Python 3.10 has no notes: the message gains a line (ImportError prints .msg).
    exc.args = (f"{exc.args[0]}\n{note}", *exc.args[1:]) if exc.args else (note,)
    if isinstance(exc, ImportError) and exc.msg is not None:
        exc.msg = f"{exc.msg}\n{note}"


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
    """Sends descriptors 1 and 2 to the caller's capture files for one call (C-level
    writes included). The streams are line-buffered meanwhile, so what a call printed
    before its process died is in the files."""

    def __init__(self, files: tuple[int, int]) -> None:
        _flush_output()
        self._files: tuple[int, int] | None = files
        self._saved = (os.dup(1), os.dup(2))
        self._line_buffering = [_set_line_buffering(stream, True) for stream in (sys.stdout, sys.stderr)]
        os.dup2(files[0], 1)
        os.dup2(files[1], 2)

    def finish(self) -> None:
        """Put the streams back (once; later calls do nothing)."""
        if self._files is None:
            return
        _flush_output()
        for target, saved, captured in zip((1, 2), self._saved, self._files, strict=True):
            os.dup2(saved, target)
            os.close(saved)
            os.close(captured)
        for stream, previous in zip((sys.stdout, sys.stderr), self._line_buffering, strict=True):
            if previous is not None:
                _set_line_buffering(stream, previous)
        self._files = None


def _set_line_buffering(stream: object, enabled: bool) -> bool | None:
    """Set a text stream's line buffering; return what it was (None: not a text stream)."""
    previous = getattr(stream, "line_buffering", None)
    reconfigure = getattr(stream, "reconfigure", None)
    if previous is None or reconfigure is None:
        return None
    try:
        reconfigure(line_buffering=enabled)
    except (ValueError, OSError):
        return None
    return bool(previous)


def _exit(code: int) -> NoReturn:
    _flush_output()
    os._exit(code)
