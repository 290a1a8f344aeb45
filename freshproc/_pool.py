"""Pool: the public pool class, and one call's round trip on a worker.

Data flow (message names from ``_protocol``)::

    caller ──CallRequest──▶ worker              the caller writes to the worker it checked out
    caller ◀─CallResult / CallFailure── worker   and reads the reply itself: no thread hop

The arguments are pickled before a worker is checked out, so an unpicklable argument
fails before anything is sent. A worker whose call crashed, timed out or was cancelled is
never reused (``_workers.WorkerSet.release``), so a late reply cannot reach another call.
Which worker serves a call, and when workers are started and retired, is ``_workers``'s
business.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

if sys.version_info >= (3, 11):
    from typing import TypeVarTuple, Unpack
else:
    from typing_extensions import TypeVarTuple, Unpack

import anyio
import anyio.to_thread

from freshproc import _buffers, _serialization, _transport
from freshproc._errors import (
    CallTimeoutError,
    PoolClosedError,
    ProtocolError,
    SerializationError,
    WorkerCrashedError,
    WorkerStartupError,
    describe_exit,
)
from freshproc._policy import PoolOptions
from freshproc._protocol import CallFailure, CallRequest, CallResult, SegmentsCopied
from freshproc._waiters import AsyncWaiter, SyncWaiter, Waiter
from freshproc._worker import BATCH, BY_NAME, BY_VALUE
from freshproc._workers import ExitStatus, Outcome, PoolStats, TemplateLost, Worker, WorkerSet

if TYPE_CHECKING:
    import socket

RetT = TypeVar("RetT")
PosArgsT = TypeVarTuple("PosArgsT")

# How often one call starts a new template after losing the one it waited on.
_TEMPLATE_RESTARTS = 3
# How long a caller that saw its worker's channel close waits for the exit status.
_EXIT_STATUS_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Captured(Generic[RetT]):
    """A call's value with the output it wrote (see ``Pool.call_captured``)."""

    value: RetT
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class _Reply:
    message: CallResult | CallFailure
    data: bytes | memoryview
    buffers: list[memoryview]
    #: Bytes the worker holds for us until told they are copied (by-address segments).
    held_bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


#: How many map items one request carries at most.
_MAP_BATCH = 256


def _batch_outcome(outcome: tuple[bool, object]) -> object:
    ok, value = outcome
    if ok:
        return value
    return _Failed(_serialization.exception_from_failure(cast("_serialization.Failure", value)))


#: (how the target is named, the target, positional arguments, keyword arguments)
Request = tuple[int, object, tuple[object, ...], Mapping[str, object]]


