"""The pipelining ledger as a pure state machine: transitions on plain values, their effects
checked without a process (the pool-level guarantees are in ``test_pipelining``)."""

from __future__ import annotations

import dataclasses
import socket
from typing import cast

from freshproc._ledger import Effects, Ledger, Worker
from freshproc._pipeline import PipelinedLedger, QueuedLease, Redispatch, pipeline_of
from freshproc._waiters import SyncWaiter
from tests.test_stats import pool_options


def _ledger(workers: int = 1, pipeline: int = 2) -> PipelinedLedger:
    options = dataclasses.replace(pool_options(workers=workers), pipeline=pipeline)
    ledger = PipelinedLedger(options, lambda: 0.0)
    ledger.warm = workers  # every worker started, idle
    spawn = ledger.source_started().spawn
    for pid in range(1, spawn + 1):
        ledger.spawned(pid, cast("socket.socket", object()))
    return ledger


def _sent(ledger: PipelinedLedger, lease: QueuedLease, call_id: int) -> bool | None:
    """What ``WorkerSet.send`` does once the request went out."""
    lease.call_id = call_id
    return ledger.enqueue(lease)


def _busy_worker_with_one_queued(ledger: PipelinedLedger) -> tuple[Worker, QueuedLease, QueuedLease]:
    head, behind = QueuedLease(shareable=True), QueuedLease(shareable=True)
    assert ledger.checkout(head, None) is None
    assert _sent(ledger, head, 1) is True
    assert ledger.checkout(behind, None) is None  # queued on the busy worker
    assert behind.worker is head.worker
    assert _sent(ledger, behind, 2) is False  # waits for its turn
    assert head.worker is not None
    return head.worker, head, behind


def test_a_pool_that_queues_nothing_keeps_the_plain_ledger_and_workers() -> None:
    assert type(_ledger(pipeline=2)) is PipelinedLedger
    options = _ledger(pipeline=2).options
    plain = Ledger(options, lambda: 0.0)
    plain.source_started()
    plain.spawned(1, cast("socket.socket", object()))
    assert plain.workers[1].pipeline is None
    assert Effects().queued is None


def test_a_request_given_up_while_queued_is_cancelled_on_its_worker() -> None:
    ledger = _ledger()
    worker, head, behind = _busy_worker_with_one_queued(ledger)
    effects = ledger.release(behind, "cancelled")
    assert effects.queued is not None
    assert effects.queued.cancel == [(worker, 2)]
    assert not effects.terminate  # the worker carries on with its head
    assert behind.worker is None
    assert behind.abandoned == "cancelled"
    # The head ends: the given-up request is next, so what the worker did with it is
    # found out before the worker is checked in.
    effects = ledger.release(head, "ok", calls_ok=1)
    assert effects.queued is not None
    assert effects.queued.resolve == [worker]
    assert worker not in ledger.idle
    ledger.resolved(worker, behind, None)  # it answered CallSkipped
    assert list(ledger.idle) == [worker]
    assert ledger.stats().calls_cancelled == 1


def test_a_crash_at_the_head_sends_the_queued_request_elsewhere() -> None:
    ledger = _ledger()
    worker, head, behind = _busy_worker_with_one_queued(ledger)
    effects = ledger.release(head, "crashed", target="crash")
    assert effects.terminate == [(worker.pid, 0.0)]
    assert [(lease, type(error)) for lease, error in effects.wake_errors] == [(behind, Redispatch)]
    assert behind.worker is None
    assert not pipeline_of(worker).leases
    assert effects.queued is not None
    assert effects.queued.close == [worker]  # closed under its send lock, not Effects.close
    assert not effects.close


def _busy_worker_with_one_about_to_send(ledger: PipelinedLedger) -> tuple[Worker, QueuedLease, QueuedLease]:
    """A worker running the head's request, and held by a caller that has yet to send."""
    head, late = QueuedLease(shareable=True), QueuedLease(shareable=True)
    assert ledger.checkout(head, None) is None
    assert _sent(ledger, head, 1) is True
    assert ledger.checkout(late, None) is None
    assert late.worker is head.worker
    assert late.worker is not None
    return late.worker, head, late


def test_a_request_sent_as_its_worker_crashed_is_not_queued_on_it() -> None:
    """A caller sends (the worker's channel is open), then the call ahead crashes and the
    worker is retired before the request is queued: the worker never started it, and
    the caller sends it again elsewhere."""
    ledger = _ledger()
    worker, head, late = _busy_worker_with_one_about_to_send(ledger)
    ledger.release(head, "crashed")
    assert worker.retiring
    assert _sent(ledger, late, 2) is None
    assert late.worker is None
    assert pipeline_of(worker).free()


def test_a_worker_that_breaks_the_protocol_with_a_caller_about_to_send_drains_first() -> None:
    """A malformed reply at the head while another caller holds the worker but has not
    sent: the worker is not ended under that caller (it could be mid-send); the caller is
    refused, and the worker ends once nobody holds it."""
    ledger = _ledger()
    worker, head, late = _busy_worker_with_one_about_to_send(ledger)
    effects = ledger.release(head, "broken")
    assert not effects.terminate
    assert worker.pid in ledger.workers  # not ended yet
    effects = ledger.refused(late)  # WorkerSet.send finds it draining
    assert late.worker is None
    assert effects.terminate == [(worker.pid, 0.0)]
    assert worker.pid in ledger.retiring
    assert ledger.stats().workers_crashed == 1


def test_a_lease_that_never_sent_gives_its_worker_back_whatever_the_outcome() -> None:
    """Send and queue are one step (``WorkerSet.send``): a lease not in its worker's queue
    never sent, even when an interrupt made the round trip say "cancelled"."""
    ledger = _ledger()
    lease = QueuedLease(shareable=True)
    assert ledger.checkout(lease, None) is None
    worker = lease.worker
    effects = ledger.release(lease, "cancelled")
    assert not effects.terminate
    assert list(ledger.idle) == [worker]


def test_a_stale_resolution_changes_nothing() -> None:
    """A resolution for a head that is no longer first (settled meanwhile) is ignored:
    the new head has a caller reading its reply."""
    ledger = _ledger(pipeline=3)
    worker, head, behind = _busy_worker_with_one_queued(ledger)
    ledger.release(head, "cancelled")  # others queued: resolved later
    assert head.abandoned == "cancelled"
    ledger.resolved(worker, head, None)  # it answered: the turn passes to `behind`
    assert list(pipeline_of(worker).leases) == [behind]
    effects = ledger.resolved(worker, head, None)  # the same resolution, again
    assert not effects
    assert list(pipeline_of(worker).leases) == [behind]


def test_a_waiting_shareable_request_is_queued_as_soon_as_a_busy_worker_has_room() -> None:
    ledger = _ledger(pipeline=2)
    worker, head, behind = _busy_worker_with_one_queued(ledger)
    waiting = QueuedLease(shareable=True)
    assert ledger.checkout(waiting, SyncWaiter()) is not None  # the queue is full
    effects = ledger.release(head, "ok", calls_ok=1)
    assert effects.wake == [behind, waiting]  # behind's turn; waiting queued behind it
    assert waiting.worker is worker
