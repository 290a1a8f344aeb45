"""The interrupts phase: Ctrl-C, over and over, during blocking calls on the main thread.

A seeded loop of calls (healthy ones and every fault that needs no helper thread) runs
one at a time on the main thread, while another thread sends SIGINT to the process every
1-3 ms (seeded intervals). A call that KeyboardInterrupt ends is counted; every other
call must get its own expected outcome. Afterwards no worker may be checked out with no
call running, nobody may wait, ``pool.stats()`` must add up (within what the interrupted
calls may have done), the pool must still serve, and nothing may leak.

SIGINT lands between any two bytecodes of the main thread, the campaign's own included:
each call's record is made before the call and marked done in the same statement that
catches the interrupt, and the loop resumes at the first call not done if an interrupt
lands in its bookkeeping. The rest of the bookkeeping (which reads /proc and takes
locks) runs on another thread, fed through a queue. "sigkill" (a killer thread) and
"cancel" (async only) are left out: an interrupt would only test the campaign's helper.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from freshproc import _interrupts
from tests.stress.blocking_api import call_blocking, still_serves_blocking
from tests.stress.checks import Run, check_whole
from tests.stress.context import Context, make_pool
from tests.stress.hostile_kinds import REFUSED_KINDS
from tests.stress.outcomes import Raw
from tests.stress.plan import CRASH_KINDS, REPLY_KINDS, Config, PlannedCall, fault_kinds, make_plan
from tests.stress.processes import ProcessTracker, Snapshot
from tests.stress.report import Check, Report

#: Seconds between two SIGINTs: uniform in this range, from the seed.
INTERVAL = (0.001, 0.003)
API = "interrupts"
PRELOAD = ("tests.faults", "tests.hostile")


def interrupt_kinds(hostile: bool) -> tuple[str, ...]:
    return tuple(kind for kind in fault_kinds("blocking", hostile) if kind != "sigkill")


@dataclass
class _Progress:
    """Where the loop is; every write is idempotent, so the loop can resume anywhere."""

    raws: dict[int, Raw] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    started: dict[int, float] = field(default_factory=dict)
    latency: dict[int, float] = field(default_factory=dict)
    stray: int = 0


class Interrupter:
    """Sends SIGINT to this process at seeded intervals until stopped."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"interrupts-{seed}")
        self._stop = threading.Event()
        # No SIGINT before ``start`` has returned: a loaded machine may not resume the
        # starting thread within the first interval, and Thread.start must not be torn.
        self._go = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="campaign-interrupter", daemon=True)

    def start(self) -> None:
        """Start sending (once; later calls do nothing)."""
        if self._go.is_set():
            return
        self._thread.start()
        self._go.set()

    def _run(self) -> None:
        self._go.wait()
        while not self._stop.wait(self._rng.uniform(*INTERVAL)):
            os.kill(os.getpid(), signal.SIGINT)
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        if self._go.is_set():
            self._thread.join()


def _loop(
    ctx: Context,
    plan: Sequence[PlannedCall],
    progress: _Progress,
    stop_at: float,
    finished: queue.SimpleQueue[PlannedCall | None],
) -> None:
    """Run the calls not done yet, in order, one at a time."""
    for call in plan:
        if call.index in progress.done:
            continue
        if time.monotonic() > stop_at:
            return
        raw = progress.raws.setdefault(call.index, Raw())
        progress.started[call.index] = time.perf_counter()
        try:
            call_blocking(ctx, call, raw)
            progress.done.add(call.index)
        except KeyboardInterrupt:
            raw.interrupted = True
            progress.done.add(call.index)
        progress.latency[call.index] = time.perf_counter() - progress.started[call.index]
        finished.put(call)


def _bookkeeper(ctx: Context, progress: _Progress, finished: queue.SimpleQueue[PlannedCall | None]) -> None:
    while (call := finished.get()) is not None:
        ctx.end(call, progress.raws[call.index])


def _drain() -> int:
    """Deliver a SIGINT still pending (sent before the interrupter stopped): changing the
    signal mask is a system call, on whose return pending signals are delivered, and
    ``pthread_sigmask`` runs Python's handlers before it returns. How many interrupts
    that raised."""
    raised = 0
    for _ in range(3):
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
        except KeyboardInterrupt:
            raised += 1
    return raised


def _stop_interrupting(interrupter: Interrupter) -> int:
    """Stop the SIGINTs and deliver any still on their way; how many interrupts that
    raised. One may land while this waits for the interrupter to stop: it waits again."""
    landed = 0
    while True:
        try:
            interrupter.stop()
            return landed + _drain()
        except KeyboardInterrupt:
            landed += 1


