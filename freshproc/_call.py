"""One call's round trip on one worker channel: the code that ``Pool`` (and everything
built on it) runs for every request, written once for blocking and async callers.

The round trip is a generator (a sans-I/O core, as h11 and wsproto are): it does every
non-blocking step itself (encode, send, receive, decode, give the worker back) and yields
a small instruction whenever it must wait. Two drivers run it: ``drive_sync`` blocks the
thread, ``drive_async`` awaits on asyncio or trio. An exception raised while waiting
(a cancellation, a KeyboardInterrupt) is thrown into the generator, so its ``finally``
gives the worker back on every path. Data flow (message names from ``_protocol``)::

    caller ──CallRequest (+ capture memfds)──▶ worker
    caller ◀─CallResult / CallFailure──────── worker   (then SegmentsCopied if it holds any)

The arguments are pickled once a worker is checked out, just before the send: queued
calls hold no pickles or descriptors, and a call's arguments are read when it starts
(whatever the size, and whichever way large buffers travel). A worker whose call crashed,
timed out or was cancelled is never reused, so a late reply cannot reach another call.

A pipelining pool (``Pool(pipeline=N)``) may send a request to a busy worker: it is
pickled then, queued behind the worker's current one, and reads its reply when its turn
comes (``_queued_reply``; the bookkeeping is ``_pipeline``'s). Every other pool sends and
reads as described above, and pays for none of that.
"""

from __future__ import annotations

import enum
import errno
import functools
import itertools
import math
import select
import sys
import time
import warnings
from collections.abc import Generator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import anyio

from freshproc import _buffers, _capture, _interrupts, _loopreader, _serialization, _transport
from freshproc._asynclib import current_async_library, event_loop_runs_in_this_thread
from freshproc._errors import (
    CallTimeoutError,
    FreshprocError,
    PoolClosedError,
    ProtocolError,
    SerializationError,
    WorkerCrashedError,
    WorkerStartupError,
    describe_exit,
)
from freshproc._ledger import ExitStatus, Lease, Outcome, TemplateLost, Worker
from freshproc._lender import WorkerLender
from freshproc._pipeline import QueuedLease, Redispatch, may_pipeline
from freshproc._protocol import CallFailure, CallRequest, CallResult, CallSkipped, FilesLoaded, SegmentsCopied
from freshproc._waiters import AsyncWaiter, SyncWaiter
from freshproc._worker import BATCH, BUILD_HOSTED, BY_NAME, BY_VALUE, CLOSE_HOSTED, METHOD
from freshproc._workers import WorkerSet, wait_async, wait_sync

if TYPE_CHECKING:
    import socket

ResultT = TypeVar("ResultT")

#: How often one call starts a new template after losing the one it waited on.
TEMPLATE_RESTARTS = 3
#: How long a caller that saw its worker's channel close waits for the exit status.
EXIT_STATUS_WAIT = 5.0


class Request(NamedTuple):
    """What to run: how the target is named (``_worker.BY_NAME``, ``BY_VALUE``,
    ``BATCH``), the target, positional arguments (for a batch: one tuple per item) and
    keyword arguments."""

    how: int
    target: object
    args: tuple[object, ...]
    kwargs: Mapping[str, object]


class Reply(NamedTuple):
    """A decoded reply: the value (for a batch, the list of per-item outcomes) and the
    captured output."""

    value: object
    captured: _capture.Output | None


# -- what the round trip waits for ------------------------------------------------------


class WaitForWorker(NamedTuple):
    lease: Lease


class StartTemplate(NamedTuple):
    pass


class WaitReadable(NamedTuple):
    channel: socket.socket
    timeout: float | None


class WaitForExit(NamedTuple):
    worker: Worker


Step = WaitForWorker | StartTemplate | WaitReadable | WaitForExit


# -- the round trip -----------------------------------------------------------------------

_call_ids = itertools.count(1)


