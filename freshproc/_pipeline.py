"""Pipelined dispatch: what is queued on each worker, and which requests may be queued.

A worker serves its requests one at a time, in the order they were sent, and replies in
that order; the parent may send the next few before the current one ends, so the worker
never waits a parent round trip between calls. ``PipelinedLedger`` is the ledger of a
pool that does so (``Pool(pipeline=N)``, N > 1): pure bookkeeping like its base, it keeps
on each worker a ``Pipeline``, the leases whose requests were sent, in order (the first is
the one running, or about to), and how many callers hold the worker but have not sent
yet. The I/O that goes with it (cancelling a queued request, reading what a given-up call
left on the channel) is ``_queued``'s.

Guarantees (kept here): a reply is read only by the caller at the head, so no call gets
another's result; a request given up while queued is cancelled on the worker, which then
never starts it; the requests queued behind a call whose worker ends are sent again
elsewhere, and only when they provably never started.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

from freshproc._ledger import Effects, ExitReason, Lease, Ledger, Outcome, Worker

if TYPE_CHECKING:
    import socket

    from freshproc._policy import PoolOptions
    from freshproc._waiters import Waiter

#: ``Pipeline.draining`` of a worker that broke the protocol while calls were queued on it.
BROKEN = "protocol error"


class Redispatch(Exception):
    """Internal: the request was never started by the worker it was queued on (which
    ended, or dropped it); send it again, elsewhere."""


class QueuedLease(Lease):
    """A lease in a pipelining pool: its request's id, whether it may be queued behind
    another (``shareable``), and what became of it while queued."""

    __slots__ = ("abandoned", "call_id", "keepalive", "shareable", "skipped", "target")

    def __init__(self, shareable: bool) -> None:
        super().__init__()
        self.shareable = shareable
        self.call_id = 0
        #: Given up by its caller after it was sent: "cancelled" or "timed_out".
        self.abandoned: str | None = None
        #: The worker said it dropped the request unstarted (``CallSkipped``).
        self.skipped = False
        self.keepalive: list[object] | None = None
        #: What it ran, named for the log record of a worker ended because it was given up.
        self.target: str | None = None


class Pipeline:
    """One worker's queue."""

    __slots__ = ("draining", "leases", "refused", "reserved", "send_lock")

    def __init__(self) -> None:
        #: Leases whose requests were sent, in order; ``leases[0]`` runs (or is next).
        self.leases: deque[QueuedLease] = deque()
        #: Leases handed this worker that have not sent yet.
        self.reserved = 0
        #: Sending and closing the channel take turns under it: requests go out in the
        #: order of ``leases``, and never to a descriptor number that was closed and reused.
        self.send_lock = threading.Lock()
        #: Retire the worker once its queue is empty, for this reason (the policy said so
        #: while calls were queued on it).
        self.draining: str | None = None
        #: A send found the worker gone: queue nothing more on it.
        self.refused = False

    def free(self) -> bool:
        return not self.leases and not self.reserved


class QueueEffects:
    """What a transition asks of the workers' channels (``Effects.queued``)."""

    __slots__ = ("cancel", "close", "resolve")

    def __init__(self) -> None:
        #: Workers whose channels to close (under their send locks, not ``Effects.close``).
        self.close: list[Worker] = []
        #: Queued requests given up: tell their workers (worker, call id).
        self.cancel: list[tuple[Worker, int]] = []
        #: Workers whose head request was given up: find out what became of it.
        self.resolve: list[Worker] = []


def may_pipeline(options: PoolOptions, how: int, timeout: float | None) -> bool:
    """Whether a request may be queued on a busy worker: only plain calls (by name or by
    value, not a map batch or a service's method), without a timeout of their own (its
    clock would run while the call waits), in a pool whose policy is per worker call
    count or memory (``fresh``, ``max_calls_per_worker``, ``max_memory``): those keep
    one call per worker."""
    return (
        options.pipeline > 1
        and how <= 1  # _worker.BY_NAME, BY_VALUE
        and timeout is None
        and not options.fresh
        and options.max_calls_per_worker is None
        and options.max_memory is None
    )


