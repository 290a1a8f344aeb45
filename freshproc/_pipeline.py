"""Pipelined dispatch: what is queued on one worker, and which requests may be queued.

A worker serves its requests one at a time, in the order they were sent, and replies in
that order; the parent may send the next few before the current one ends, so the worker
never waits a parent round trip between calls. ``Pipeline`` is one worker's share of the
ledger's bookkeeping (pure: the ledger changes it under its lock): the leases whose
requests were sent, in order (the first is the one running, or about to), and how many
callers hold the worker but have not sent yet. The I/O that goes with it (cancelling a
queued request, reading what a given-up call left on the channel) is ``_queued``'s.

Guarantees (the ledger keeps them): a reply is read only by the caller at the head, so
no call gets another's result; a request given up while queued is cancelled on the
worker, which then never starts it; the requests queued behind a call whose worker ends
are sent again elsewhere, and only when they provably never started.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from freshproc._ledger import Lease
    from freshproc._policy import PoolOptions

#: The depth that measurement chose (``benchmarks``, the "pipelined" rows), for pools that
#: opt in: 2 hides the parent's round trip; deeper queues only add latency to the calls
#: at their back. Pools queue nothing by default (depth 1): a queued call's arguments are
#: pickled when it is queued, and without pipelining they are read when the call starts.
RECOMMENDED_DEPTH = 2


class Redispatch(Exception):
    """Internal: the request was never started by the worker it was queued on (which
    ended, or dropped it); send it again, elsewhere."""


class Pipeline:
    __slots__ = ("draining", "leases", "refused", "reserved", "send_lock")

    def __init__(self) -> None:
        #: Leases whose requests were sent, in order; ``leases[0]`` runs (or is next).
        self.leases: deque[Lease] = deque()
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

    def load(self) -> int:
        return len(self.leases) + self.reserved

    def free(self) -> bool:
        return not self.leases and not self.reserved


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