def run_interrupts(config: Config, *, watchdog: bool = False) -> Report:
    """The interrupts phase; must run on the main thread (only it receives SIGINT).
    ``watchdog``: past the deadline, dump every thread's stack and exit (a hang on the
    main thread cannot be waited out from it; pytest has its own timeout)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the interrupts phase runs on the main thread")
    # Python's own Ctrl-C handling, whatever this process inherited (a shell starts its
    # background jobs with SIGINT ignored, and then no KeyboardInterrupt would ever come).
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run_interrupts(config, watchdog=watchdog)
    finally:
        signal.signal(signal.SIGINT, previous_handler)


def _run_interrupts(config: Config, *, watchdog: bool) -> Report:
    plan = make_plan(config.interrupt_calls, config.seed, config.fault_rate, interrupt_kinds(config.hostile))
    before = Snapshot.take()
    tracker = ProcessTracker()
    # Every interrupted call ends its worker: preloaded, the targets' modules cost a new
    # worker nothing, so its first call is as quick as any (else, slower than the
    # interrupts, every call after the first interrupt would be interrupted in turn).
    pool = make_pool(config, preload=PRELOAD)
    ctx = Context(pool, tracker)
    run = Run(config, API, plan, title="interrupts phase (blocking API, main thread)", concurrency=1)
    progress = _Progress()
    interrupter = Interrupter(config.seed)
    finished: queue.SimpleQueue[PlannedCall | None] = queue.SimpleQueue()
    bookkeeper = threading.Thread(target=_bookkeeper, args=(ctx, progress, finished), name="campaign-bookkeeper")
    started = time.monotonic()
    stop_at = started + config.deadline
    if watchdog:
        faulthandler.dump_traceback_later(config.deadline + 60, exit=True)
    protected = False
    try:
        pool.start()  # on the main thread: installs the interrupt protection
        tracker.note_template(pool.template_pid)
        protected = signal.getsignal(signal.SIGINT) is _interrupts._handler
        bookkeeper.start()
        try:
            while len(progress.done) < len(plan) and time.monotonic() <= stop_at:
                try:
                    interrupter.start()  # in here: its first SIGINT may come at once
                    _loop(ctx, plan, progress, stop_at, finished)
                except KeyboardInterrupt:
                    progress.stray += 1  # in the loop's own bookkeeping: resume
        finally:
            try:
                progress.stray += _stop_interrupting(interrupter)
            finally:
                finished.put(None)  # whatever happens: the bookkeeper is not a daemon
                bookkeeper.join()
        if len(progress.done) < len(plan):
            run.hung = [call for call in plan if call.index not in progress.done][:20]
        else:
            run.extra_checks.append(check_whole(pool))
            run.serves_problem = still_serves_blocking(pool, 2 * config.workers)
            run.lingering = ctx.lingering()
            run.stats = pool.stats()
            run.note_memory(ctx)
    finally:
        pool.close()
        if watchdog:
            faulthandler.cancel_dump_traceback_later()
    run.wall = time.monotonic() - started
    # Judged before the leak check: judging lets go of each value, and a result in a
    # memfd ("truncate_memfd") keeps a descriptor open for as long as it is mapped.
    for call in plan:
        raw = progress.raws.get(call.index)
        if raw is not None and call.index in progress.done:
            run.outcomes.append(run.outcome(call, raw, progress.latency.get(call.index, 0.0)))
    run.leaks = before.leaks(tracker)
    run.workers_seen = tracker.worker_count
    interrupted = [call for call in plan if call.index in progress.raws and progress.raws[call.index].interrupted]
    run.extra_checks.extend(_check_interrupts(protected, interrupter.sent, interrupted, progress.stray, len(plan)))
    run.notes.append(
        f"SIGINT sent {interrupter.sent} times; KeyboardInterrupt ended {len(interrupted)} calls "
        f"({_by_kind(interrupted)}); {progress.stray} landed in the campaign's own bookkeeping"
    )
    run.stats_check = lambda: _check_stats(run, interrupted)
    return run.report()


def _by_kind(calls: Sequence[PlannedCall]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in Counter(call.kind for call in calls).most_common())


def _check_interrupts(
    protected: bool, sent: int, interrupted: Sequence[PlannedCall], stray: int, calls: int
) -> list[Check]:
    return [
        Check(
            "the interrupt protection was in place",
            protected,
            "freshproc's SIGINT handler on the main thread"
            if protected
            else f"handler {signal.getsignal(signal.SIGINT)!r}",
        ),
        Check(
            "calls were interrupted, and calls were served",
            0 < len(interrupted) < calls,
            f"{len(interrupted)} of {calls} calls interrupted by {sent} SIGINTs",
        ),
    ]


def _check_stats(run: Run, interrupted: Sequence[PlannedCall]) -> Check:
    """An interrupted call may have been answered, crashed, cancelled (its worker ended)
    or never sent: each counter lies between what the other calls account for and that
    plus the interrupted calls."""
    stats = run.stats
    if stats is None:
        return Check("pool.stats() adds up", False, "not reached")
    skipped = {call.index for call in interrupted}
    kinds = Counter(call.kind for call in run.plan if call.index not in skipped)
    extra = len(interrupted)
    served = sum(kinds[kind] for kind in REPLY_KINDS) + 2 * run.config.workers
    crashed = sum(kinds[kind] for kind in (*CRASH_KINDS, *REFUSED_KINDS))
    bounds = {
        "calls_served": (served, served + extra),
        "calls_crashed": (crashed, crashed + extra),
        "workers_crashed": (crashed, crashed + extra),
        "calls_timed_out": (kinds["timeout"], kinds["timeout"] + extra),
        "workers_retired": (kinds["memory"], kinds["memory"] + extra),
        "calls_cancelled": (0, extra),
        "workers_cancelled": (0, extra),
    }
    problems = [
        f"{name} {getattr(stats, name)} not within [{low}, {high}]"
        for name, (low, high) in bounds.items()
        if not low <= getattr(stats, name) <= high
    ]
    problems.extend(run.consistency_problems())
    counted = stats.calls_served + stats.calls_crashed + stats.calls_timed_out + stats.calls_cancelled
    if counted > len(run.plan) + 2 * run.config.workers:
        problems.append(f"{counted} calls counted, more than were made")
    detail = "; ".join(problems) or (
        f"served {stats.calls_served} in [{served}, {served + extra}], crashed {stats.calls_crashed}, "
        f"cancelled {stats.calls_cancelled} (<= {extra} interrupted), started = alive + exited"
    )
    return Check("pool.stats() adds up", not problems, detail)


if __name__ == "__main__":
    sys.exit("run it through python -m tests.stress.campaign --phase interrupts")