class ObjectLost(Exception):
    """Internal: a service's call failed and its worker asked to be replaced (its object
    could not be built, or a MemoryError left it unfit). ``error`` is what the call raised."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def round_trip(
    workers: WorkerLender,
    request: Request,
    *,
    timeout: float | None,
    capture: bool,
    async_library: str,
    blocking: bool,
    max_result_size: int | None,
    lease: Lease | None = None,
) -> Generator[Step, Any, Reply]:
    """Run ``request`` on a worker: check one out (unless ``lease`` holds one already),
    send, wait (up to the policy ``timeout``), receive, and give the worker back; return
    the reply or raise what the call raised (with the captured output attached when
    ``capture``)."""
    # A pool that queues nothing (the default) pays for none of the queues' bookkeeping.
    pipelining = workers.pipelining
    if lease is None:
        lease = QueuedLease(may_pipeline(workers.options, request.how, timeout)) if pipelining else Lease()
    outcome: Outcome = "unused"
    outgoing: _serialization.Outgoing | None = None
    # Filled in place (see _open_capture_files), so that an interrupt cannot lose one.
    capture_files: list[int] = []
    result: CallResult | CallFailure | None = None
    held_bytes = 0
    calls = len(request.args) if request.how == BATCH else 1
    failed_items = 0
    try:
        if capture:
            try:
                _capture.open_files(capture_files)
            except OSError as exc:
                raise _descriptor_error(exc, request) from exc
        template_restarts = dead_workers = 0
        received: _Received | None = None  # set before the loop ends
        while True:
            try:
                if (
                    lease.worker is None
                    and not workers.checkout(lease, None)
                    and not workers.checkout(lease, _new_waiter(blocking))
                ):
                    yield WaitForWorker(lease)  # the worker arrives in the lease
            except TemplateLost as lost:
                workers.withdraw(lease)
                lease.waiter = None
                template_restarts += 1
                if template_restarts > TEMPLATE_RESTARTS:
                    raise WorkerStartupError(f"the worker template keeps ending: {lost}") from None
                yield StartTemplate()
                continue
            lease.waiter = None
            worker = lease.worker
            assert worker is not None
            if outgoing is None:
                try:
                    outgoing = _encode(workers, request, bool(capture_files), async_library)
                except OSError as exc:
                    raise _descriptor_error(exc, request) from exc
            # From the send on, the worker may be running the call: if anything stops us
            # now, it must be ended, never handed to another call.
            outcome = "cancelled"
            if pipelining:
                assert isinstance(workers, WorkerSet)  # services never pipeline
                assert isinstance(lease, QueuedLease)
                try:
                    answer = yield from _queued_reply(
                        workers, lease, outgoing, capture_files, timeout, blocking, max_result_size, calls
                    )
                except (ProtocolError, SerializationError):
                    outcome = "broken"
                    raise
                if answer is _NoReply.TIMED_OUT:
                    outcome = "timed_out"
                    raise _timeout_error(request, timeout)
                if answer is _NoReply.AGAIN:
                    outcome = "unused"  # its worker ended, or dropped it, before it started
                    continue
                if answer is not _NoReply.REFUSED:
                    received = answer
                    break
            elif _send(worker, outgoing, capture_files):
                # Wait until the reply (or the end of file) is there: the receive that follows
                # is a critical section, which an interrupt must not find blocked.
                # (A blocking call waits right here: its driver would only do the same.)
                ready = (
                    _wait_readable_sync(worker, timeout) if blocking else (yield WaitReadable(worker.channel, timeout))
                )
                if not ready:
                    outcome = "timed_out"
                    raise _timeout_error(request, timeout)
                try:
                    received = _receive(worker, worker.call_id, max_result_size, calls)
                except (ProtocolError, SerializationError):
                    outcome = "broken"
                    raise
                break
            else:
                workers.release(lease, "dead")
            # It died idle, before the supervisor heard (or retired meanwhile): it ran
            # nothing. Try another.
            outcome = "unused"
            dead_workers += 1
            if dead_workers > 2 * workers.options.workers + 2:
                raise WorkerStartupError("workers keep dying before they receive a call")
        if received is None:
            outcome = "crashed"
            status = yield WaitForExit(worker)
            raise _crash_error(workers, worker, status, describe_target(request))
        result, data, buffers, held_bytes = received
        received = None
        outcome = "ok" if isinstance(result, CallResult) else "failed"
        value = _decode(result, data, buffers)
        del data, buffers  # a failure's traceback keeps this frame: let go of the reply
        if request.how == BATCH and isinstance(result, CallResult):
            failed_items = [ok for ok, _ in cast("list[tuple[bool, object]]", value)].count(False)
        captured = _capture.read(capture_files, max_result_size)
        if isinstance(value, BaseException):
            error: BaseException = value
            value = None
            if captured is not None:
                _capture.attach_output(error, captured)
            if request.how == METHOD and result.recycle:
                error = ObjectLost(error)
            try:
                raise error
            finally:
                del error  # the traceback refers to this frame: no cycle through it
        return Reply(value, captured)
    except BaseException as exc:
        if capture_files and outcome in ("crashed", "timed_out", "cancelled"):
            _capture.attach_output(exc, _capture.read(capture_files, max_result_size))
        raise
    finally:
        # A KeyboardInterrupt held back by a critical section is raised as it ends: each
        # step here must not skip the next, and the worker goes back whatever happens.
        try:
            if capture_files or (outgoing is not None and outgoing.fds):  # most calls send no descriptor
                _close_sent(outgoing, capture_files)
            if lease.waiter is not None:
                workers.withdraw(lease)
        finally:
            workers.release(
                lease,
                outcome,
                recycle_requested=result is not None and result.recycle,
                calls_ok=calls - failed_items if outcome == "ok" else 0,
                calls_failed=failed_items if outcome == "ok" else calls if outcome == "failed" else 0,
                keepalive=outgoing.keepalive if outgoing is not None else None,
                held_bytes=held_bytes,
                # Named only where a log record will say which call it was.
                target=None if outcome in ("ok", "failed", "unused") else describe_target(request),
            )


#: A reply received: the message, its pickle, its buffers, the bytes the worker holds.
_Received = tuple[CallResult | CallFailure, bytes | memoryview, list[memoryview], int]


class _NoReply(enum.Enum):
    """Why a request queued on a busy worker got no reply."""

    TIMED_OUT = "the policy timeout expired"
    AGAIN = "its worker ended, or dropped it, before it started: send it again"
    REFUSED = "its worker was gone before it was sent"


class _Skipped(Exception):
    """Internal: the worker answered ``CallSkipped(call_id)``: it dropped that queued request."""

    def __init__(self, call_id: int) -> None:
        super().__init__(call_id)
        self.call_id = call_id


def _queued_reply(
    workers: WorkerSet,
    lease: QueuedLease,
    outgoing: _serialization.Outgoing,
    capture_files: list[int],
    timeout: float | None,
    blocking: bool,
    max_result_size: int | None,
    calls: int,
) -> Generator[Step, Any, _Received | _NoReply | None]:
    """In a pipelining pool: send the request and queue it on the lease's worker, wait for
    its turn (the requests ahead of it have replied), then for its reply (the next answer
    on the channel is its own, after any ``CallSkipped`` for requests behind it); None if
    the worker's channel closed."""
    worker = lease.worker
    assert worker is not None
    send = functools.partial(_send, outgoing=outgoing, capture_files=capture_files, pipelined=True)
    head = workers.send(lease, send, _new_sync_waiter if blocking else _new_async_waiter)
    if head is None:
        return _NoReply.REFUSED
    if not head:
        try:
            yield WaitForWorker(lease)  # its turn: the calls ahead have replied
        except Redispatch:
            return _NoReply.AGAIN
        lease.waiter = None
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        # As in round_trip: the receive must not find the channel empty.
        remaining = None if deadline is None else deadline - time.monotonic()
        ready = _wait_readable_sync(worker, remaining) if blocking else (yield WaitReadable(worker.channel, remaining))
        if not ready:
            return _NoReply.TIMED_OUT
        try:
            return _receive(worker, lease.call_id, max_result_size, calls, queued=True)
        except _Skipped as skipped:
            if skipped.call_id == lease.call_id:
                workers.release(lease, "skipped")
                return _NoReply.AGAIN
            workers.mark_skipped(worker, skipped.call_id)


