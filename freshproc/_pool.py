"""WorkerPool: hands workers to calls, replaces them, and closes them all.

Data flow (message names from ``_protocol``)::

    caller ──CallRequest──▶ worker            (the caller writes to the worker it checked out)
    caller ◀─CallResult / CallFailure── worker (and reads the reply itself: no thread hop)

    pool ──SpawnWorkers / TerminateWorker──▶ template
    pool ◀─WorkerSpawned (+ channel fd) / WorkerExited── template
         └─ read by the pool's supervisor thread, which also expires idle workers

A worker serves one call at a time. A caller checks one out (``_acquire_*``), round-trips
on its channel, and checks it back in (``_release``), where the policies decide whether
it serves again, is handed to the next waiting caller, or is retired. A worker whose call
crashed, timed out or was cancelled is never reused, so a late reply cannot reach another
call. All pool state is guarded by one lock; waiting happens outside it, on ``Waiter``s
that the supervisor or a releasing caller wakes from any thread.
"""

from __future__ import annotations

import itertools
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, overload

if sys.version_info >= (3, 11):
    from typing import TypeVarTuple, Unpack
else:
    from typing_extensions import TypeVarTuple, Unpack

import anyio
import anyio.to_thread

from freshproc import _buffers, _serialization, _transport
from freshproc._backends import create_source
from freshproc._backends._base import Exited, Lost, Spawned, WorkerSource, WorkerSourceOptions
from freshproc._errors import (
    CallTimeoutError,
    PoolClosedError,
    ProtocolError,
    WorkerCrashedError,
    WorkerStartupError,
    describe_exit,
)
from freshproc._policy import PoolOptions, WorkerRecord, idle_deadline, retire_after_call
from freshproc._protocol import CallFailure, CallRequest, CallResult, Payload
from freshproc._waiters import AsyncWaiter, SyncWaiter, Waiter
from freshproc._worker import BY_NAME, BY_VALUE

if TYPE_CHECKING:
    import socket

RetT = TypeVar("RetT")
PosArgsT = TypeVarTuple("PosArgsT")

# How long a caller that saw its worker's channel close waits for the exit status.
_EXIT_STATUS_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Captured(Generic[RetT]):
    """A call's value with the output it wrote (see ``Pool.call_captured``)."""

    value: RetT
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's counters."""

    workers_alive: int
    workers_idle: int
    calls_served: int
    workers_started: int
    workers_recycled: int
    workers_crashed: int


class _Worker:
    __slots__ = ("channel", "exit_status", "exit_waiters", "pid", "record", "retiring")

    def __init__(self, pid: int, channel: socket.socket, generation: int) -> None:
        self.pid = pid
        self.channel = channel
        self.record = WorkerRecord(generation)
        self.retiring = False
        self.exit_status: tuple[int | None, int | None] | None = None
        self.exit_waiters: list[Waiter[tuple[int | None, int | None]]] = []


@dataclass(frozen=True, slots=True)
class _Reply:
    message: CallResult | CallFailure
    fds: list[int]