class Pool:
    """A pool of isolated worker processes.

    Every worker starts as a fork of a clean template process (never of the caller), so
    it holds only Python's start-up modules, freshproc's worker runtime and ``preload``.
    Use it with ``async with`` or ``with``; the module-level functions use a default pool.

    :param workers: how many workers may run at once (default: the number of CPUs).
    :param fresh: run every call in a worker that has run no earlier call.
    :param max_calls_per_worker: retire a worker after this many calls.
    :param idle_timeout: seconds an idle worker lives before it exits (None: forever).
    :param timeout: policy timeout in seconds: a longer call raises CallTimeoutError and
        its worker (with every process it started) is ended.
    :param preload: modules imported once into the template every worker starts from.
    :param env: environment variables added for the workers; a ``PYTHONPATH`` here also
        goes in front of the workers' ``sys.path``.
    :param cwd: the workers' working directory.
    :param max_memory: recycle a worker whose resident memory after a call exceeds this
        (bytes, or a size such as ``"512MB"``).
    :param memory_limit: hard address-space cap inside each worker: allocations beyond it
        raise MemoryError in the call, and the worker is replaced afterwards.
    :param capture_output: capture each call's stdout and stderr instead of forwarding them
        to the caller's: failed calls carry it as ``exc.captured_output`` (and a note), and
        ``call_captured``/``run_captured`` return it with the value.
    :param grace_period: seconds between SIGTERM and SIGKILL when a call is ended.
    :param max_result_size: the largest pickled result (bytes or a size such as "1GB") a
        worker sends back; a larger one raises SerializationError and the worker carries on.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        fresh: bool = False,
        max_calls_per_worker: int | None = None,
        idle_timeout: float | None = 300.0,
        timeout: float | None = None,
        preload: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        max_memory: int | str | None = None,
        memory_limit: int | str | None = None,
        capture_output: bool = False,
        grace_period: float = 1.0,
        max_result_size: int | str | None = None,
        backend: str = "local",
    ) -> None:
        self._options = PoolOptions.build(
            workers=workers,
            fresh=fresh,
            max_calls_per_worker=max_calls_per_worker,
            idle_timeout=idle_timeout,
            timeout=timeout,
            preload=preload,
            env=env,
            cwd=cwd,
            max_memory=max_memory,
            memory_limit=memory_limit,
            capture_output=capture_output,
            grace_period=grace_period,
            max_result_size=max_result_size,
            backend=backend,
        )
        self._workers = WorkerSet(self._options)
        self._call_ids = itertools.count(1)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def options(self) -> PoolOptions:
        return self._options

    @property
    def closed(self) -> bool:
        return self._workers.closed

    def start(self) -> None:
        """Start the template (blocking); calls do this on demand."""
        self._workers.start()

    async def start_async(self) -> None:
        await self._workers.start_async()

    def close(self) -> None:
        """End every worker and the template, and wait for them. Idempotent.

        Calls still running raise PoolClosedError; calls waiting for a worker too.
        """
        self._workers.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> Pool:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Pool:
        await self.start_async()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()

    def recycle(self) -> None:
        """Replace every worker before it serves another call: idle ones now, busy ones
        when their call ends. Replacements are started ahead of demand."""
        self._workers.recycle()

    def stats(self) -> PoolStats:
        return self._workers.stats()

    def worker_pids(self) -> list[int]:
        """The pids of the workers alive now (for diagnostics and tests)."""
        return self._workers.pids()

    @property
    def template_pid(self) -> int | None:
        return self._workers.template_pid

    # -- public calls -----------------------------------------------------------------

    async def call(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
        """Import ``module`` in a worker, resolve ``attr`` (dotted) and call it.

        Cancelling the call (anyio cancellation) ends its worker and re-raises the native
        cancellation; the pool starts a replacement.
        """
        return await self._call_async((BY_NAME, (module, attr), args, kwargs), self._options.timeout, capture=False)

    @overload
    async def run(
        self, fn: Callable[[Unpack[PosArgsT]], Coroutine[Any, Any, RetT]], /, *args: Unpack[PosArgsT]
    ) -> RetT: ...
    @overload
    async def run(self, fn: Callable[[Unpack[PosArgsT]], RetT], /, *args: Unpack[PosArgsT]) -> RetT: ...
    async def run(self, fn: Callable[[Unpack[PosArgsT]], Any], /, *args: Unpack[PosArgsT]) -> Any:
        """Run ``fn(*args)`` in a worker; ``fn`` travels by value where it must (lambdas,
        closures, ``__main__``). A coroutine function runs on an event loop in the worker.
        Cancellation ends the worker, as for ``call``."""
        return await self._call_async((BY_VALUE, fn, args, {}), self._options.timeout, capture=False)

    def call_sync(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
        """Blocking ``call``. KeyboardInterrupt while waiting ends the worker and propagates."""
        return self._call_sync((BY_NAME, (module, attr), args, kwargs), self._options.timeout, capture=False)

    @overload
    def run_sync(
        self, fn: Callable[[Unpack[PosArgsT]], Coroutine[Any, Any, RetT]], /, *args: Unpack[PosArgsT]
    ) -> RetT: ...
    @overload
    def run_sync(self, fn: Callable[[Unpack[PosArgsT]], RetT], /, *args: Unpack[PosArgsT]) -> RetT: ...
    def run_sync(self, fn: Callable[[Unpack[PosArgsT]], Any], /, *args: Unpack[PosArgsT]) -> Any:
        """Blocking ``run``."""
        return self._call_sync((BY_VALUE, fn, args, {}), self._options.timeout, capture=False)

    async def call_captured(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Captured[Any]:
        """``call``, returning the value with the output the call wrote."""
        return await self._call_async((BY_NAME, (module, attr), args, kwargs), self._options.timeout, capture=True)  # type: ignore[return-value]

    @overload
    async def run_captured(
        self, fn: Callable[[Unpack[PosArgsT]], Coroutine[Any, Any, RetT]], /, *args: Unpack[PosArgsT]
    ) -> Captured[RetT]: ...
    @overload
    async def run_captured(
        self, fn: Callable[[Unpack[PosArgsT]], RetT], /, *args: Unpack[PosArgsT]
    ) -> Captured[RetT]: ...
    async def run_captured(self, fn: Callable[[Unpack[PosArgsT]], Any], /, *args: Unpack[PosArgsT]) -> Any:
        """``run``, returning the value with the output the call wrote."""
        return await self._call_async((BY_VALUE, fn, args, {}), self._options.timeout, capture=True)

    @overload
    def run_captured_sync(
        self, fn: Callable[[Unpack[PosArgsT]], Coroutine[Any, Any, RetT]], /, *args: Unpack[PosArgsT]
    ) -> Captured[RetT]: ...
    @overload
    def run_captured_sync(
        self, fn: Callable[[Unpack[PosArgsT]], RetT], /, *args: Unpack[PosArgsT]
    ) -> Captured[RetT]: ...
    def run_captured_sync(self, fn: Callable[[Unpack[PosArgsT]], Any], /, *args: Unpack[PosArgsT]) -> Any:
        """Blocking ``run_captured``."""
        return self._call_sync((BY_VALUE, fn, args, {}), self._options.timeout, capture=True)

    async def map(
        self, fn: Callable[..., Awaitable[RetT] | RetT], /, *iterables: Iterable[object]
    ) -> AsyncIterator[RetT]:
        """Apply ``fn`` to the items of ``iterables`` in workers, concurrently; yield the
        results in input order. The first failure is raised when its turn comes.

        Items travel in batches, one request per worker at a time, so that many small
        calls cost little more than their pickles. A pool that is ``fresh``, has
        ``max_calls_per_worker`` or a policy ``timeout`` sends one call per request, as
        those policies are per call. Cancelling the iteration ends the workers running it.
        """
        items = zip(*iterables, strict=False)
        options = self._options
        batched = not options.fresh and options.max_calls_per_worker is None and options.timeout is None
        window = options.workers * (_MAP_BATCH * 2 if batched else 4)
        while chunk := list(itertools.islice(items, window)):
            outcomes = await self._run_window(fn, chunk, batched=batched)
            for outcome in outcomes:
                if isinstance(outcome, _Failed):
                    raise outcome.error
                yield outcome  # type: ignore[misc]

    async def _run_window(
        self, fn: Callable[..., object], chunk: list[tuple[object, ...]], *, batched: bool
    ) -> list[object]:
        """Run a window of map items concurrently; each outcome is a value or _Failed."""
        size = max(1, -(-len(chunk) // (2 * self._options.workers))) if batched else 1
        batches = [chunk[start : start + size] for start in range(0, len(chunk), size)]
        outcomes: list[list[object]] = [[] for _ in batches]

        async def run_batch(index: int, batch: list[tuple[object, ...]]) -> None:
            try:
                if batched:
                    request: Request = (BATCH, fn, tuple(batch), {})
                    results = await self._call_async(request, None, capture=False, calls=len(batch))
                    outcomes[index] = [_batch_outcome(result) for result in cast("list[tuple[bool, object]]", results)]
                else:
                    value = await self._call_async((BY_VALUE, fn, batch[0], {}), self._options.timeout, capture=False)
                    outcomes[index] = [value]
            except Exception as exc:  # noqa: BLE001 - raised in order by map()
                outcomes[index] = [_Failed(exc)]

        async with anyio.create_task_group() as group:
            for index, batch in enumerate(batches):
                group.start_soon(run_batch, index, batch)
        return [outcome for batch_outcomes in outcomes for outcome in batch_outcomes]

    def map_sync(self, fn: Callable[..., Awaitable[RetT] | RetT], /, *iterables: Iterable[object]) -> list[RetT]:
        """Blocking ``map``: a list of the results, in input order."""

        async def collect() -> list[RetT]:
            return [value async for value in self.map(fn, *iterables)]

        return anyio.run(collect)

    async def submit(self, request: Request, *, policy_timeout: float | None) -> object:
        """Run a prepared request (used by ``isolated``) with its own policy timeout."""
        return await self._call_async(request, policy_timeout, capture=False)

    def submit_sync(self, request: Request, *, policy_timeout: float | None) -> object:
        return self._call_sync(request, policy_timeout, capture=False)

    # -- one call ---------------------------------------------------------------------

    def _encode(self, request: Request, capture: bool) -> _serialization.Outgoing:
        how, target, args, kwargs = request
        return _serialization.dumps_to_wire(
            (how, target, args, kwargs, capture or self._options.capture_output),
            "arguments",
            direct=self._workers.direct_copy,
        )

    async def _call_async(
        self, request: Request, policy_timeout: float | None, *, capture: bool, calls: int = 1
    ) -> object:
        if self._workers.closed:
            raise self._workers.closed_error()
        await self.start_async()
        outgoing = self._encode(request, capture)  # SerializationError: nothing was sent
        try:
            worker = await self._dispatch_async(outgoing)
        finally:
            outgoing.close()
        outcome: Outcome = "abandoned"
        reply: _Reply | None = None
        try:
            if policy_timeout is None:
                await _wait_readable(worker.channel)
            else:
                with anyio.move_on_after(policy_timeout) as scope:
                    await _wait_readable(worker.channel)
                if scope.cancelled_caught:
                    raise CallTimeoutError(f"the call did not finish within {policy_timeout} s; its worker was ended")
            reply = self._receive(worker)
            if reply is None:
                outcome = "crashed"
                raise await self._crash_error_async(worker)
            outcome = "reuse"
        finally:
            self._workers.release(
                worker,
                outcome,
                recycle_requested=reply is not None and reply.message.recycle,
                calls=calls,
                keepalive=outgoing.keepalive,
                held_bytes=reply.held_bytes if reply is not None else 0,
            )
        return self._result(reply, capture)

    def _call_sync(self, request: Request, policy_timeout: float | None, *, capture: bool) -> object:
        if self._workers.closed:
            raise self._workers.closed_error()
        self.start()
        outgoing = self._encode(request, capture)
        try:
            worker = self._dispatch_sync(outgoing)
        finally:
            outgoing.close()
        outcome: Outcome = "abandoned"
        reply: _Reply | None = None
        try:
            if not _wait_readable_sync(worker.channel, policy_timeout):
                raise CallTimeoutError(f"the call did not finish within {policy_timeout} s; its worker was ended")
            reply = self._receive(worker)
            if reply is None:
                outcome = "crashed"
                raise self._crash_error_sync(worker)
            outcome = "reuse"
        finally:
            self._workers.release(
                worker,
                outcome,
                recycle_requested=reply is not None and reply.message.recycle,
                keepalive=outgoing.keepalive,
                held_bytes=reply.held_bytes if reply is not None else 0,
            )
        return self._result(reply, capture)

    # A worker that died idle before the request reached it has run nothing: it is
    # replaced, and the request goes to another worker.

    # If the template is lost while a call waits for a worker, nothing was sent: the call
    # starts a new template and waits again, a few times at most.

    async def _dispatch_async(self, outgoing: _serialization.Outgoing) -> Worker:
        """Check out a worker and hand it the request."""
        for attempt in range(_TEMPLATE_RESTARTS + 1):
            try:
                worker = await self._workers.acquire_async()
            except TemplateLost as lost:
                if attempt == _TEMPLATE_RESTARTS:
                    raise WorkerStartupError(f"the worker template keeps ending: {lost}") from None
                await self.start_async()
                continue
            if self._send(worker, outgoing):
                return worker
            self._workers.release(worker, "crashed")
        raise AssertionError("unreachable")

    def _dispatch_sync(self, outgoing: _serialization.Outgoing) -> Worker:
        for attempt in range(_TEMPLATE_RESTARTS + 1):
            try:
                worker = self._workers.acquire_sync()
            except TemplateLost as lost:
                if attempt == _TEMPLATE_RESTARTS:
                    raise WorkerStartupError(f"the worker template keeps ending: {lost}") from None
                self.start()
                continue
            if self._send(worker, outgoing):
                return worker
            self._workers.release(worker, "crashed")
        raise AssertionError("unreachable")

    def _send(self, worker: Worker, outgoing: _serialization.Outgoing) -> bool:
        """Send the request; False if the worker was already gone (so it never got it).

        Anything else that goes wrong around the send (an interrupt, say) leaves us unsure
        whether the worker got the request: it is ended, and the exception propagates.
        """
        worker.call_id = next(self._call_ids)
        try:
            _transport.send(worker.channel, CallRequest(worker.call_id, outgoing.payload), outgoing.fds)
        except (BrokenPipeError, ConnectionResetError):
            return False
        except BaseException:
            self._workers.release(worker, "abandoned", keepalive=outgoing.keepalive)
            raise
        return True

    def _receive(self, worker: Worker) -> _Reply | None:
        try:
            received = _transport.recv(worker.channel)
        except ConnectionResetError:
            return None
        if received is None:
            return None
        message, fds = received
        if not isinstance(message, (CallResult, CallFailure)) or message.call_id != worker.call_id:
            _buffers.close_all(fds)
            raise ProtocolError(f"unexpected {message!r} from worker {worker.pid} (waiting for call {worker.call_id})")
        # Copy the segments now: the worker keeps them only until its next request. Nothing
        # is mapped or copied beyond what the limit allows: a failure is one record, a result
        # may be a whole map batch (until the request's own count reaches here).
        calls = 1 if isinstance(message, CallFailure) else _MAP_BATCH
        limit = _serialization.reply_limit(self._options.max_result_size, calls)
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
        return _Reply(message, data, buffers, held_bytes)

    def _result(self, reply: _Reply | None, capture: bool) -> object:
        assert reply is not None
        message = reply.message
        if isinstance(message, CallResult):
            value = _serialization.loads_received(reply.data, reply.buffers, "result")
            if capture or self._options.capture_output:
                result, (stdout, stderr) = cast("tuple[object, tuple[bytes, bytes]]", value)
                return Captured(result, _text(stdout), _text(stderr)) if capture else result
            return value
        failure, captured = _serialization.loads_failure(reply.data)
        exc = _serialization.exception_from_failure(failure)
        if captured is not None:
            _attach_output(exc, captured)
        raise exc

    async def _crash_error_async(self, worker: Worker) -> BaseException:
        waiter: AsyncWaiter[ExitStatus] = AsyncWaiter()
        if self._workers.watch_exit(worker, waiter):
            with anyio.move_on_after(_EXIT_STATUS_WAIT):
                await waiter.wait()
        return self._crash_error(worker, waiter)

    def _crash_error_sync(self, worker: Worker) -> BaseException:
        waiter: SyncWaiter[ExitStatus] = SyncWaiter()
        if self._workers.watch_exit(worker, waiter):
            waiter.wait(_EXIT_STATUS_WAIT)
        return self._crash_error(worker, waiter)

    def _crash_error(self, worker: Worker, waiter: Waiter[ExitStatus]) -> BaseException:
        if self._workers.closed:
            return PoolClosedError("the pool was closed while the call ran")
        status = waiter.peek()
        exitcode, signum = status if status is not None else (None, None)
        how = describe_exit(exitcode, signum) if status is not None else "ended without an exit status"
        return WorkerCrashedError(
            f"worker {worker.pid} {how} while running the call",
            pid=worker.pid,
            exitcode=exitcode if exitcode is not None else (-signum if signum else None),
            signal=signum,
        )


async def _wait_readable(channel: socket.socket) -> None:
    """``anyio.wait_readable``, with a shorter path on asyncio (the hot path of every call).

    A cancelled wait (anyio cancel scopes cancel the task) removes the reader like anyio's.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio, or another backend: anyio's own path
        await anyio.wait_readable(channel)
        return
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        # Level-triggered: it may fire again before the task resumes and removes it.
        if not ready.done():
            ready.set_result(None)

    fd = channel.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _wait_readable_sync(channel: socket.socket, timeout: float | None) -> bool:
    """Wait for the channel to become readable; False if ``timeout`` passed first. With no
    timeout it returns at once: the blocking receive that follows does the waiting."""
    if timeout is None:
        return True  # the receive that follows blocks by itself
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if _transport.wait_readable([channel.fileno()], remaining):
            return True


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _attach_output(exc: BaseException, captured: tuple[bytes, bytes]) -> None:
    stdout, stderr = _text(captured[0]), _text(captured[1])
    try:
        exc.captured_output = (stdout, stderr)  # type: ignore[attr-defined]
    except AttributeError:
        return
    if sys.version_info >= (3, 11) and (stdout or stderr):
        exc.add_note(f"captured stdout:\n{stdout}captured stderr:\n{stderr}")