def _timeout_error(request: Request, timeout: float | None) -> CallTimeoutError:
    return CallTimeoutError(f"{describe_target(request)} did not finish within {timeout} s; its worker was ended")


@_interrupts.protected
def _close_sent(outgoing: _serialization.Outgoing | None, capture_files: list[int]) -> None:
    """Close what went out with the request: its memfds and the capture files (whole: an
    interrupt between two closes would leave the rest open)."""
    if outgoing is not None:
        outgoing.close()
    _buffers.close_all(capture_files)
    capture_files.clear()


def _descriptor_error(exc: OSError, request: Request) -> BaseException:
    """Running out of file descriptors is a FreshprocError that says so; any other OSError
    is itself."""
    if exc.errno not in (errno.EMFILE, errno.ENFILE):
        return exc
    return FreshprocError(
        f"the caller ran out of file descriptors ({exc.strerror}) while sending {describe_target(request)}: "
        "raise the limit (ulimit -n) or make fewer large calls at once"
    )


def _new_waiter(blocking: bool) -> SyncWaiter[None] | AsyncWaiter[None]:
    return SyncWaiter() if blocking else AsyncWaiter()


def _new_sync_waiter() -> SyncWaiter[None]:
    return SyncWaiter()


def _new_async_waiter() -> AsyncWaiter[None]:
    return AsyncWaiter()


