"""A service's call slots when ``max_concurrency`` is above 1: several channels to each of
its processes, each a slot that one call's round trip (``_call``) uses at a time.

Data flow (message names from ``_protocol``)::

    SlotSet ──checkout──▶ WorkerSet         (holds each replica's process for as long as it lives)
    SlotSet ──OpenChannels (+ N-1 worker ends)──▶ process   (each served on its own thread)
    round trip ──CallRequest──▶ slot channel ──CallResult──▶ round trip   (N at once per process)

The ``SlotSet`` lends the round trip workers as a ``WorkerSet`` does (both are a
``_lender.WorkerLender``), so the round trip is the pool's own, unchanged: a slot is a
``Worker`` with the process's pid and a channel of its own. The
caller's end of the process's first channel is used through a duplicate, so that the
worker set may close its own descriptor (when the process is ended) while other slots of
the process still wait on theirs: they then see the end of file and report the crash.

A call that crashed, timed out or was cancelled ends its process, and with it every other
call running there (they raise ``WorkerCrashedError``); the process is reported ended once,
and a new one replaces it. A process whose object asks to be replaced (it could not be
built, it was closed) or that ``recycle`` marked serves no new call and goes when its
calls are done. Each call goes to the process with the most free slots (a process being
started counts as one with all its slots free).

Hot reload: the worker set's check for changed files runs before each call is placed (the
worker set retires the processes that loaded a changed file by marking them, as they are
held here), and what each call loaded is reported to it as the call's slot is taken back.
A process so marked serves no new call and goes when its calls are done. A process that
was running calls when a changed file was found serves no new call until those calls
report what they loaded (one of them may have loaded the file just before it changed).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from freshproc import _loopreader, _transport
from freshproc._errors import PoolClosedError
from freshproc._ledger import ExitStatus, Lease, Outcome, PoolStats, TemplateLost, Worker
from freshproc._protocol import OpenChannels
from freshproc._waiters import Waiter

if TYPE_CHECKING:
    from freshproc._policy import PoolOptions
    from freshproc._workers import WorkerSet

#: Outcomes that end the process (and every other call running there).
_HARD = frozenset(("dead", "crashed", "timed_out", "cancelled", "broken"))
#: A process marked so may still be ended by a hard outcome (and reported once).
_SOFT = (None, "recycled", "requested", "reloaded")


class _Process:
    """One replica's process, held from the worker set, and its slots."""

    __slots__ = ("busy", "ended", "epochs", "free", "lease", "replace", "slots", "worker")

    def __init__(self, lease: Lease, worker: Worker, slots: list[Worker]) -> None:
        self.lease = lease
        self.worker = worker
        self.slots = slots
        # Last out first: the first channel (served by the process's main thread, where
        # signal handlers can be set) serves whenever it is free.
        self.free = slots[::-1]
        self.busy = 0
        #: The reload epochs its calls running now were placed at (see ``WorkerSet.checkout``).
        self.epochs: list[int] = []
        #: Why it serves no new call: "recycled", "requested" or "reloaded" (it goes once its
        #: calls are done: the service restarts, its object asked to be replaced, a file it
        #: loaded changed), "unhealthy", or the outcome that ended it.
        self.replace: str | None = None
        self.ended = False  # given back to the worker set


class _Handover(Waiter[None]):
    """Wakes the slot set when the worker set hands it a process (on any thread)."""

    __slots__ = ("_adopt", "_lease")

    def __init__(self, lease: Lease, adopt: Callable[[Lease, BaseException | None], bool]) -> None:
        super().__init__()
        self._lease = lease
        self._adopt = adopt

    def _notify(self) -> bool:
        return self._adopt(self._lease, self._error)


class _ExitWatch(Waiter[ExitStatus]):
    __slots__ = ("_on_exit", "_process")

    def __init__(self, process: _Process, on_exit: Callable[[_Process], None]) -> None:
        super().__init__()
        self._process = process
        self._on_exit = on_exit

    def _notify(self) -> bool:
        self._on_exit(self._process)
        return True