_Outcome = Literal["reuse", "crashed", "abandoned"]


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


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
        # The workers' sys.path is the caller's at the time the pool is made.
        self._sys_path = tuple(sys.path)
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._source: WorkerSource | None = None
        self._supervisor: threading.Thread | None = None
        self._closed = False
        self._workers: dict[int, _Worker] = {}  # alive and not retiring
        self._retiring: dict[int, _Worker] = {}
        self._idle: deque[_Worker] = deque()
        self._waiters: deque[Waiter[_Worker]] = deque()
        self._spawning = 0
        self._warm = self._options.workers if self._options.fresh else 0
        self._generation = 0
        self._call_ids = itertools.count(1)
        self._calls_served = 0
        self._started = 0
        self._recycled = 0
        self._crashed = 0
        self._clock: Callable[[], float] = time.monotonic

    # -- lifecycle --------------------------------------------------------------------

    @property
    def options(self) -> PoolOptions:
        return self._options

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Start the template (blocking); calls do this on demand."""
        with self._start_lock:
            if self._closed:
                raise PoolClosedError("the pool is closed")
            if self._source is not None:
                return
            options = self._options
            source = create_source(
                options.backend,
                WorkerSourceOptions(
                    preload=options.preload,
                    env=options.env,
                    cwd=options.cwd,
                    sys_path=self._sys_path,
                    memory_limit=options.memory_limit,
                    max_result_size=options.max_result_size,
                ),
            )
            source.start()
            supervisor = threading.Thread(
                target=self._supervise, args=(source,), name="freshproc-supervisor", daemon=True
            )
            with self._lock:
                self._source = source
                self._supervisor = supervisor
                supervisor.start()
                self._replenish()

    async def start_async(self) -> None:
        if self._source is None:
            await anyio.to_thread.run_sync(self.start)

    def close(self) -> None:
        """End every worker and the template, and wait for them. Idempotent.

        Calls still running raise PoolClosedError; calls waiting for a worker too.
        """
        with self._start_lock:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                waiters = list(self._waiters)
                self._waiters.clear()
                idle = list(self._idle)
                self._idle.clear()
                source, supervisor = self._source, self._supervisor
            for waiter in waiters:
                waiter.wake(error=PoolClosedError("the pool was closed while the call waited for a worker"))
            for worker in idle:
                worker.channel.close()
            if source is not None:
                source.close()
            if supervisor is not None and supervisor is not threading.current_thread():
                supervisor.join()

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
        with self._lock:
            self._generation += 1
            self._warm = max(self._warm, len(self._workers))
            while self._idle:
                self._recycled += 1
                self._retire(self._idle.popleft(), grace=0.0)
            self._replenish()

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                workers_alive=len(self._workers),
                workers_idle=len(self._idle),
                calls_served=self._calls_served,
                workers_started=self._started,
                workers_recycled=self._recycled,
                workers_crashed=self._crashed,
            )

    def worker_pids(self) -> list[int]:
        """The pids of the workers alive now (for diagnostics and tests)."""
        with self._lock:
            return list(self._workers)

    @property
    def template_pid(self) -> int | None:
        return self._source.pid if self._source else None

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
        results in input order. The first failure is raised when its turn comes."""
        items = zip(*iterables, strict=False)
        window = max(2, 4 * self._options.workers)
        while chunk := list(itertools.islice(items, window)):
            outcomes = await self._run_window(fn, chunk)
            for outcome in outcomes:
                if isinstance(outcome, _Failed):
                    raise outcome.error
                yield outcome  # type: ignore[misc]

    async def _run_window(self, fn: Callable[..., object], chunk: list[tuple[object, ...]]) -> list[object]:
        outcomes: list[object] = [None] * len(chunk)

        async def run_one(index: int, item: tuple[object, ...]) -> None:
            try:
                outcomes[index] = await self._call_async((BY_VALUE, fn, item, {}), self._options.timeout, capture=False)
            except Exception as exc:  # noqa: BLE001 - raised in order by map()
                outcomes[index] = _Failed(exc)

        async with anyio.create_task_group() as group:
            for index, item in enumerate(chunk):
                group.start_soon(run_one, index, item)
        return outcomes

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

    def _encode(self, request: Request, capture: bool) -> tuple[Payload, list[int]]:
        how, target, args, kwargs = request
        return _serialization.dumps_to_wire(
            (how, target, args, kwargs, capture or self._options.capture_output), "arguments"
        )

    async def _call_async(
        self,
        request: Request,
        policy_timeout: float | None,
        *,
        capture: bool,
    ) -> object:
        if self._closed:
            raise PoolClosedError("the pool is closed")
        payload, fds = self._encode(request, capture)  # SerializationError: nothing was sent
        try:
            await self.start_async()
            worker = await self._acquire_async()
        except BaseException:
            _buffers.close_all(fds)
            raise
        outcome: _Outcome = "abandoned"
        reply: _Reply | None = None
        try:
            with anyio.move_on_after(policy_timeout if policy_timeout is not None else float("inf")) as scope:
                while not self._send(worker, payload, fds):
                    # It died idle before the request reached it: nothing ran, try another.
                    self._release(worker, "crashed", None)
                    worker = await self._acquire_async()
                _buffers.close_all(fds)
                await anyio.wait_readable(worker.channel)
                reply = self._receive(worker)
            if scope.cancelled_caught:
                raise CallTimeoutError(f"the call did not finish within {policy_timeout} s; its worker was ended")
            if reply is None:
                outcome = "crashed"
                raise await self._crash_error_async(worker)
            outcome = "reuse"
        finally:
            _buffers.close_all(fds)
            self._release(worker, outcome, reply)
        return self._result(reply, capture)

    def _call_sync(
        self,
        request: Request,
        timeout: float | None,
        *,
        capture: bool,
    ) -> object:
        if self._closed:
            raise PoolClosedError("the pool is closed")
        payload, fds = self._encode(request, capture)
        try:
            self.start()
            worker = self._acquire_sync()
        except BaseException:
            _buffers.close_all(fds)
            raise
        outcome: _Outcome = "abandoned"
        reply: _Reply | None = None
        try:
            while not self._send(worker, payload, fds):
                self._release(worker, "crashed", None)
                worker = self._acquire_sync()
            _buffers.close_all(fds)
            if not _wait_readable_sync(worker.channel, timeout):
                raise CallTimeoutError(f"the call did not finish within {timeout} s; its worker was ended")
            reply = self._receive(worker)
            if reply is None:
                outcome = "crashed"
                raise self._crash_error_sync(worker)
            outcome = "reuse"
        finally:
            _buffers.close_all(fds)
            self._release(worker, outcome, reply)
        return self._result(reply, capture)

    def _send(self, worker: _Worker, payload: Payload, fds: list[int]) -> bool:
        """Send the request; False if the worker was already gone (so it never got it)."""
        try:
            _transport.send(worker.channel, CallRequest(next(self._call_ids), payload), fds)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _receive(self, worker: _Worker) -> _Reply | None:
        try:
            received = _transport.recv(worker.channel)
        except ConnectionResetError:
            return None
        if received is None:
            return None
        message, fds = received
        if not isinstance(message, (CallResult, CallFailure)):
            _buffers.close_all(fds)
            raise ProtocolError(f"unexpected {type(message).__name__} from worker {worker.pid}")
        return _Reply(message, fds)

    def _result(self, reply: _Reply | None, capture: bool) -> object:
        assert reply is not None
        message = reply.message
        if isinstance(message, CallResult):
            value = _serialization.loads_from_wire(message.payload, reply.fds, "result")
            if capture or self._options.capture_output:
                result, (stdout, stderr) = cast("tuple[object, tuple[bytes, bytes]]", value)
                return Captured(result, _text(stdout), _text(stderr)) if capture else result
            return value
        data, _ = _serialization.from_wire(message.payload, reply.fds)
        failure, captured = _serialization.loads_failure(data)
        exc = _serialization.exception_from_failure(failure)
        if captured is not None:
            _attach_output(exc, captured)
        raise exc

    async def _crash_error_async(self, worker: _Worker) -> BaseException:
        waiter: AsyncWaiter[tuple[int | None, int | None]] = AsyncWaiter()
        if self._watch_exit(worker, waiter):
            with anyio.move_on_after(_EXIT_STATUS_WAIT):
                await waiter.wait()
        return self._crash_error(worker, waiter)

    def _crash_error_sync(self, worker: _Worker) -> BaseException:
        waiter: SyncWaiter[tuple[int | None, int | None]] = SyncWaiter()
        if self._watch_exit(worker, waiter):
            waiter.wait(_EXIT_STATUS_WAIT)
        return self._crash_error(worker, waiter)

    def _watch_exit(self, worker: _Worker, waiter: Waiter[tuple[int | None, int | None]]) -> bool:
        """Arrange for ``waiter`` to receive the worker's exit status; False if it is known
        already (or will never come because the pool closed)."""
        with self._lock:
            if worker.exit_status is not None:
                waiter.wake(worker.exit_status)
                return False
            if self._closed:
                return False
            worker.exit_waiters.append(waiter)
            return True

    def _crash_error(self, worker: _Worker, waiter: Waiter[tuple[int | None, int | None]]) -> BaseException:
        if self._closed:
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

    # -- checking workers out and in -----------------------------------------------------

    def _take_idle(self) -> _Worker | None:
        # Under the lock.
        if self._closed:
            raise PoolClosedError("the pool is closed")
        while self._idle:
            worker = self._idle.pop()  # the most recently used: its pages are warm
            if not _hung_up(worker.channel):
                return worker
            # An idle worker never writes: a readable channel means it died idle, and
            # the supervisor has not heard yet. Replace it; no call sees an error.
            self._crashed += 1
            self._retire(worker, grace=0.0)
            self._replenish()
        return None

    async def _acquire_async(self) -> _Worker:
        with self._lock:
            worker = self._take_idle()
            if worker is not None:
                return worker
            waiter: AsyncWaiter[_Worker] = AsyncWaiter()
            self._enqueue(waiter)
        try:
            await waiter.wait()
        except BaseException:
            self._abandon_wait(waiter)
            raise
        return waiter.result()

    def _acquire_sync(self) -> _Worker:
        with self._lock:
            worker = self._take_idle()
            if worker is not None:
                return worker
            waiter: SyncWaiter[_Worker] = SyncWaiter()
            self._enqueue(waiter)
        try:
            waiter.wait()
        except BaseException:
            self._abandon_wait(waiter)
            raise
        return waiter.result()

    def _enqueue(self, waiter: Waiter[_Worker]) -> None:
        # Under the lock.
        self._waiters.append(waiter)
        busy = len(self._workers) - len(self._idle)
        self._warm = min(self._options.workers, max(self._warm, busy + len(self._waiters)))
        self._replenish()

    def _abandon_wait(self, waiter: Waiter[_Worker]) -> None:
        """A waiting caller gave up (cancelled): withdraw it, or pass on what it got."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
            if not waiter.wake(error=PoolClosedError("abandoned")):
                worker = waiter.peek()
                if worker is not None:
                    self._check_in(worker)

    def _release(self, worker: _Worker, outcome: _Outcome, reply: _Reply | None) -> None:
        with self._lock:
            if outcome == "reuse" and reply is not None:
                worker.record.calls += 1
                self._calls_served += 1
                reason = "worker-request" if reply.message.recycle else None
                if reason is None and not self._closed:
                    reason = retire_after_call(self._options, worker.record, self._generation, self._rss(worker))
                if reason is None:
                    self._check_in(worker)
                else:
                    if reason != "fresh":
                        self._recycled += 1
                    self._retire(worker, grace=0.0)
            elif outcome == "crashed":
                self._crashed += 1
                self._retire(worker, grace=0.0)
            else:  # timed out, cancelled, interrupted, or a protocol error
                self._retire(worker, grace=self._options.grace_period)
            self._replenish()

    def _rss(self, worker: _Worker) -> int | None:
        if self._options.max_memory is None:
            return None
        import psutil

        try:
            rss: int = psutil.Process(worker.pid).memory_info().rss
        except psutil.Error:
            return None
        return rss

    def _check_in(self, worker: _Worker) -> None:
        # Under the lock: hand the worker to the first waiter, else make it idle.
        if self._closed:
            self._retire(worker, grace=0.0)
            return
        if worker.record.generation != self._generation:
            self._recycled += 1
            self._retire(worker, grace=0.0)
            return
        while self._waiters:
            if self._waiters.popleft().wake(worker):
                return
        worker.record.idle_since = self._clock()
        self._idle.append(worker)

    def _retire(self, worker: _Worker, *, grace: float) -> None:
        # Under the lock.
        if worker.retiring:
            return
        worker.retiring = True
        self._workers.pop(worker.pid, None)
        if worker.exit_status is None:
            self._retiring[worker.pid] = worker
            if self._source is not None:
                self._source.terminate(worker.pid, grace)
        worker.channel.close()

    def _replenish(self) -> None:
        """Under the lock: ask for the workers that waiting callers and standby need."""
        if self._closed or self._source is None:
            return
        busy = len(self._workers) - len(self._idle)
        wanted = max(self._warm, busy + len(self._waiters))
        wanted = min(wanted, self._options.workers)
        missing = wanted - len(self._workers) - self._spawning
        if missing > 0:
            self._spawning += missing
            self._source.spawn(missing)

    # -- the supervisor thread ------------------------------------------------------------

    def _supervise(self, source: WorkerSource) -> None:
        while True:
            event = source.read_event(self._next_timer())
            if event is None:
                self._expire_idle()
                continue
            match event:
                case Spawned(pid, channel):
                    self._on_spawned(pid, channel)
                case Exited(pid, exitcode, signum):
                    self._on_exited(pid, exitcode, signum)
                case Lost(reason):
                    self._on_lost(source, reason)
                    return

    def _next_timer(self) -> float | None:
        with self._lock:
            deadlines = [idle_deadline(self._options, worker.record) for worker in self._idle]
        known = [deadline for deadline in deadlines if deadline is not None]
        if not known:
            return self._options.idle_timeout
        return max(0.0, min(known) - self._clock())

    def _expire_idle(self) -> None:
        now = self._clock()
        with self._lock:
            for worker in list(self._idle):
                deadline = idle_deadline(self._options, worker.record)
                if deadline is not None and deadline <= now:
                    self._idle.remove(worker)
                    self._warm = max(0, self._warm - 1)
                    self._retire(worker, grace=0.0)

    def _on_spawned(self, pid: int, channel: socket.socket) -> None:
        with self._lock:
            self._spawning = max(0, self._spawning - 1)
            worker = _Worker(pid, channel, self._generation)
            self._started += 1
            self._workers[pid] = worker
            self._check_in(worker)

    def _on_exited(self, pid: int, exitcode: int | None, signum: int | None) -> None:
        with self._lock:
            worker = self._retiring.pop(pid, None)
            if worker is None:
                worker = self._workers.pop(pid, None)
                if worker is None:
                    return
                if worker in self._idle:
                    # Died while idle: replace it, no call sees an error.
                    self._idle.remove(worker)
                    self._crashed += 1
                    worker.retiring = True
                    worker.channel.close()
                    self._replenish()
            worker.exit_status = (exitcode, signum)
            waiters, worker.exit_waiters = worker.exit_waiters, []
        for waiter in waiters:
            waiter.wake(worker.exit_status)

    def _on_lost(self, source: WorkerSource, reason: str) -> None:
        with self._lock:
            if self._source is source:
                self._source = None
            waiters = list(self._waiters)
            self._waiters.clear()
            idle = list(self._idle)
            self._idle.clear()
            closed = self._closed
            self._spawning = 0
            for worker in [*self._workers.values(), *self._retiring.values()]:
                worker.exit_status = worker.exit_status or (None, None)
                for exit_waiter in worker.exit_waiters:
                    exit_waiter.wake(worker.exit_status)
                worker.exit_waiters = []
            self._workers = {w.pid: w for w in self._workers.values() if w not in idle}
            self._retiring.clear()
        for worker in idle:
            worker.channel.close()
        error: BaseException = (
            PoolClosedError("the pool was closed while the call waited for a worker")
            if closed
            else WorkerStartupError(f"no worker could be started: {reason}")
        )
        for waiter in waiters:
            waiter.wake(error=error)
        if not closed:
            source.close()


def _hung_up(channel: socket.socket) -> bool:
    poller = select.poll()
    poller.register(channel, select.POLLIN)
    return bool(poller.poll(0))


def _wait_readable_sync(channel: socket.socket, timeout: float | None) -> bool:
    """Block until the channel is readable; False if ``timeout`` passed first."""
    if timeout is None:
        return True  # the receive that follows blocks by itself
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if select.select([channel], [], [], remaining)[0]:
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