def _encode(workers: WorkerLender, request: Request, capture: bool, async_library: str) -> _serialization.Outgoing:
    how, target, args, kwargs = request
    try:
        return _serialization.dumps_to_wire(
            (how, target, args, kwargs, capture, async_library),
            "arguments",
            direct=workers.direct_copy,
            cross_version=workers.cross_version,
        )
    except SerializationError as exc:
        culprit = find_unpicklable(request)
        if culprit is not None:
            exc.args = (f"{exc.args[0]} [{culprit}]",)
        raise


def _send(worker: Worker, outgoing: _serialization.Outgoing, capture_files: list[int], pipelined: bool = False) -> bool:
    """Send the request; False if the worker was already gone (so it never got it).
    ``pipelined``: in a pipelining pool (more requests may be queued behind it).

    Anything else that goes wrong around the send (an interrupt, say) leaves us unsure
    whether the worker got the request: the caller's ``finally`` ends the worker."""
    worker.call_id = next(_call_ids)
    fds = [*outgoing.fds, *capture_files] if capture_files else outgoing.fds
    try:
        _transport.send(
            worker.channel, CallRequest(worker.call_id, outgoing.payload, bool(capture_files), pipelined), fds
        )
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


@_interrupts.protected
def _receive(
    worker: Worker, call_id: int, max_result_size: int | None, calls: int, queued: bool = False
) -> _Received | None:
    """Receive the reply to ``call_id`` and copy its segments (the worker keeps them only
    until told); None if the worker's channel closed (it died). The channel is readable:
    this does not block, and runs whole (an interrupt between the receive and taking
    charge of the descriptors that came with it would leak them). ``queued``: requests
    may be queued behind it, and a ``CallSkipped`` for one raises ``_Skipped``."""
    try:
        received = _transport.recv(worker.channel)
    except ConnectionResetError:
        return None
    if received is None:
        return None
    message, fds = received
    while isinstance(message, FilesLoaded):
        # Hot reload: what the call loaded comes just before its reply (the worker set
        # takes note when the worker is checked in).
        worker.loaded.append(message)
        try:
            received = _transport.recv(worker.channel)
        except ConnectionResetError:
            return None
        if received is None:
            return None
        message, fds = received
    if not isinstance(message, (CallResult, CallFailure)) or message.call_id != call_id:
        _buffers.close_all(fds)
        if queued and isinstance(message, CallSkipped):
            raise _Skipped(message.call_id)
        raise ProtocolError(f"unexpected {message!r} from worker {worker.pid} (waiting for call {call_id})")
    # Sizes come from the worker: checked against what the call may return before
    # anything is mapped or copied (a ProtocolError ends the worker).
    limit = _serialization.reply_limit(max_result_size, 1 if isinstance(message, CallFailure) else calls)
    try:
        data, buffers = _serialization.from_wire(message.payload, fds, worker.pid, max_bytes=limit)
    except (OSError, ValueError) as exc:
        raise SerializationError(
            f"cannot receive the call's result from worker {worker.pid}: {exc}", direction="result", stage="load"
        ) from exc
    held_bytes = sum(segment.size for segment in message.payload.segments if segment.address is not None)
    if held_bytes:
        # Let the worker free them now rather than at its next call.
        try:
            _transport.send(worker.channel, SegmentsCopied())
        except OSError:
            pass  # it is gone; what it held went with it
    return message, data, buffers, held_bytes