class SlotSet:
    #: As on a ``WorkerSet``: a service never queues a call behind another on one channel.
    pipelining = False

    def __init__(self, workers: WorkerSet, *, replicas: int, concurrency: int) -> None:
        self._workers = workers
        self._replicas = replicas
        self._concurrency = concurrency
        #: Per thread: whether the last call released on it ended its process (see
        #: ``take_ended``).
        self._ended_here = threading.local()
        self._lock = threading.Lock()
        self._processes: dict[int, _Process] = {}
        self._owner: dict[Worker, _Process] = {}  # every slot handed out, to its process
        self._requested = 0  # processes asked of the worker set, not yet handed over
        self._waiting: deque[Lease] = deque()
        self._draining = False
        self._closed = False
        #: The worker set's ``reload_changed_epoch`` whose stale processes were marked here.
        self._reload_seen = 0
        self._counts = {"calls_ok": 0, "calls_failed": 0, "calls_crashed": 0, "calls_timed_out": 0}
        self._counts["calls_cancelled"] = 0
        _live_sets.add(self)

    # -- what the round trip uses (a WorkerLender, as a WorkerSet is) ---------------------

    @property
    def options(self) -> PoolOptions:
        return self._workers.options

    @property
    def direct_copy(self) -> bool:
        return self._workers.direct_copy

    @property
    def closed(self) -> bool:
        return self._closed or self._workers.closed

    @property
    def cross_version(self) -> str | None:
        return self._workers.cross_version

    def reload_crash_cause(self, slot: Worker) -> str:
        owner = self._owner.get(slot)
        return self._workers.reload_crash_cause(owner.worker if owner is not None else slot)

    def closed_error(self) -> PoolClosedError:
        return self._workers.closed_error()

    @property
    def started(self) -> bool:
        return self._workers.started

    def start(self) -> None:
        self._workers.start()
        self._request_processes()

    async def start_async(self) -> None:
        await self._workers.start_async()
        self._request_processes()

    def checkout(self, lease: Lease, waiter: Waiter[None] | None) -> bool:
        """A free slot of the least busy process in ``lease`` (True); else, with a
        ``waiter``, queue the lease until a slot frees or a process arrives (False)."""
        # Hot reload: the check runs before this set's lock is taken (it may wake waiters
        # and call the service's ``on_reload``).
        lease.reload_epoch = self._workers.check_for_changes()
        if self._workers.reload_changed_epoch != self._reload_seen:
            self._drop_stale()
        self._request_processes()
        with self._lock:
            if self.closed:
                raise self.closed_error()
            if self._take(lease):
                return True
            if waiter is not None:
                lease.waiter = waiter
                self._waiting.append(lease)
            return False

    def withdraw(self, lease: Lease) -> None:
        with self._lock:
            try:
                self._waiting.remove(lease)
            except ValueError:
                pass

    def release(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        recycle_requested: bool = False,
        calls_ok: int = 0,
        calls_failed: int = 0,
        keepalive: list[object] | None = None,
        held_bytes: int = 0,
        target: str | None = None,
    ) -> None:
        """Take a slot back after its call ended with ``outcome``."""
        slot, lease.worker = lease.worker, None
        if slot is None:
            return
        # Before the slot is offered again: what the call loaded may make the process stale.
        reloaded = self._workers.note_loaded(slot, lease.reload_epoch) if slot.loaded else False
        ended: list[tuple[_Process, Outcome]] = []
        with self._lock:
            process = self._owner[slot]
            process.busy -= 1
            process.epochs.remove(lease.reload_epoch)
            self._count(outcome, calls_ok, calls_failed)
            if reloaded and process.replace is None:
                process.replace = "reloaded"
            if outcome in _HARD:
                if process.replace in _SOFT:
                    process.replace = outcome
                    ended.append((process, outcome))
                    self._processes.pop(process.worker.pid, None)
                    # A process that died idle is reported by the worker set itself.
                    self._ended_here.pid = process.worker.pid if outcome != "dead" else None
            elif recycle_requested and process.replace is None:
                process.replace = "requested"
                self._ended_here.pid = process.worker.pid
            # While the service closes, a process is closed once, then given back: offering
            # it again would have ``_close_gracefully`` close the same object forever.
            if process.replace is None and not self._draining and not process.ended:
                process.free.append(slot)
                self._serve_waiting()
            else:
                del self._owner[slot]
                _loopreader.close(slot.channel)  # unregistered from its event loop first
                # Its last call is done: a process to replace (or the service closed) goes.
                if process.replace in _SOFT and process.busy == 0:
                    self._processes.pop(process.worker.pid, None)
                    ended.append((process, "ok" if process.replace == "requested" else "unused"))
        for process, how in ended:
            self._give_back(process, how, keepalive=keepalive if how in _HARD else None, target=target)
        if ended:
            try:
                self._request_processes()
            except TemplateLost as lost:
                # The template was replaced (hot reload) or lost: not this call's failure.
                # The calls waiting start a new one (their round trip does) and come back.
                self._fail_waiting(lost)

    def watch_exit(self, slot: Worker, waiter: Waiter[ExitStatus]) -> bool:
        """As ``WorkerSet.watch_exit``, for the process the slot belongs to."""
        process = self._owner[slot].worker
        if self._workers.watch_exit(process, waiter):
            return True
        slot.exit_status = process.exit_status
        return False

    # -- what the service uses ------------------------------------------------------------

    def checkout_idle(self, lease: Lease) -> bool:
        """A slot of a process that runs no call and has not been asked for another (one
        per process: a health check, a close); False when there is none."""
        with self._lock:
            for process in self._processes.values():
                if process.replace is None and process.busy == 0 and process.free:
                    self._hand(process, lease)
                    return True
        return False

    def retire(self, pid: int) -> None:
        """Replace process ``pid`` now if it runs no call (it failed its health check)."""
        with self._lock:
            process = self._processes.get(pid)
            if process is None or process.busy:
                return
            del self._processes[pid]
            process.replace = "unhealthy"
        self._give_back(process, "unused")
        self._workers.retire_idle(pid, "unhealthy")
        self._request_processes()

    def recycle(self) -> None:
        """Replace every process: idle ones now, busy ones when their calls end."""
        with self._lock:
            idle = [process for process in self._processes.values() if process.busy == 0]
            for process in self._processes.values():
                process.replace = process.replace or "recycled"
            for process in idle:
                del self._processes[process.worker.pid]
        for process in idle:
            self._give_back(process, "unused")
        self._request_processes()

    def drain(self) -> None:
        """Ask for no more processes (the service is closing)."""
        with self._lock:
            self._draining = True

    def close(self) -> None:
        """Give every process back (the worker set then ends them); waiting calls fail."""
        with self._lock:
            self._closed = self._draining = True
            idle = [process for process in self._processes.values() if process.busy == 0]
            for process in idle:
                del self._processes[process.worker.pid]
            waiting, self._waiting = list(self._waiting), deque()
        for process in idle:
            self._give_back(process, "unused")
        error = PoolClosedError("the service was closed while the call waited")
        for lease in waiting:
            if lease.waiter is not None:
                lease.waiter.wake(error=error)

    def take_ended(self) -> int | None:
        """The pid of the process that the last call released on this thread ended (or had
        replaced), once; None if that call did not. Of the calls a process was running
        when it ended, only the one that ended it says so: the supervisor counts each
        ending once. (Nothing awaits between a call's release and its caller's look.)"""
        pid: int | None = getattr(self._ended_here, "pid", None)
        self._ended_here.pid = None
        return pid

    def stats(self, stats: PoolStats) -> PoolStats:
        """The worker set's ``stats`` with the calls counted here, slot by slot."""
        with self._lock:
            counts = dict(self._counts)
        served = counts["calls_ok"] + counts["calls_failed"]
        return dataclasses.replace(stats, calls_served=served, **counts)

    # -- inside ---------------------------------------------------------------------------

    def _take(self, lease: Lease) -> bool:
        best: _Process | None = None
        for process in self._processes.values():
            # A process whose calls were placed before the last change found may have
            # loaded the changed file: it takes no call until they have said what they loaded.
            if (
                process.replace is None
                and process.free
                and (best is None or len(process.free) > len(best.free))
                and (not process.epochs or min(process.epochs) >= self._reload_seen)
            ):
                best = process
        # A replica being started counts as the least busy: rather than double up on a
        # busy one, the call waits for it (as it would without max_concurrency).
        if best is None or (best.busy and self._requested):
            return False
        self._hand(best, lease)
        return True

    def _hand(self, process: _Process, lease: Lease) -> None:
        slot = process.free.pop()
        process.busy += 1
        process.epochs.append(lease.reload_epoch)
        self._owner[slot] = process
        lease.worker = slot

    def _serve_waiting(self) -> None:
        while self._waiting:
            lease = self._waiting[0]
            if not self._take(lease):
                return
            self._waiting.popleft()
            waiter = lease.waiter
            if waiter is not None and not waiter.wake():  # its event loop closed
                slot, lease.worker = lease.worker, None
                assert slot is not None
                process = self._owner[slot]
                process.busy -= 1
                process.epochs.remove(lease.reload_epoch)
                if process.ended:
                    del self._owner[slot]
                    _loopreader.close(slot.channel)  # unregistered from its event loop first
                else:
                    process.free.append(slot)

    def _drop_stale(self) -> None:
        """Hot reload marked processes held here to retire: they serve no new call, idle
        ones go now and busy ones when their calls are done (``_request_processes`` then
        asks for their replacements)."""
        changed_epoch = self._workers.reload_changed_epoch
        with self._lock:
            pids = [pid for pid, process in self._processes.items() if process.replace is None]
        stale = self._workers.stale(pids) if pids else set()
        idle: list[_Process] = []
        with self._lock:
            for pid in stale:
                process = self._processes.get(pid)
                if process is None or process.replace is not None:
                    continue
                process.replace = "reloaded"
                if process.busy == 0:
                    del self._processes[pid]
                    idle.append(process)
            self._reload_seen = max(self._reload_seen, changed_epoch)
        for process in idle:
            self._give_back(process, "unused")

    def _count(self, outcome: Outcome, calls_ok: int, calls_failed: int) -> None:
        counts = self._counts
        counts["calls_ok"] += calls_ok
        counts["calls_failed"] += calls_failed
        if outcome in ("crashed", "broken"):
            counts["calls_crashed"] += 1
        elif outcome == "timed_out":
            counts["calls_timed_out"] += 1
        elif outcome == "cancelled":
            counts["calls_cancelled"] += 1

    def _request_processes(self) -> None:
        """Ask the worker set for the replicas missing (a caller's thread does this: the
        worker set's supervisor thread may not check workers out)."""
        while True:
            with self._lock:
                if self._draining or self._closed:
                    return
                if len(self._processes) + self._requested >= self._replicas:
                    return
                self._requested += 1
            lease = Lease()
            try:
                if self._workers.checkout(lease, _Handover(lease, self._adopt)):
                    self._adopt(lease, None)
            except BaseException:
                with self._lock:
                    self._requested -= 1
                raise

    def _adopt(self, lease: Lease, error: BaseException | None) -> bool:
        """The worker set handed over a process (or failed to): open its slots."""
        worker = lease.worker
        with self._lock:
            self._requested -= 1
            refuse = self._closed or self._draining
        if error is not None or worker is None:
            self._fail_waiting(error or TemplateLost("no process was handed over"))
            return True
        if refuse:
            return False  # the worker set takes it back
        slots = [Worker(worker.pid, worker.channel.dup(), worker.record.generation)]
        extra = [_transport.channel_pair() for _ in range(self._concurrency - 1)]
        try:
            _transport.send(worker.channel, OpenChannels(len(extra)), [theirs.fileno() for _, theirs in extra])
        except OSError:
            pass  # it died idle: its slots refuse their first call, which then moves on
        for ours, theirs in extra:
            theirs.close()
            slots.append(Worker(worker.pid, socket.socket(fileno=ours.detach()), worker.record.generation))
        process = _Process(lease, worker, slots)
        with self._lock:
            self._processes[worker.pid] = process
            self._serve_waiting()
        if self._workers.watch_exit(worker, _ExitWatch(process, self._exited)) is False:
            self._exited(process)
        return True

    def _exited(self, process: _Process) -> None:
        """The process ended: with no call on it, it died idle and is given back now
        (calls running on it give it back themselves when they see it gone)."""
        with self._lock:
            if process.replace is not None or process.busy:
                return
            process.replace = "dead"
            self._processes.pop(process.worker.pid, None)
            waiting = bool(self._waiting)
        self._give_back(process, "dead")
        if waiting:
            # This may be the supervisor thread, which must not check workers out.
            threading.Thread(target=self._request_processes, name="freshproc-slots", daemon=True).start()

    def _give_back(
        self, process: _Process, outcome: Outcome, *, keepalive: list[object] | None = None, target: str | None = None
    ) -> None:
        """Return the process to the worker set (``outcome`` says whether it is ended)."""
        with self._lock:
            if process.ended:
                return
            process.ended = True
            free, process.free = process.free, []
            for slot in free:
                _loopreader.close(slot.channel)
        if outcome == "ok":
            self._workers.release(process.lease, "ok", recycle_requested=True)
        else:
            self._workers.release(process.lease, outcome, keepalive=keepalive, target=target)

    def _forsake(self) -> None:
        """In a process forked from the owner: drop this process's copies of the channels
        (the processes are the owner's)."""
        self._lock = threading.Lock()  # a thread of the owner may have held it
        self._closed = self._draining = True
        for process in self._processes.values():
            for slot in process.slots:
                slot.channel.close()
        for slot in self._owner:
            slot.channel.close()
        self._processes.clear()
        self._owner.clear()
        self._waiting.clear()

    def _fail_waiting(self, error: BaseException) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for lease in waiting:
            if lease.waiter is not None:
                lease.waiter.wake(error=error)


# Every slot set of this process, so that a forked child can disown them all.
_live_sets: weakref.WeakSet[SlotSet] = weakref.WeakSet()


def _forsake_inherited() -> None:
    for slot_set in list(_live_sets):
        slot_set._forsake()


os.register_at_fork(after_in_child=_forsake_inherited)

__all__ = ["SlotSet"]