def pipeline_of(worker: Worker) -> Pipeline:
    pipeline = worker.pipeline
    assert pipeline is not None, "a worker of a pipelining pool"
    return pipeline


def queue_effects(effects: Effects) -> QueueEffects:
    if effects.queued is None:
        effects.queued = QueueEffects()
    return effects.queued


class PipelinedLedger(Ledger):
    """The ledger of a pool that queues up to ``options.pipeline`` requests on a worker.

    The transitions on every call's path narrow a worker's ``pipeline`` and a lease's type
    with a bare ``assert``, not with ``pipeline_of``: the call would cost more than the
    rest of such a step."""

    # -- checking out -------------------------------------------------------------------

    def checkout(self, lease: Lease, waiter: Waiter[None] | None) -> Effects | None:
        """As ``Ledger.checkout``; with no idle worker, a shareable request is queued on
        the busy worker with the shortest queue that has room."""
        assert isinstance(lease, QueuedLease)
        if (
            lease.shareable
            and not self.waiting
            and not self.closed
            and self.has_source
            and not (self.idle and self.busy() < self.options.workers)
        ):
            queue_on = self._least_loaded()
            if queue_on is not None:
                self._hand(lease, queue_on)
                return None
        effects = super().checkout(lease, waiter)
        if effects is None:  # handed an idle worker
            assert lease.worker is not None
            assert lease.worker.pipeline is not None
            lease.worker.pipeline.reserved += 1
        return effects

    def _hand(self, lease: Lease, worker: Worker) -> None:
        lease.worker = worker
        assert worker.pipeline is not None
        worker.pipeline.reserved += 1

    def _least_loaded(self) -> Worker | None:
        """The busy worker with the shortest queue that may take one more request, once
        every worker the pool may have is started (until then, a call waits for its own)."""
        depth = self.options.pipeline
        if len(self.workers) < self.options.workers:
            return None
        best: Worker | None = None
        best_load = depth
        for worker in self.workers.values():
            pipeline = worker.pipeline
            assert pipeline is not None
            load = len(pipeline.leases) + pipeline.reserved
            if (
                0 < load < best_load
                and pipeline.draining is None
                and not pipeline.refused
                and worker.exit_status is None
                and worker.record.generation == self.generation
            ):
                best, best_load = worker, load
        return best

    def _feed(self, effects: Effects) -> None:
        """Queue waiting shareable requests on busy workers while they have room (in
        order: a request that may not be queued waits for a free worker, and those
        behind it too)."""
        while self.waiting:
            first = self.waiting[0]
            assert isinstance(first, QueuedLease)
            if not first.shareable:
                return
            worker = self._least_loaded()
            if worker is None:
                return
            lease = self.waiting.popleft()
            self._hand(lease, worker)
            effects.wake.append(lease)

    def _serve_waiting(self, effects: Effects) -> None:
        super()._serve_waiting(effects)
        if self.waiting:
            self._feed(effects)

    # -- sending ------------------------------------------------------------------------

    def enqueue(self, lease: Lease) -> bool | None:
        """``lease``'s request was sent (under the worker's send lock): queue it. True if
        it is at the head (it reads its reply now), False if it waits for its turn
        (``lease.waiter`` wakes then). None: the worker was retired between the send and
        now, which only a crash during the request ahead does (an end decided while a
        request may be in flight waits for the send lock): it never started this one,
        and the lease is empty again."""
        worker = lease.worker
        assert worker is not None
        pipeline = worker.pipeline
        assert pipeline is not None
        pipeline.reserved -= 1
        if worker.retiring:
            lease.worker = None
            return None
        assert isinstance(lease, QueuedLease)
        pipeline.leases.append(lease)
        return len(pipeline.leases) == 1

    def refused(self, lease: Lease) -> Effects:
        """``lease``'s worker takes no more requests (it is being ended, or broke the
        protocol): the lease holds nothing now. The last lease to let go of a worker that
        broke the protocol checks it in, which ends it."""
        effects = Effects()
        worker, lease.worker = lease.worker, None
        if worker is not None:
            pipeline = pipeline_of(worker)
            pipeline.reserved -= 1
            if pipeline.free() and not worker.retiring:
                self._check_in(worker, effects)  # it is ended now
                self._serve_waiting(effects)
                self._replenish(effects)
        return effects

    def mark_skipped(self, worker: Worker, call_id: int) -> None:
        """The worker dropped queued request ``call_id`` unstarted (``CallSkipped``)."""
        for lease in pipeline_of(worker).leases:
            if lease.call_id == call_id:
                lease.skipped = True
                return

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
        """As ``Ledger.release``, for a request that may have others queued around it."""
        worker = lease.worker
        if worker is None:
            return Effects()
        assert isinstance(lease, QueuedLease)
        pipeline = worker.pipeline
        assert pipeline is not None
        leases = pipeline.leases
        if outcome in ("ok", "failed") and leases and leases[0] is lease:  # a reply: read at the head
            leases.popleft()
            return super().release(
                lease,
                outcome,
                recycle_requested=recycle_requested,
                calls_ok=calls_ok,
                calls_failed=calls_failed,
                rss=rss,
            )
        effects = Effects()
        if lease not in leases:
            # Never sent (``WorkerSet.send`` sends and queues as one step): the worker
            # goes back as it was, unless it refused the request (``dead``).
            lease.worker = None
            pipeline.reserved -= 1
            pipeline.refused = pipeline.refused or outcome == "dead"
            if pipeline.free() or worker.retiring:
                if not worker.retiring:
                    self._check_in(worker, effects)
                self._serve_waiting(effects)
                self._replenish(effects)
            return effects
        if leases[0] is not lease:
            # Given up while queued: the worker is told, and never starts it.
            lease.worker = None
            self.counts["calls_cancelled"] += 1
            lease.abandoned, lease.keepalive, lease.target = "cancelled", keepalive, target
            queue_effects(effects).cancel.append((worker, lease.call_id))
            return effects
        if outcome in ("cancelled", "timed_out") and len(leases) + pipeline.reserved > 1:
            # Others are queued behind it: what the worker did meanwhile decides (_queued).
            lease.worker = None
            self.counts[f"calls_{outcome}"] += 1
            lease.abandoned, lease.keepalive, lease.target = outcome, keepalive, target
            queue_effects(effects).resolve.append(worker)
            return effects
        leases.popleft()
        if outcome == "skipped":  # it came back unstarted: the caller sends it again
            lease.worker = None
            self._check_in(worker, effects)
            return effects
        if outcome == "broken" and (leases or pipeline.reserved):
            lease.worker = None
            self.counts["calls_crashed"] += 1
            if keepalive and worker.exit_status is None:
                worker.keepalive = [*worker.keepalive, *keepalive]
            self._drain_broken(worker, effects)
            self._serve_waiting(effects)
            self._replenish(effects)
            return effects
        return super().release(lease, outcome, keepalive=keepalive, target=target)

    def _retire_after_call(self, worker: Worker, reason: str, effects: Effects) -> None:
        pipeline = pipeline_of(worker)
        if pipeline.free():
            super()._retire_after_call(worker, reason, effects)
            return
        # The requests queued behind may have started: they run, then the worker goes.
        pipeline.draining = reason
        self._check_in(worker, effects)

    def _check_in(self, worker: Worker, effects: Effects) -> None:
        """The head request ended (or the worker is new): hand the turn on to the next
        request (or find out about a given-up one); with nothing queued, check it in."""
        pipeline = worker.pipeline
        assert pipeline is not None
        while pipeline.leases:
            head = pipeline.leases[0]
            if head.skipped:
                pipeline.leases.popleft()
                if head.abandoned is None:
                    head.worker = None
                    effects.wake_errors.append((head, Redispatch()))
                continue
            if head.abandoned is not None:
                queue_effects(effects).resolve.append(worker)
            else:
                effects.wake.append(head)  # its turn: it reads its reply
            return
        if pipeline.reserved:
            return
        if pipeline.draining == BROKEN:
            self._retire(worker, "crashed", 0.0, effects, detail="protocol error")
        elif pipeline.draining is not None:
            reason = pipeline.draining
            self._retire(worker, "recycled" if reason == "recycled" else "retired", 0.0, effects, detail=reason)
        elif pipeline.refused:
            self._retire(worker, "crashed", 0.0, effects, detail="died before it received the call")
        else:
            super()._check_in(worker, effects)
            if self.waiting:  # handed to a waiter, it may take more behind
                self._feed(effects)

    def handoff_failed(self, lease: Lease) -> Effects:
        worker = lease.worker
        if worker is not None:
            pipeline = pipeline_of(worker)
            if lease in pipeline.leases:
                # Its turn came, but nobody will read the reply: as if it was given up.
                assert isinstance(lease, QueuedLease)
                lease.abandoned = "cancelled"
                effects = Effects()
                queue_effects(effects).resolve.append(worker)
                return effects
            pipeline.reserved -= 1
            if not pipeline.free():
                lease.worker = None  # the others queued on it carry on
                return Effects()
        return super().handoff_failed(lease)

    def resolved(self, worker: Worker, head: QueuedLease, ended: str | None) -> Effects:
        """What became of ``head``, ``worker``'s given-up head request, is known: it
        answered (a reply or ``CallSkipped``, taken off the channel: ``ended`` None), it
        answered with something malformed (``"broken"``), or the worker was ended
        (``ended`` the reason) or died (``"crashed"``)."""
        effects = Effects()
        pipeline = pipeline_of(worker)
        if not pipeline.leases or pipeline.leases[0] is not head or worker.retiring:
            return effects
        if ended is None:
            pipeline.leases.popleft()
            self._check_in(worker, effects)
        elif ended == "broken":
            pipeline.leases.popleft()
            self._drain_broken(worker, effects)
        else:
            reason: ExitReason = (
                "crashed" if ended == "crashed" else "timed_out" if ended == "timed_out" else "cancelled"
            )
            if head.keepalive and worker.exit_status is None:
                worker.keepalive = head.keepalive
            grace = 0.0 if reason == "crashed" else self.options.grace_period
            self._retire(worker, reason, grace, effects, target=head.target)
        self._serve_waiting(effects)
        self._replenish(effects)
        return effects

    def _drain_broken(self, worker: Worker, effects: Effects) -> None:
        """The worker answered its head request with something malformed: it is past that
        request, and may have started the next. Cancel the ones behind (those it has not
        started come back ``CallSkipped`` and go elsewhere; one it started keeps its
        reply), then end the worker once its queue is empty."""
        pipeline = pipeline_of(worker)
        pipeline.draining = BROKEN
        cancels = [(worker, lease.call_id) for lease in pipeline.leases if lease.abandoned is None]
        if cancels:
            queue_effects(effects).cancel.extend(cancels)
        self._check_in(worker, effects)

    # -- workers ------------------------------------------------------------------------

    def _new_worker(self, pid: int, channel: socket.socket) -> Worker:
        worker = super()._new_worker(pid, channel)
        worker.pipeline = Pipeline()
        return worker

    def _close_channel(self, worker: Worker, effects: Effects) -> None:
        queue_effects(effects).close.append(worker)

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
        super()._retire(worker, reason, grace, effects, target=target, detail=detail)
        # What was queued behind never started (the head's answer was not there): send it
        # again elsewhere.
        pipeline = pipeline_of(worker)
        while pipeline.leases:
            lease = pipeline.leases.popleft()
            if lease.abandoned is None:
                lease.worker = None
                effects.wake_errors.append((lease, Redispatch()))
            elif lease.keepalive and worker.exit_status is None:
                worker.keepalive = [*worker.keepalive, *lease.keepalive]
