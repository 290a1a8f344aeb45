"""What a call's round trip (``_call``) needs from the set it takes its worker from.

Two sets lend workers: ``_workers.WorkerSet`` (a pool's, or a service's processes) and
``_slots.SlotSet`` (a service's slots when it runs several calls per process, each slot a
``Worker`` with a channel of its own). The round trip is typed against this protocol, so
either serves it as it is, and neither needs to pass for the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from freshproc._errors import PoolClosedError
    from freshproc._ledger import ExitStatus, Lease, Outcome, Worker
    from freshproc._policy import PoolOptions
    from freshproc._waiters import Waiter


class WorkerLender(Protocol):
    """Lends workers to round trips: checked out, then released with the call's outcome."""

    @property
    def options(self) -> PoolOptions:
        """The policy (the round trip reads ``workers`` to bound retries on dead workers)."""

    #: Whether requests may be queued on busy workers (``_pipeline``): then the lender is a
    #: ``WorkerSet``, whose ``send`` queues them. Read on every call.
    pipelining: bool

    @property
    def closed(self) -> bool: ...

    @property
    def started(self) -> bool: ...

    @property
    def direct_copy(self) -> bool:
        """Whether segments may travel by address to these workers."""

    @property
    def cross_version(self) -> str | None:
        """The workers' Python version when it is not the caller's (nothing then goes by
        value); else None."""

    def closed_error(self) -> PoolClosedError: ...

    def start(self) -> None:
        """Start the template (blocking): after ``TemplateLost``, or before a first call."""

    async def start_async(self) -> None: ...

    def checkout(self, lease: Lease, waiter: Waiter[None] | None) -> bool:
        """Put a worker in ``lease`` (True); else, with a ``waiter``, queue the lease until
        one arrives in it (False). Raises PoolClosedError, or TemplateLost."""

    def withdraw(self, lease: Lease) -> None:
        """The caller stopped waiting: take the lease off the queue."""

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
        """Take the worker in ``lease`` back after a call that ended with ``outcome``."""

    def watch_exit(self, worker: Worker, waiter: Waiter[ExitStatus]) -> bool:
        """Have ``waiter`` receive the worker's exit status; False if it is known already
        (in ``worker.exit_status``) or will never come."""

    def reload_crash_cause(self, worker: Worker) -> str:
        """Words for a crash report when a file the worker loaded just changed (else "")."""
