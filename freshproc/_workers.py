"""The worker set: which workers exist, which are idle, who waits for one, and the
supervisor thread that hears from the template.

Data flow (message names from ``_protocol``)::

    WorkerSet ──SpawnWorkers / TerminateWorker──▶ template
    WorkerSet ◀─WorkerSpawned (+ channel fd) / WorkerExited / SpawnFailed── template
              └─ read by the supervisor thread, which also expires idle workers

A caller checks a worker out (``acquire_*``), runs one call on it, and checks it back in
(``release``), where the policies decide whether it serves again, is handed to the next
waiting caller, or is retired. All state is guarded by one lock; waiting happens outside
it, on ``Waiter``s that the supervisor or a releasing caller wakes from any thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.to_thread

from freshproc._backends import create_source
from freshproc._backends._base import Exited, Lost, Spawned, SpawnFailed, WorkerSource, WorkerSourceOptions
from freshproc._errors import PoolClosedError, WorkerStartupError
from freshproc._policy import PoolOptions, WorkerRecord, idle_deadline, retire_after_call
from freshproc._waiters import AsyncWaiter, SyncWaiter, Waiter

if TYPE_CHECKING:
    import socket

#: (exit code, signal number): how a worker ended, as far as is known.
ExitStatus = tuple[int | None, int | None]
#: How a call ended for its worker: served (reuse unless a policy says otherwise), the
#: worker crashed, or the call was abandoned (timed out, cancelled, interrupted).
Outcome = Literal["reuse", "crashed", "abandoned"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's counters."""

    workers_alive: int
    workers_idle: int
    calls_served: int
    workers_started: int
    workers_recycled: int
    workers_crashed: int


class Worker:
    __slots__ = ("call_id", "channel", "exit_status", "exit_waiters", "keepalive", "pid", "record", "retiring")

    def __init__(self, pid: int, channel: socket.socket, generation: int) -> None:
        self.pid = pid
        self.channel = channel
        self.record = WorkerRecord(generation)
        self.retiring = False
        self.exit_status: ExitStatus | None = None
        self.exit_waiters: list[Waiter[ExitStatus]] = []
        self.keepalive: list[object] = []  # see WorkerSet.release
        self.call_id = 0  # of the request it was sent last


class TemplateLost(Exception):
    """Internal: the template went away while a call waited; start a new one and retry."""


class ForkBackoff:
    """When the template cannot fork: retry after 10 ms, doubling, ``ATTEMPTS`` times, then
    give up on the callers waiting (about 0.3 s of failed forks in all)."""

    ATTEMPTS = 5
    FIRST_DELAY = 0.01

    def __init__(self) -> None:
        self.failures = 0
        #: When to ask again (the supervisor's clock), or None: nothing scheduled.
        self.retry_at: float | None = None

    def failed(self, now: float) -> bool:
        """Note a failed fork; False once the attempts are used up (then reset)."""
        if self.failures >= self.ATTEMPTS:
            self.reset()
            return False
        self.retry_at = now + self.FIRST_DELAY * 2**self.failures
        self.failures += 1
        return True

    def reset(self) -> None:
        self.failures = 0
        self.retry_at = None