def _decode(message: CallResult | CallFailure, data: bytes | memoryview, buffers: list[memoryview]) -> object:
    """The call's value, or the exception it raised (returned, not raised)."""
    if isinstance(message, CallResult):
        return _serialization.loads_received(data, buffers, "result")
    failure, _ = _serialization.loads_failure(data)
    return _serialization.exception_from_failure(failure)


def _crash_error(workers: WorkerLender, worker: Worker, status: ExitStatus | None, target: str) -> BaseException:
    if workers.closed:
        return PoolClosedError(f"the pool was closed while {target} ran")
    exitcode, signum = status if status is not None else (None, None)
    how = describe_exit(exitcode, signum) if status is not None else "ended without an exit status"
    cause = workers.reload_crash_cause(worker)
    return WorkerCrashedError(
        f"worker {worker.pid} {how} while running {target}{cause}",
        pid=worker.pid,
        exitcode=exitcode if exitcode is not None else (-signum if signum else None),
        signal=signum,
    )


# -- naming things in messages ------------------------------------------------------------


def describe_target(request: Request) -> str:
    """``module:attr`` for a call by name, the function's qualified name otherwise."""
    if request.how == BY_NAME:
        module, attr = cast("tuple[str, str]", request.target)
        return f"{module}:{attr}"
    if request.how == METHOD:
        return f"method {request.target}"
    if request.how in (CLOSE_HOSTED, BUILD_HOSTED):
        return "the service's object"
    name = _qualified_name(request.target)
    return f"map({name})" if request.how == BATCH else name


def _qualified_name(function: object) -> str:
    while isinstance(function, functools.partial):
        function = function.func
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if qualname is None:
        return repr(function)
    return f"{module}.{qualname}" if module else str(qualname)


def find_unpicklable(request: Request) -> str | None:
    """Which part of a request does not pickle (only on the failure path): the target
    (or the ``self`` of a bound method), a positional argument, or a keyword."""
    candidates: list[tuple[str, object]] = []
    target = request.target
    bound_self = getattr(target, "__self__", None)
    if request.how in (BY_VALUE, BATCH):
        if bound_self is not None and not isinstance(bound_self, type(sys)):
            candidates.append(("self of the bound method", bound_self))
        candidates.append(("the function", target))
    items = request.args if request.how != BATCH else tuple(itertools.chain.from_iterable(request.args))  # type: ignore[arg-type]
    candidates += [(f"argument {index}", value) for index, value in enumerate(items)]
    candidates += [(f"keyword argument {name!r}", value) for name, value in request.kwargs.items()]
    for label, value in candidates:
        try:
            _serialization.dumps(value)
        except Exception:  # noqa: BLE001 - looking for the first that fails
            return f"{label} (a {type(value).__name__}) cannot be pickled"
    return None


# -- drivers ------------------------------------------------------------------------------

_warned_loop_thread = False


def warn_if_loop_thread(stacklevel: int) -> None:
    """Warn (once per process) that a blocking call stalls the event loop of this thread."""
    global _warned_loop_thread
    if not _warned_loop_thread and event_loop_runs_in_this_thread():
        _warned_loop_thread = True
        warnings.warn(
            "a blocking freshproc call (call_sync, run_sync, map_sync, ...) was made in a thread that "
            "runs an event loop: the loop stalls until it returns; use `await pool.call(...)` there instead",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )


def drive_sync(steps: Generator[Step, Any, Reply], workers: WorkerLender) -> Reply:
    """Run a round trip, blocking this thread."""
    warn_if_loop_thread(stacklevel=4)
    sent: object = None
    errors: list[BaseException] = []  # at most one: what to throw into the round trip
    while True:
        try:
            step = _advance(steps, sent, errors)
        except StopIteration as done:
            return cast("Reply", done.value)
        try:
            sent = _perform_sync(step, workers)
        except BaseException as exc:  # noqa: BLE001 - thrown into the round trip
            errors.append(exc)


def _advance(steps: Generator[Step, Any, Reply], sent: object, errors: list[BaseException]) -> Step:
    """The round trip's next step: it gets ``sent``, or has the error in ``errors`` thrown
    into it. The error is taken out of the driver's hands first: an exception that
    propagates keeps the driver's frame, and must find no way back to itself there."""
    if not errors:
        return steps.send(sent)
    error = errors.pop()
    try:
        return steps.throw(error)
    finally:
        del error


