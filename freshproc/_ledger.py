"""The worker set's bookkeeping: which workers exist, which are idle, who waits for one,
and the counters behind ``Pool.stats()``.

No I/O and no threads (the clock is injected): each transition updates the ledger and returns the
``Effects`` it calls for (fork n workers, end a worker, close a channel, wake a waiting
caller, log an event). ``_workers.WorkerSet`` makes the transitions under its lock and
applies the effects after releasing it, so nothing blocking (a send to the template, a
log handler) ever runs under the lock, and every transition can be tested with plain
values.

A caller holds a worker through a ``Lease``. The ledger writes the worker into the lease
when it hands it over, so a worker is always owned by exactly one of: the idle list, a
lease, or the retiring table. A caller that is interrupted after the hand-over still
finds the worker in its lease and gives it back.

A pool that queues requests on busy workers (pipelined dispatch) keeps its queues with
``_pipeline.PipelinedLedger``, a subclass: this one (every other pool's) never pays for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

from freshproc._errors import PoolClosedError, WorkerStartupError
from freshproc._policy import PoolOptions, WorkerRecord, idle_deadline, retire_after_call

if TYPE_CHECKING:
    import select
    import socket

    from freshproc._pipeline import Pipeline, QueueEffects
    from freshproc._waiters import Waiter

#: (exit code, signal number): how a worker ended, as far as is known.
ExitStatus = tuple[int | None, int | None]

#: How a request ended, for its worker and for the counters:
#: ``ok``/``failed`` a reply came (the target returned or raised; the worker may serve
#: again); ``unused`` nothing was sent (the worker goes back as it was); ``dead`` the
#: worker refused the request (it died idle); ``crashed`` it died during the call;
#: ``timed_out``/``cancelled`` the call was given up (the worker is ended); ``broken``
#: the worker sent something malformed (it is ended); ``skipped`` a request queued on a
#: busy worker came back unstarted (``_pipeline``: it is sent again elsewhere).
Outcome = Literal["ok", "failed", "unused", "dead", "crashed", "timed_out", "cancelled", "broken", "skipped"]

#: Why a worker left the pool (each worker leaves exactly once).
ExitReason = Literal["recycled", "expired", "crashed", "timed_out", "cancelled", "retired", "closed", "lost"]

#: How often a failed fork is retried (after 10, 20, 40, 80, 160 ms) before callers
#: waiting for a new worker are failed.
SPAWN_RETRIES = 5
#: Seconds before the first spawn retry; doubles with each failure.
SPAWN_BACKOFF = 0.01


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's counters.

    Workers: ``workers_started == workers_alive + workers_exited``, and the exits add up:
    ``workers_exited == workers_recycled + workers_expired + workers_crashed +
    workers_timed_out + workers_cancelled + workers_retired + workers_closed``.
    ``workers_retired`` counts retirements by policy (fresh, max_calls_per_worker,
    max_memory, a worker's own request). Calls: ``calls_served == calls_ok +
    calls_failed`` (a reply came), and calls that got none are ``calls_crashed``,
    ``calls_timed_out`` or ``calls_cancelled``. Map items count one call each.
    """

    workers_alive: int
    workers_idle: int
    workers_started: int
    workers_exited: int
    workers_recycled: int
    workers_expired: int
    workers_crashed: int
    workers_timed_out: int
    workers_cancelled: int
    workers_retired: int
    workers_closed: int
    calls_served: int
    calls_ok: int
    calls_failed: int
    calls_crashed: int
    calls_timed_out: int
    calls_cancelled: int


class Worker:
    """One worker process, as the caller side knows it."""

    __slots__ = (
        "call_id",
        "channel",
        "exit_status",
        "exit_waiters",
        "keepalive",
        "loaded",
        "pid",
        "pipeline",
        "poller",
        "record",
        "retiring",
    )

    def __init__(self, pid: int, channel: socket.socket, generation: int) -> None:
        self.pid = pid
        self.channel = channel
        self.record = WorkerRecord(generation)
        self.retiring = False
        self.exit_status: ExitStatus | None = None
        self.exit_waiters: list[Waiter[ExitStatus]] = []
        #: What the last request's by-address segments point into, kept alive until
        #: the worker has exited when it was ended mid-call (it may still be copying).
        self.keepalive: list[object] = []
        self.call_id = 0  # of the request it was sent last
        #: A poll object on the channel, made when a blocking caller first waits on it.
        self.poller: select.poll | None = None
        #: What is queued on it, in a pool that pipelines (see ``_pipeline``); else None.
        self.pipeline: Pipeline | None = None
        #: Hot reload: (call start, files) the worker reported loading since it was last
        #: checked in (see ``_reload``).
        self.loaded: list[tuple[int, tuple[str, ...]]] = []


