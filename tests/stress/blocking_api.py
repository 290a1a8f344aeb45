"""The campaign through the blocking API (``pool.call_sync``) from
``config.concurrency`` threads: every fault kind but cancellation, which it does not
have. The phases make their calls through ``call_blocking`` too.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import freshproc
from tests.stress import hostile_kinds
from tests.stress.checks import Run
from tests.stress.context import Context, make_pool
from tests.stress.hostile_kinds import HOSTILE_KINDS
from tests.stress.outcomes import Raw
from tests.stress.pidpipe import PidPipe
from tests.stress.plan import Config, PlannedCall, fault_kinds, make_plan
from tests.stress.processes import ProcessTracker, Snapshot
from tests.stress.report import Report
from tests.stress.targets import FAULTS_MODULE, FINAL_VALUE_BASE, PIDPIPE_MODULE, plain_target


def call_blocking(ctx: Context, call: PlannedCall, raw: Raw | None = None) -> Raw:
    """Make the call and record what it did in ``raw`` (a new one by default)."""
    raw = Raw() if raw is None else raw
    try:
        target = plain_target(call)
        if target is not None:
            module, attr, args = target
            raw.value = ctx.pool.call_sync(module, attr, *args)
            raw.returned = True
        elif call.kind in HOSTILE_KINDS:
            module, attr, args, captured = hostile_kinds.target(call.kind, call.arg)
            raw.value = (ctx.pool.call_captured_sync if captured else ctx.pool.call_sync)(module, attr, *args)
            raw.returned = True
        elif call.kind == "timeout":
            ctx.hang_with_timeout()
            raw.returned = True
        elif call.kind == "sigkill":
            _sigkill_blocking(ctx, raw)
        else:
            raise AssertionError(f"{call.kind!r} has no blocking form")
    except Exception as exc:  # noqa: BLE001 - an outcome to judge
        raw.error = exc
    return raw


def _sigkill_blocking(ctx: Context, raw: Raw) -> None:
    with PidPipe() as pipe:

        def kill_when_started() -> None:
            try:
                pid = pipe.read_pid_blocking()
                if pid:  # 0: the call ended without starting
                    raw.reported_pid = pid
                    ctx.note_ended(pid)
                    os.kill(pid, signal.SIGKILL)
            except Exception as exc:  # noqa: BLE001 - judged with the call
                raw.helper_error = exc

        killer = threading.Thread(target=kill_when_started, name="campaign-killer", daemon=True)
        killer.start()
        try:
            raw.value = ctx.pool.call_sync(PIDPIPE_MODULE, "report_pid_then_hang", pipe.spec)
            raw.returned = True
        finally:
            pipe.interrupt()
            killer.join()


def still_serves_blocking(pool: freshproc.Pool, count: int) -> str | None:
    wrong: list[str] = []

    def one(value: int) -> None:
        try:
            result = pool.call_sync(FAULTS_MODULE, "ok", value)
        except Exception as exc:  # noqa: BLE001 - reported by the check
            wrong.append(f"{value}: raised {exc!r}")
        else:
            if result != value:
                wrong.append(f"{value}: returned {result!r}")

    threads = [threading.Thread(target=one, args=(FINAL_VALUE_BASE + offset,)) for offset in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return "; ".join(wrong) if wrong else None


def run_blocking(config: Config) -> Report:
    """One campaign through ``pool.call_sync`` from ``config.concurrency`` threads."""
    plan = make_plan(config.calls, config.seed, config.fault_rate, fault_kinds("blocking", config.hostile))
    before = Snapshot.take()
    tracker = ProcessTracker()
    pool = make_pool(config)
    ctx = Context(pool, tracker)
    run = Run(config, "blocking", plan)
    started = time.monotonic()
    deadline = started + config.deadline
    pending = iter(plan)
    pending_lock = threading.Lock()
    lane_errors: list[BaseException] = []

    def next_call() -> PlannedCall | None:
        with pending_lock:
            return next(pending, None)

    def lane() -> None:
        try:
            while (call := next_call()) is not None:
                ctx.begin(call)
                call_started = time.perf_counter()
                raw = call_blocking(ctx, call)
                latency = time.perf_counter() - call_started
                ctx.end(call, raw)
                run.outcomes.append(run.outcome(call, raw, latency))
        except BaseException as exc:  # noqa: BLE001 - reported by the check
            lane_errors.append(exc)

    try:
        pool.start()
        tracker.note_template(pool.template_pid)
        lanes = [
            threading.Thread(target=lane, name=f"campaign-lane-{n}", daemon=True)
            for n in range(min(config.concurrency, len(plan)))
        ]
        for thread in lanes:
            thread.start()
        for thread in lanes:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in lanes):
            run.hung = ctx.hung_calls()
            with pending_lock:
                for _ in pending:  # the lanes start no more calls
                    pass
        else:
            run.serves_problem = still_serves_blocking(pool, 2 * config.workers)
            run.lingering = ctx.lingering()
            run.stats = pool.stats()
            run.note_memory(ctx)
            if time.monotonic() > deadline:
                run.hung = [PlannedCall(-1, "(after the calls)")]
    finally:
        pool.close()  # also ends calls that hung, so their threads can finish
    run.wall = time.monotonic() - started
    if lane_errors:
        run.serves_problem = f"a lane failed: {lane_errors[0]!r}"
    run.leaks = before.leaks(tracker)
    run.workers_seen = tracker.worker_count
    return run.report()
