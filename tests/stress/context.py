"""What the calls of one run share (``Context``: the calls in flight, the workers faults
ended, the caller's RSS around hostile calls), and the pool every run makes.
"""

from __future__ import annotations

import ctypes
import gc
import threading
from typing import Any

import psutil

import freshproc
from tests import faults
from tests.stress import hostile_kinds
from tests.stress.hostile_kinds import HOSTILE_KINDS, MAX_RESULT_SIZE
from tests.stress.outcomes import Raw
from tests.stress.plan import Config, PlannedCall
from tests.stress.processes import EXIT_WAIT, ProcessTracker, still_running

MEMORY_LIMIT = 1 << 30
GRACE_PERIOD = 0.5
#: The policy timeout of the "timeout" fault (an ``isolated`` function's own timeout).
POLICY_TIMEOUT = 0.5


class Context:
    """What the calls of one campaign share."""

    def __init__(self, pool: freshproc.Pool, tracker: ProcessTracker) -> None:
        self.pool = pool
        self.tracker = tracker
        self.hang_with_timeout = freshproc.isolated(pool=pool, timeout=POLICY_TIMEOUT)(faults.hang)
        self._lock = threading.Lock()
        #: Workers that a fault ended: they must be gone before the pool closes.
        self.ended: set[int] = set()
        self.in_flight: dict[int, PlannedCall] = {}
        #: Results in memfds their workers tried to truncate: checked again at the end.
        self.memfd_results: list[object] = []
        self._process = psutil.Process()
        #: The caller's RSS when the calls began, and the most seen after a hostile call.
        gc.collect()
        self.rss_before = self.rss_peak = self._process.memory_info().rss

    def begin(self, call: PlannedCall) -> None:
        with self._lock:
            self.in_flight[call.index] = call

    def end(self, call: PlannedCall, raw: Raw) -> None:
        with self._lock:
            self.in_flight.pop(call.index, None)
        self.tracker.note_workers(self.pool.worker_pids())
        if isinstance(raw.error, freshproc.WorkerCrashedError) and raw.error.pid is not None:
            self.note_ended(raw.error.pid)
        if call.kind in HOSTILE_KINDS:
            rss = self._process.memory_info().rss
            with self._lock:
                self.rss_peak = max(self.rss_peak, rss)
                if call.kind == "truncate_memfd" and raw.returned:
                    self.memfd_results.append(raw.value)

    def rss_settled(self) -> int:
        """The caller's RSS once garbage is collected (see ``Snapshot.leaks``) and the
        memory freed since is handed back to the system: glibc keeps freed blocks in its
        arenas (64 threads, 64 arenas' worth), which is not memory the caller holds."""
        gc.collect()
        _malloc_trim()
        return self._process.memory_info().rss

    def memfd_problem(self) -> str | None:
        """Whether every memfd result is still whole now, long after its worker tried to
        truncate it (a truncated page would end this process with SIGBUS here)."""
        with self._lock:
            results, self.memfd_results = self.memfd_results, []
        for value in results:
            problem = hostile_kinds.check_memfd_result(value)
            if problem is not None:
                return problem
        return None

    def note_ended(self, pid: int) -> None:
        self.tracker.note_workers([pid])
        with self._lock:
            self.ended.add(pid)

    def lingering(self) -> list[psutil.Process]:
        """Workers ended by faults that are still running (after waiting for their exit)."""
        with self._lock:
            ended = sorted(self.ended)
        return still_running(self.tracker.workers(ended), EXIT_WAIT)

    def hung_calls(self) -> list[PlannedCall]:
        with self._lock:
            return sorted(self.in_flight.values(), key=lambda call: call.index)


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS keeps what the allocator keeps
        pass


def make_pool(config: Config, **options: Any) -> freshproc.Pool:
    return freshproc.Pool(
        config.workers,
        timeout=None,
        memory_limit=MEMORY_LIMIT,
        max_result_size=MAX_RESULT_SIZE,
        grace_period=GRACE_PERIOD,
        **options,
    )