class Lease:
    """A caller's hold on a worker: empty, waiting (``waiter`` set), or holding one."""

    __slots__ = ("reload_epoch", "waiter", "worker")

    def __init__(self) -> None:
        self.worker: Worker | None = None
        self.waiter: Waiter[None] | None = None
        #: Hot reload: the last poll for changed files before this lease's call (``_reload``).
        self.reload_epoch = 0


@dataclass(frozen=True, slots=True)
class Event:
    """A lifecycle event, logged by the worker set (see ``_logging``)."""

    kind: str
    pid: int | None = None
    reason: str | None = None
    target: str | None = None
    status: ExitStatus | None = None


class Effects:
    """What a transition asks the worker set to do once the lock is released.

    A plain class (not a dataclass with list factories): one is made for every call's
    check-in, and this is three times cheaper to make."""

    __slots__ = ("close", "events", "exit_wakes", "queued", "spawn", "terminate", "wake", "wake_errors")

    def __init__(self) -> None:
        self.spawn = 0
        self.terminate: list[tuple[int, float]] = []
        self.close: list[socket.socket] = []
        #: Leases that were handed a worker: wake their waiters.
        self.wake: list[Lease] = []
        self.wake_errors: list[tuple[Lease, BaseException]] = []
        self.exit_wakes: list[tuple[Waiter[ExitStatus], ExitStatus]] = []
        self.events: list[Event] = []
        #: What a pipelining pool's queues call for (see ``_pipeline``), if anything.
        self.queued: QueueEffects | None = None

    def __bool__(self) -> bool:
        return bool(
            self.spawn
            or self.terminate
            or self.close
            or self.wake
            or self.wake_errors
            or self.exit_wakes
            or self.events
            or self.queued is not None
        )

    def __repr__(self) -> str:
        parts = (f"{name}={getattr(self, name)!r}" for name in self.__slots__ if getattr(self, name))
        return f"Effects({', '.join(parts)})"


class TemplateLost(Exception):
    """Internal: the template went away while a call waited; start a new one and retry."""


