"""The fork-failure phase: the template cannot fork for a while, in the middle of a burst.

The pool preloads ``tests.fork_failures``, whose ``os.fork`` fails in the template while
a marker file exists. Once its workers are up, half of them take calls that hold them
(each reports that it started); then the marker is created and a burst of calls (healthy
and faulting, from the seed, through the blocking API from many threads) needs workers
that cannot be forked. The marker goes as soon as a caller has been told so (or the
burst is over). The held calls must finish normally; each burst call must get its own
expected outcome or, if it needed a new worker, ``WorkerStartupError`` saying "cannot
fork a worker"; the template must be the same process throughout; afterwards the pool
serves, adds up and leaks nothing.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

import freshproc
from tests.handshake import Handshake
from tests.stress.blocking_api import call_blocking, still_serves_blocking
from tests.stress.checks import Run, check_whole
from tests.stress.context import Context, make_pool
from tests.stress.outcomes import Outcome, Raw
from tests.stress.plan import Config, PlannedCall, fault_kinds, make_plan
from tests.stress.processes import ProcessTracker, Snapshot
from tests.stress.report import Check, Report

API = "fork-failure"
FORK_ERROR = "cannot fork a worker"


class _SpawnFailures(logging.Handler):
    """Counts the pool's "the template could not fork a worker" events."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "spawn_failed":
            self.count += 1


def _refused_fork(raw: Raw) -> bool:
    return isinstance(raw.error, freshproc.WorkerStartupError) and FORK_ERROR in str(raw.error)


def run_fork_failure(config: Config) -> Report:
    plan = make_plan(config.fork_burst, config.seed, config.fault_rate, fault_kinds("blocking", config.hostile))
    with tempfile.TemporaryDirectory(prefix="freshproc-campaign-") as directory:
        marker = Path(directory) / "forks-fail"
        return _run(config, plan, marker)


def _run(config: Config, plan: list[PlannedCall], marker: Path) -> Report:
    before = Snapshot.take()
    tracker = ProcessTracker()
    pool = make_pool(config, preload=["tests.fork_failures"], env={"FRESHPROC_TEST_FORK_MARKER": str(marker)})
    ctx = Context(pool, tracker)
    run = Run(config, API, plan, title="fork-failure phase (blocking API, forks fail for a while)")
    spawn_failures = _SpawnFailures()
    logger = logging.getLogger("freshproc")
    logger.addHandler(spawn_failures)
    held_count = max(1, config.workers // 2)
    held = [Handshake() for _ in range(held_count)]
    held_results: list[object] = []
    startup_errors: list[PlannedCall] = []
    lock = threading.Lock()
    pending = iter(plan)
    lanes_left = min(config.concurrency, len(plan))
    unmark = threading.Event()  # a caller heard that forks fail, or the burst is over
    started = time.monotonic()
    deadline = started + config.deadline
    template_pids: list[int | None] = []
    marked_for = 0.0

    def hold(handshake: Handshake) -> None:
        try:
            value: object = pool.call_sync("tests.faults", "handshake_then_pid", handshake.spec)
        except Exception as exc:  # noqa: BLE001 - judged below
            value = exc
        with lock:
            held_results.append(value)

    def lane() -> None:
        nonlocal lanes_left
        try:
            while True:
                with lock:
                    call = next(pending, None)
                if call is None:
                    return
                ctx.begin(call)
                call_started = time.perf_counter()
                raw = call_blocking(ctx, call)
                latency = time.perf_counter() - call_started
                ctx.end(call, raw)
                if _refused_fork(raw):
                    # It needed a new worker while none could be forked: right for any kind.
                    outcome = Outcome(call.index, call.kind, "WorkerStartupError (cannot fork)", None, latency)
                    with lock:
                        startup_errors.append(call)
                    unmark.set()
                else:
                    outcome = run.outcome(call, raw, latency)
                with lock:
                    run.outcomes.append(outcome)
        finally:
            with lock:
                lanes_left -= 1
                if not lanes_left:
                    unmark.set()

    holders = [threading.Thread(target=hold, args=(handshake,), daemon=True) for handshake in held]
    lanes = [threading.Thread(target=lane, daemon=True) for _ in range(lanes_left)]
    try:
        pool.start()
        template_pids.append(pool.template_pid)
        tracker.note_template(pool.template_pid)
        warm = still_serves_blocking(pool, config.workers)  # every worker up before forks fail
        for thread in holders:
            thread.start()
        for handshake in held:
            handshake.wait_started()
        tracker.note_workers(pool.worker_pids())
        marker.touch()
        marked_at = time.monotonic()
        for thread in lanes:
            thread.start()
        unmark.wait(max(0.0, deadline - time.monotonic()))
        marker.unlink(missing_ok=True)
        marked_for = time.monotonic() - marked_at
        template_pids.append(pool.template_pid)
        for thread in lanes:
            thread.join(max(0.0, deadline - time.monotonic()))
        for handshake in held:
            handshake.release()
        for thread in holders:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in (*lanes, *holders)):
            run.hung = ctx.hung_calls() or [PlannedCall(-1, "(a held call)")]
            with lock:
                for _ in pending:  # the lanes start no more calls
                    pass
        else:
            run.extra_checks.append(check_whole(pool))
            run.serves_problem = still_serves_blocking(pool, 2 * config.workers)
            template_pids.append(pool.template_pid)
            run.lingering = ctx.lingering()
            run.stats = pool.stats()
            run.note_memory(ctx)
            if warm is not None:
                run.serves_problem = f"before forks failed: {warm}"
    finally:
        marker.unlink(missing_ok=True)
        pool.close()
        logger.removeHandler(spawn_failures)
        for handshake in held:
            handshake.close()
    run.wall = time.monotonic() - started
    run.leaks = before.leaks(tracker)
    run.workers_seen = tracker.worker_count
    refused = {call.index for call in startup_errors}
    run.ran = [call for call in plan if call.index not in refused]
    run.extra_served = config.workers + held_count + 2 * config.workers
    run.extra_checks.extend(
        [
            _check_held(held_results, held_count),
            Check(
                "the template stayed the same process",
                len(set(template_pids)) == 1 and None not in template_pids,
                f"template pids seen: {sorted({str(pid) for pid in template_pids})}",
            ),
            Check(
                "forks failed while the marker was there",
                spawn_failures.count > 0,
                f"{spawn_failures.count} failed forks in {marked_for * 1e3:.0f} ms; "
                f"{len(startup_errors)} calls got WorkerStartupError ({FORK_ERROR!r})",
            ),
        ]
    )
    run.notes.append(
        f"forks failed for {marked_for * 1e3:.0f} ms ({spawn_failures.count} failed forks, "
        f"{len(startup_errors)} calls refused with WorkerStartupError, every other call its own outcome); "
        f"{held_count} calls held workers throughout"
    )
    return run.report()


def _check_held(results: list[object], count: int) -> Check:
    pids = [value for value in results if isinstance(value, int)]
    return Check(
        "calls already running finished normally",
        len(pids) == count,
        f"{len(pids)}/{count} returned their worker's pid" + ("" if len(pids) == count else f": {results!r}"),
    )