def _perform_sync(step: Step, workers: WorkerLender) -> object:
    match step:
        case WaitReadable():
            raise AssertionError("a blocking round trip waits for its reply itself")
        case WaitForWorker(lease):
            wait_sync(lease)
        case StartTemplate():
            workers.start()
        case WaitForExit(worker):
            exit_waiter: SyncWaiter[ExitStatus] = SyncWaiter()
            if workers.watch_exit(worker, exit_waiter):
                exit_waiter.wait(EXIT_STATUS_WAIT)
                return exit_waiter.peek()
            return worker.exit_status
    return None


async def drive_async(steps: Generator[Step, Any, Reply], workers: WorkerLender, async_library: str) -> Reply:
    """Run a round trip on the running event loop (asyncio or trio)."""
    if async_library == "trio":
        _interrupts.register_with_trio()
    sent: object = None
    errors: list[BaseException] = []  # at most one: what to throw into the round trip
    while True:
        try:
            step = _advance(steps, sent, errors)
        except StopIteration as done:
            return cast("Reply", done.value)
        try:
            sent = await _perform_async(step, workers, async_library)
        except BaseException as exc:  # noqa: BLE001 - thrown into the round trip
            errors.append(exc)


async def _perform_async(step: Step, workers: WorkerLender, async_library: str) -> object:
    match step:
        case WaitReadable(channel, timeout):
            if timeout is None:
                await _wait_readable(channel, async_library)
                return True
            with anyio.move_on_after(timeout) as scope:
                await _wait_readable(channel, async_library)
            return not scope.cancelled_caught
        case WaitForWorker(lease):
            await wait_async(lease)
        case StartTemplate():
            await workers.start_async()
        case WaitForExit(worker):
            exit_waiter: AsyncWaiter[ExitStatus] = AsyncWaiter()
            if workers.watch_exit(worker, exit_waiter):
                with anyio.move_on_after(EXIT_STATUS_WAIT):
                    await exit_waiter.wait()
                return exit_waiter.peek()
            return worker.exit_status
    return None


async def _wait_readable(channel: socket.socket, async_library: str) -> None:
    """``anyio.wait_readable``, with a shorter path on asyncio (the hot path of every call).

    The channel stays registered with the loop between calls (see ``_loopreader``).
    """
    if async_library != "asyncio":
        await anyio.wait_readable(channel)
        return
    await _loopreader.wait_readable(channel)


def _wait_readable_sync(worker: Worker, timeout: float | None) -> bool:
    """Wait for the worker's channel to become readable; False if ``timeout`` passed first."""
    poller = worker.poller
    if poller is None:
        poller = worker.poller = select.poll()
        poller.register(worker.channel.fileno(), select.POLLIN)
    if timeout is None:
        poller.poll()
        return True
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if poller.poll(max(0, math.ceil(remaining * 1000))):
            return True


def run_blocking(
    workers: WorkerLender,
    request: Request,
    *,
    timeout: float | None,
    capture: bool,
    max_result_size: int | None,
    lease: Lease | None = None,
) -> Reply:
    """One request from blocking code."""
    if workers.closed:
        raise workers.closed_error()
    if not workers.started:
        workers.start()
    steps = round_trip(
        workers,
        request,
        timeout=timeout,
        capture=capture,
        async_library="asyncio",
        blocking=True,
        max_result_size=max_result_size,
        lease=lease,
    )
    return drive_sync(steps, workers)


async def run_async(
    workers: WorkerLender,
    request: Request,
    *,
    policy_timeout: float | None,
    capture: bool,
    max_result_size: int | None,
) -> Reply:
    """One request from a task on asyncio or trio."""
    if workers.closed:
        raise workers.closed_error()
    async_library = current_async_library()
    if not workers.started:
        await workers.start_async()
    steps = round_trip(
        workers,
        request,
        timeout=policy_timeout,
        capture=capture,
        async_library=async_library,
        blocking=False,
        max_result_size=max_result_size,
    )
    return await drive_async(steps, workers, async_library)


__all__ = ["Reply", "Request", "describe_target", "run_async", "run_blocking"]