class WorkerSet:
    def __init__(self, options: PoolOptions) -> None:
        self._options = options
        # Whose pool it is: a process forked from the owner inherits it, but not its workers.
        self._owner_pid = os.getpid()
        # The workers' sys.path is the caller's at the time the pool is made.
        self._sys_path = tuple(sys.path)
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._source: WorkerSource | None = None
        self._supervisor: threading.Thread | None = None
        self._closed = False
        self._workers: dict[int, Worker] = {}  # alive and not retiring
        self._retiring: dict[int, Worker] = {}
        self._idle: deque[Worker] = deque()
        self._waiters: deque[Waiter[Worker]] = deque()
        self._spawning = 0
        self._warm = self._options.workers if self._options.fresh else 0
        self._generation = 0
        self._calls_served = 0
        self._started = 0
        self._recycled = 0
        self._crashed = 0
        self._clock: Callable[[], float] = time.monotonic
        self._fork_backoff = ForkBackoff()
        _live_sets.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def closed_error(self) -> PoolClosedError:
        if self._owner_pid != os.getpid():
            return PoolClosedError(
                f"the pool belongs to process {self._owner_pid}; this process was forked from it "
                "and must make a pool of its own"
            )
        return PoolClosedError("the pool is closed")

    @property
    def direct_copy(self) -> bool:
        """Whether segments may travel by address (known once the template has started)."""
        source = self._source
        return source is not None and source.direct_copy

    def start(self) -> None:
        """Start the template (blocking); calls do this on demand."""
        with self._start_lock:
            if self._closed:
                raise self.closed_error()
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
                # Nothing sends to the template once it is detached here, under the lock.
                source, supervisor = self._source, self._supervisor
                self._source = None
            for waiter in waiters:
                waiter.wake(error=PoolClosedError("the pool was closed while the call waited for a worker"))
            for worker in idle:
                worker.channel.close()
            if source is not None:
                source.close()
            if supervisor is not None and supervisor is not threading.current_thread():
                supervisor.join()

    def _forsake(self) -> None:
        """In a process forked from the owner: the template and workers are the owner's.
        Drop this process's copies of their descriptors, send nothing, refuse calls."""
        # The owner's threads did not survive the fork; a lock one of them held would
        # never be released here.
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._closed = True
        for worker in [*self._workers.values(), *self._retiring.values()]:
            worker.channel.close()
        self._workers.clear()
        self._retiring.clear()
        self._idle.clear()
        self._waiters.clear()
        source, self._source, self._supervisor = self._source, None, None
        if source is not None:
            source.forsake()

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

    def pids(self) -> list[int]:
        """The pids of the workers alive now (for diagnostics and tests)."""
        with self._lock:
            return list(self._workers)

    @property
    def template_pid(self) -> int | None:
        return self._source.pid if self._source else None

    def watch_exit(self, worker: Worker, waiter: Waiter[ExitStatus]) -> bool:
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

    # -- checking workers out and in -----------------------------------------------------

    def _take_idle(self) -> Worker | None:
        # Under the lock.
        if self._closed:
            raise self.closed_error()
        if self._source is None:
            raise TemplateLost
        if not self._idle or self._busy() >= self._options.workers:
            return None
        # The most recently used: its pages are warm. One that died idle, before the
        # supervisor heard, refuses the request (EPIPE) and the call moves on to another.
        return self._idle.pop()

    def _busy(self) -> int:
        # Under the lock: workers checked out (a worker being checked in counts too).
        return len(self._workers) - len(self._idle)

    async def acquire_async(self) -> Worker:
        with self._lock:
            worker = self._take_idle()
            if worker is not None:
                return worker
            waiter: AsyncWaiter[Worker] = AsyncWaiter()
            self._enqueue(waiter)
        try:
            await waiter.wait()
        except BaseException:
            self._abandon_wait(waiter)
            raise
        return waiter.result()

    def acquire_sync(self) -> Worker:
        with self._lock:
            worker = self._take_idle()
            if worker is not None:
                return worker
            waiter: SyncWaiter[Worker] = SyncWaiter()
            self._enqueue(waiter)
        try:
            waiter.wait()
        except BaseException:
            self._abandon_wait(waiter)
            raise
        return waiter.result()

    def _enqueue(self, waiter: Waiter[Worker]) -> None:
        # Under the lock.
        self._waiters.append(waiter)
        self._warm = min(self._options.workers, max(self._warm, self._busy() + len(self._waiters)))
        self._replenish()

    def _abandon_wait(self, waiter: Waiter[Worker]) -> None:
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

    def release(
        self,
        worker: Worker,
        outcome: Outcome,
        *,
        recycle_requested: bool = False,
        calls: int = 1,
        keepalive: list[object] | None = None,
        held_bytes: int = 0,
    ) -> None:
        """Check a worker back in after a request that ran ``calls`` calls.

        ``keepalive`` is what the request's by-address segments point into: a worker
        whose call was abandoned may still be copying from it, so it stays alive until
        that worker has exited. ``held_bytes`` is the size of the reply's by-address
        segments, which the worker frees once told they are copied.
        """
        rss = self._rss(worker, held_bytes) if outcome == "reuse" else None
        with self._lock:
            if outcome == "reuse":
                worker.record.calls += calls
                self._calls_served += calls
                reason = "worker-request" if recycle_requested else None
                if reason is None and not self._closed:
                    reason = retire_after_call(self._options, worker.record, self._generation, rss)
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
                if keepalive and worker.exit_status is None:
                    worker.keepalive = keepalive
                self._retire(worker, grace=self._options.grace_period)
            self._serve_waiters()
            self._replenish()

    def _rss(self, worker: Worker, held_bytes: int) -> int | None:
        """The worker's resident memory once it lets go of the result it still holds for
        the caller to copy (``held_bytes``), when a ``max_memory`` policy needs it."""
        if self._options.max_memory is None:
            return None
        import psutil  # only pools with max_memory need it

        try:
            rss: int = psutil.Process(worker.pid).memory_info().rss
        except psutil.Error:
            return None
        return max(0, rss - held_bytes)

    def _check_in(self, worker: Worker) -> None:
        # Under the lock: hand the worker to the first waiter, else make it idle.
        if self._closed:
            self._retire(worker, grace=0.0)
            return
        if worker.record.generation != self._generation:
            self._recycled += 1
            self._retire(worker, grace=0.0)
            return
        # Handing it over keeps it busy: allowed while the others leave room.
        if self._busy() - 1 < self._options.workers:
            while self._waiters:
                if self._waiters.popleft().wake(worker):
                    return
        worker.record.idle_since = self._clock()
        self._idle.append(worker)

    def _serve_waiters(self) -> None:
        # Under the lock: a retired worker freed a slot; give waiters the standby ones.
        while self._waiters and self._idle and self._busy() < self._options.workers:
            if not self._waiters[0].wake(self._idle[-1]):
                self._waiters.popleft()
                continue
            self._waiters.popleft()
            self._idle.pop()

    def _retire(self, worker: Worker, *, grace: float) -> None:
        # Under the lock.
        if worker.retiring:
            return
        worker.retiring = True
        if self._workers.get(worker.pid) is worker:
            del self._workers[worker.pid]
        if worker.exit_status is None:
            self._retiring[worker.pid] = worker
            if self._source is not None:
                self._source.terminate(worker.pid, grace)
        worker.channel.close()

    def _replenish(self) -> None:
        """Under the lock: ask for the workers that waiting callers and standby need."""
        if self._closed or self._source is None or self._fork_backoff.retry_at is not None:
            return  # (during a fork backoff, its timer asks again)
        workers = self._options.workers
        demand = min(workers, self._busy() + len(self._waiters))
        if self._options.fresh:
            # Up to `workers` standby processes beside the busy ones, forked ahead so that
            # a fresh call rarely waits for a fork; they go when idle_timeout expires.
            wanted = demand + min(workers, self._warm)
        else:
            wanted = min(workers, max(self._warm, demand))
        missing = wanted - len(self._workers) - self._spawning
        if missing > 0:
            self._spawning += missing
            self._source.spawn(missing)

    # -- the supervisor thread ------------------------------------------------------------

    def _supervise(self, source: WorkerSource) -> None:
        try:
            self._supervise_events(source)
        except BaseException as exc:
            # A bug here must not leave calls waiting forever: treat it as losing the template.
            self._on_lost(source, f"the supervisor failed: {exc!r}")
            raise
        finally:
            # _on_lost let go of the source under the lock: nobody sends on it any more.
            source.discard()

    def _supervise_events(self, source: WorkerSource) -> None:
        while True:
            event = source.read_event(self._next_timer())
            self._retry_spawn()  # when due: events may keep the read from timing out
            if event is None:
                self._expire_idle()
                continue
            match event:
                case Spawned(pid, channel):
                    self._on_spawned(pid, channel)
                case Exited(pid, exitcode, signum):
                    self._on_exited(pid, exitcode, signum)
                case SpawnFailed(number, reason):
                    self._on_spawn_failed(number, reason)
                case Lost(reason):
                    self._on_lost(source, reason)
                    return

    def _next_timer(self) -> float | None:
        with self._lock:
            deadlines = [idle_deadline(self._options, worker.record) for worker in self._idle]
            deadlines.append(self._fork_backoff.retry_at)
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

    # -- when the template cannot fork (a process limit, memory) -------------------------------

    def _on_spawn_failed(self, number: int, reason: str) -> None:
        """``number`` requested workers will not come. Callers waiting for a new worker
        (none is idle, and there is room for one) get another fork after a backoff, and
        once the attempts are used up a WorkerStartupError; calls running are untouched,
        and callers waiting for a busy worker's slot wait on."""
        with self._lock:
            self._spawning = max(0, self._spawning - number)
            if not self._waiters or self._spawning or self._busy() >= self._options.workers:
                return
            if self._fork_backoff.failed(self._clock()):
                return  # the supervisor's timer calls _retry_spawn
            waiters = list(self._waiters)
            self._waiters.clear()
        for waiter in waiters:  # one exception each: each caller raises its own
            waiter.wake(error=WorkerStartupError(f"cannot fork a worker: {reason}"))

    def _retry_spawn(self) -> None:
        with self._lock:
            retry_at = self._fork_backoff.retry_at
            if retry_at is None or retry_at > self._clock():
                return
            self._fork_backoff.retry_at = None
            if not self._waiters:
                self._fork_backoff.reset()  # nobody waits any more: standby only
            self._replenish()

    def _on_spawned(self, pid: int, channel: socket.socket) -> None:
        with self._lock:
            self._fork_backoff.reset()
            self._spawning = max(0, self._spawning - 1)
            worker = Worker(pid, channel, self._generation)
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
            worker.keepalive = []
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
            self._fork_backoff.reset()
            for worker in [*self._workers.values(), *self._retiring.values()]:
                worker.exit_status = worker.exit_status or (None, None)
                for exit_waiter in worker.exit_waiters:
                    exit_waiter.wake(worker.exit_status)
                worker.exit_waiters = []
            self._workers = {w.pid: w for w in self._workers.values() if w not in idle}
            self._retiring.clear()
        for worker in idle:
            worker.channel.close()
        # Waiting calls sent nothing yet: they start a new template and try again.
        error: BaseException = (
            PoolClosedError("the pool was closed while the call waited for a worker")
            if closed
            else TemplateLost(reason)
        )
        for waiter in waiters:
            waiter.wake(error=error)
        if not closed:
            source.close()


# Every worker set of this process, so that a forked child can disown them all.
_live_sets: weakref.WeakSet[WorkerSet] = weakref.WeakSet()


def _forsake_inherited() -> None:
    for worker_set in list(_live_sets):
        worker_set._forsake()


os.register_at_fork(after_in_child=_forsake_inherited)