class Ledger:
    def __init__(self, options: PoolOptions, clock: Callable[[], float]) -> None:
        self.options = options
        self.clock = clock
        self.closed = False
        #: Whether a template is there to fork workers (the worker set starts one).
        self.has_source = False
        self.workers: dict[int, Worker] = {}  # alive and not retiring
        self.retiring: dict[int, Worker] = {}
        self.idle: deque[Worker] = deque()
        self.waiting: deque[Lease] = deque()
        self.spawning = 0
        self.warm = options.workers if options.fresh else 0
        self.generation = 0
        #: No new workers (a service closing its replicas one by one).
        self.draining = False
        self.spawn_failures = 0
        #: When the next spawn retry is due (a monotonic time), after a failed fork.
        self.spawn_retry_at: float | None = None
        self.counts: dict[str, int] = dict.fromkeys(
            (f.name for f in fields(PoolStats) if f.name not in ("workers_alive", "workers_idle")), 0
        )

    # -- reading ------------------------------------------------------------------------

    def busy(self) -> int:
        """Workers checked out (a worker being checked in counts too)."""
        return len(self.workers) - len(self.idle)

    def stats(self) -> PoolStats:
        return PoolStats(workers_alive=len(self.workers), workers_idle=len(self.idle), **self.counts)

    def next_deadline(self) -> float | None:
        """The earliest idle expiry or spawn retry (None: nothing is due)."""
        deadlines = [idle_deadline(self.options, worker.record) for worker in self.idle]
        known = [deadline for deadline in deadlines if deadline is not None]
        if self.spawn_retry_at is not None:
            known.append(self.spawn_retry_at)
        return min(known) if known else None

    # -- checking out -------------------------------------------------------------------

    def checkout(self, lease: Lease, waiter: Waiter[None] | None) -> Effects | None:
        """Put an idle worker in ``lease`` (None returned: done), or queue the lease with
        ``waiter`` (the effects start workers for it). Raises if the pool cannot serve."""
        if self.closed:
            raise PoolClosedError("the pool is closed")
        if not self.has_source:
            raise TemplateLost("no template")
        if self.idle and self.busy() < self.options.workers:
            # The most recently used: its pages are warm. One that died idle, before the
            # supervisor heard, refuses the request (EPIPE) and the call moves on.
            lease.worker = self.idle.pop()
            return None
        if waiter is None:
            return Effects()
        lease.waiter = waiter
        self.waiting.append(lease)
        self.warm = min(self.options.workers, max(self.warm, self.busy() + len(self.waiting)))
        effects = Effects()
        self._replenish(effects)
        return effects

    def withdraw(self, lease: Lease) -> None:
        """A waiting caller gave up: take its lease off the queue (a worker it was handed
        meanwhile stays in the lease, and goes back with ``release``)."""
        try:
            self.waiting.remove(lease)
        except ValueError:
            pass

    # -- checking in --------------------------------------------------------------------

    def release(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        recycle_requested: bool = False,
        calls_ok: int = 0,
        calls_failed: int = 0,
        rss: int | None = None,
        keepalive: list[object] | None = None,
        target: str | None = None,
    ) -> Effects:
        """Take the worker back from ``lease`` after a request ended with ``outcome``."""
        effects = Effects()
        worker, lease.worker = lease.worker, None
        if worker is None:
            return effects
        counts = self.counts
        if outcome in ("ok", "failed"):
            calls = calls_ok + calls_failed
            worker.record.calls += calls
            counts["calls_served"] += calls
            counts["calls_ok"] += calls_ok
            counts["calls_failed"] += calls_failed
            reason = "worker-request" if recycle_requested else None
            if reason is None and not self.closed:
                reason = retire_after_call(self.options, worker.record, self.generation, rss)
            if reason is None:
                self._check_in(worker, effects)
            else:
                self._retire_after_call(worker, reason, effects)
        elif outcome == "unused":
            self._check_in(worker, effects)
        elif outcome == "dead":
            self._retire(worker, "crashed", 0.0, effects, detail="died before it received the call")
        elif outcome == "crashed":
            counts["calls_crashed"] += 1
            self._retire(worker, "crashed", 0.0, effects, target=target)
        else:  # timed out, cancelled or interrupted, or the worker broke the protocol
            if keepalive and worker.exit_status is None:
                worker.keepalive = keepalive
            if outcome == "timed_out":
                counts["calls_timed_out"] += 1
                self._retire(worker, "timed_out", self.options.grace_period, effects, target=target)
            elif outcome == "cancelled":
                counts["calls_cancelled"] += 1
                self._retire(worker, "cancelled", self.options.grace_period, effects, target=target)
            else:
                counts["calls_crashed"] += 1
                self._retire(worker, "crashed", 0.0, effects, target=target, detail="protocol error")
        self._serve_waiting(effects)
        self._replenish(effects)
        return effects

    def _retire_after_call(self, worker: Worker, reason: str, effects: Effects) -> None:
        """The policy (or the worker itself) says ``worker`` serves no more calls."""
        self._retire(worker, "recycled" if reason == "recycled" else "retired", 0.0, effects, detail=reason)

    def _hand(self, lease: Lease, worker: Worker) -> None:
        lease.worker = worker

    def _check_in(self, worker: Worker, effects: Effects) -> None:
        # Hand the worker to the first waiter, else make it idle.
        if self.closed:
            self._retire(worker, "closed", 0.0, effects)
            return
        if worker.record.generation != self.generation:
            self._retire(worker, "recycled", 0.0, effects)
            return
        if worker.exit_status is not None:
            # It ended after its reply (the template reported it meanwhile): never idle.
            self._retire(worker, "crashed", 0.0, effects, detail="ended after its call")
            return
        # Handing it over keeps it busy: allowed while the others leave room.
        if self.waiting and self.busy() - 1 < self.options.workers:
            lease = self.waiting.popleft()
            self._hand(lease, worker)
            effects.wake.append(lease)
            return
        worker.record.idle_since = self.clock()
        self.idle.append(worker)

    def handoff_failed(self, lease: Lease) -> Effects:
        """A waiter could not be woken (its event loop has closed): take the worker back."""
        effects = Effects()
        worker, lease.worker = lease.worker, None
        if worker is not None:
            self._check_in(worker, effects)
            # Retired instead (recycled meanwhile), it freed a slot for a standby worker.
            self._serve_waiting(effects)
            self._replenish(effects)
        return effects

    def _serve_waiting(self, effects: Effects) -> None:
        # A retired worker freed a slot: give waiters the standby ones.
        while self.waiting and self.idle and self.busy() < self.options.workers:
            lease = self.waiting.popleft()
            self._hand(lease, self.idle.pop())
            effects.wake.append(lease)

    def _retire(
        self,
        worker: Worker,
        reason: ExitReason,
        grace: float,
        effects: Effects,
        *,
        target: str | None = None,
        detail: str | None = None,
    ) -> None:
        if worker.retiring:
            return
        worker.retiring = True
        if self.workers.get(worker.pid) is worker:
            del self.workers[worker.pid]
            self.counts["workers_exited"] += 1
            # A worker lost with its template died unasked: a crash, for the counters.
            self.counts["workers_crashed" if reason == "lost" else f"workers_{reason}"] += 1
        if worker.exit_status is None:
            self.retiring[worker.pid] = worker
            effects.terminate.append((worker.pid, grace))
        self._close_channel(worker, effects)
        # A crash is logged with how the worker ended, where that is known by now.
        status = worker.exit_status if reason == "crashed" else None
        effects.events.append(Event(f"worker_{reason}", worker.pid, detail, target, status))

    def _close_channel(self, worker: Worker, effects: Effects) -> None:
        effects.close.append(worker.channel)

    def _replenish(self, effects: Effects) -> None:
        """Ask for the workers that waiting callers and standby need."""
        if self.closed or self.draining or not self.has_source or self.spawn_retry_at is not None:
            return
        workers = self.options.workers
        demand = min(workers, self.busy() + len(self.waiting))
        if self.options.fresh:
            # Up to `workers` standby processes beside the busy ones, forked ahead so that
            # a fresh call rarely waits for a fork; they go when idle_timeout expires.
            wanted = demand + min(workers, self.warm)
        else:
            wanted = min(workers, max(self.warm, demand))
        missing = wanted - len(self.workers) - self.spawning
        if missing > 0:
            self.spawning += missing
            effects.spawn += missing

    # -- pool-wide ----------------------------------------------------------------------

    def retire_idle(self, pid: int, detail: str) -> Effects:
        """Retire worker ``pid`` if it is idle (a service process that failed its health
        check); a replacement is started as for any retirement."""
        effects = Effects()
        worker = self.workers.get(pid)
        if worker is not None and worker in self.idle:
            self.idle.remove(worker)
            self._retire(worker, "retired", self.options.grace_period, effects, detail=detail)
            self._replenish(effects)
        return effects

    def recycle(self) -> Effects:
        effects = Effects()
        self.generation += 1
        self.warm = max(self.warm, len(self.workers))
        while self.idle:
            self._retire(self.idle.popleft(), "recycled", 0.0, effects)
        self._replenish(effects)
        return effects

    def retire_stale(self, pids: list[int], detail: str) -> Effects:
        """Hot reload: workers ``pids`` loaded a file that changed. Idle ones are retired
        now and busy ones when their call ends (never handed another call); replacements
        are started ahead of demand, with one more while the pool has room: the next edit
        then finds a worker ready that has not loaded the file."""
        effects = Effects()
        if pids:
            self.warm = min(self.options.workers, max(self.warm, len(self.workers) + 1))
        for pid in pids:
            worker = self.workers.get(pid)
            if worker is None:
                continue
            if worker in self.idle:
                self.idle.remove(worker)
                self._retire(worker, "recycled", 0.0, effects, detail=detail)
            else:
                worker.record.generation = -1  # of no generation: retired as it checks in
        self._serve_waiting(effects)
        self._replenish(effects)
        return effects

    def replace_source(self, reason: str) -> Effects:
        """Hot reload: the template's own files changed. Every worker forked from it is
        retired (idle ones now, busy ones when their call ends); callers waiting for a
        worker start a new template (``TemplateLost``)."""
        self.has_source = False
        self.spawning = 0
        self.spawn_retry_at = None
        effects = self.recycle()
        while self.waiting:
            effects.wake_errors.append((self.waiting.popleft(), TemplateLost(reason)))
        return effects

    def source_started(self) -> Effects:
        effects = Effects()
        self.has_source = True
        self.spawn_failures = 0
        self.spawn_retry_at = None
        self._replenish(effects)
        return effects

    def close(self) -> Effects:
        """The pool closes: waiting callers fail, idle workers go now, busy ones when
        their calls end (the template ends them all)."""
        effects = Effects()
        self.closed = True
        error = PoolClosedError("the pool was closed while the call waited for a worker")
        while self.waiting:
            effects.wake_errors.append((self.waiting.popleft(), error))
        while self.idle:
            self._retire(self.idle.popleft(), "closed", 0.0, effects)
        return effects

    def lost(self, reason: str, template_pid: int | None = None) -> Effects:
        """The template (``template_pid``) is gone, and every worker with it."""
        effects = Effects()
        self.has_source = False
        self.spawning = 0
        self.spawn_retry_at = None
        while self.idle:
            worker = self.idle.popleft()
            self._retire(worker, "lost" if not self.closed else "closed", 0.0, effects)
        for worker in [*self.workers.values(), *self.retiring.values()]:
            self._exited(worker, worker.exit_status or (None, None), effects)
        self.retiring.clear()
        # Waiting calls sent nothing yet: they start a new template and try again.
        error: BaseException = (
            PoolClosedError("the pool was closed while the call waited for a worker")
            if self.closed
            else TemplateLost(reason)
        )
        while self.waiting:
            effects.wake_errors.append((self.waiting.popleft(), error))
        if not self.closed:
            effects.events.append(Event("template_lost", template_pid, reason=reason))
        return effects

    # -- what the template reports ------------------------------------------------------

    def spawned(self, pid: int, channel: socket.socket) -> Effects:
        effects = Effects()
        self.spawning = max(0, self.spawning - 1)
        self.spawn_failures = 0
        worker = self._new_worker(pid, channel)
        self.counts["workers_started"] += 1
        self.workers[pid] = worker
        effects.events.append(Event("worker_started", pid))
        self._check_in(worker, effects)
        return effects

    def _new_worker(self, pid: int, channel: socket.socket) -> Worker:
        return Worker(pid, channel, self.generation)

    def spawn_failed(self, count: int, reason: str) -> Effects:
        """The template could not fork ``count`` workers. Retry with backoff while callers
        wait; once the retries are used up, fail the callers that wait for a new worker
        (those that wait only because every worker is busy keep waiting)."""
        effects = Effects()
        self.spawning = max(0, self.spawning - count)
        self.spawn_failures += 1
        effects.events.append(Event("spawn_failed", reason=reason))
        if self.spawn_failures <= SPAWN_RETRIES:
            self.spawn_retry_at = self.clock() + SPAWN_BACKOFF * 2 ** (self.spawn_failures - 1)
            return effects
        # Out of retries; the next caller starts over.
        self.spawn_failures = 0
        self.spawn_retry_at = None
        error = WorkerStartupError(f"cannot fork a worker: {reason} (tried {SPAWN_RETRIES + 1} times)")
        # The callers that wait for a new worker fail; those that wait only because every
        # worker is busy stay, to be served as the busy ones come back (in a fresh pool,
        # or with none busy, nobody comes back).
        busy = self.busy()
        unserved = len(self.waiting) if self.options.fresh or busy == 0 else self.options.workers - busy
        for _ in range(min(len(self.waiting), max(0, unserved))):
            effects.wake_errors.append((self.waiting.popleft(), error))
        return effects

    def exited(self, pid: int, exitcode: int | None, signum: int | None) -> Effects:
        effects = Effects()
        worker = self.retiring.pop(pid, None)
        if worker is None:
            worker = self.workers.get(pid)
            if worker is None:
                return effects
            if worker in self.idle:
                # Died while idle: replace it, no call sees an error.
                self.idle.remove(worker)
                worker.exit_status = (exitcode, signum)
                self._retire(worker, "crashed", 0.0, effects, detail="died while idle")
                self._replenish(effects)
        self._exited(worker, (exitcode, signum), effects)
        return effects

    def _exited(self, worker: Worker, status: ExitStatus, effects: Effects) -> None:
        worker.exit_status = status
        worker.keepalive = []
        for waiter in worker.exit_waiters:
            effects.exit_wakes.append((waiter, status))
        worker.exit_waiters = []

    def watch_exit(self, worker: Worker, waiter: Waiter[ExitStatus]) -> bool:
        """Arrange for ``waiter`` to get the worker's exit status; False if it is known
        already (it is in ``worker.exit_status``) or will never come (the pool closed)."""
        if worker.exit_status is not None or self.closed:
            return False
        worker.exit_waiters.append(waiter)
        return True

    # -- timers -------------------------------------------------------------------------

    def timers_due(self) -> Effects:
        """Expire idle workers and retry a failed spawn, as their times come."""
        effects = Effects()
        now = self.clock()
        for worker in list(self.idle):
            deadline = idle_deadline(self.options, worker.record)
            if deadline is not None and deadline <= now:
                self.idle.remove(worker)
                self.warm = max(0, self.warm - 1)
                self._retire(worker, "expired", 0.0, effects)
        if self.spawn_retry_at is not None and self.spawn_retry_at <= now:
            self.spawn_retry_at = None
            self._replenish(effects)
        return effects
