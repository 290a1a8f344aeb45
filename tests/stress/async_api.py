"""The campaign through the async API (``await pool.call``), on asyncio or trio: every
fault kind, cancellation included, from ``config.concurrency`` tasks.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

import anyio
import anyio.to_thread

import freshproc
from tests.stress import hostile_kinds
from tests.stress.checks import Run
from tests.stress.context import Context, make_pool
from tests.stress.hostile_kinds import HOSTILE_KINDS
from tests.stress.outcomes import Outcome, Raw
from tests.stress.pidpipe import PidPipe
from tests.stress.plan import CANCEL_ONCE_STARTED, Config, PlannedCall, fault_kinds, make_plan
from tests.stress.processes import ProcessTracker, Snapshot
from tests.stress.report import Report
from tests.stress.targets import FAULTS_MODULE, FINAL_VALUE_BASE, PIDPIPE_MODULE, plain_target

#: The queue depth of the "pipelined" phase.
PIPELINE_DEPTH = 2
#: The ``fail_after`` of the "cancel" fault's second variant.
CANCEL_AFTER = 0.3


async def _call_async(ctx: Context, call: PlannedCall) -> Raw:
    raw = Raw()
    try:
        target = plain_target(call)
        if target is not None:
            module, attr, args = target
            raw.value = await ctx.pool.call(module, attr, *args)
            raw.returned = True
        elif call.kind in HOSTILE_KINDS:
            module, attr, args, captured = hostile_kinds.target(call.kind, call.arg)
            raw.value = await (ctx.pool.call_captured if captured else ctx.pool.call)(module, attr, *args)
            raw.returned = True
        elif call.kind == "timeout":
            await ctx.hang_with_timeout.aio()
            raw.returned = True
        elif call.kind == "sigkill":
            await _sigkill_async(ctx, raw)
        elif call.kind == "cancel" and call.arg == CANCEL_ONCE_STARTED:
            await _cancel_once_started(ctx, raw)
        elif call.kind == "cancel":
            with anyio.fail_after(CANCEL_AFTER):
                await ctx.pool.call(FAULTS_MODULE, "hang")
            raw.returned = True
        else:
            raise AssertionError(f"unknown kind {call.kind!r}")
    except Exception as exc:  # noqa: BLE001 - an outcome to judge
        raw.error = exc
    return raw


async def _sigkill_async(ctx: Context, raw: Raw) -> None:
    """SIGKILL the worker from outside once the call reports that it runs."""
    with PidPipe() as pipe:

        async def kill_when_started() -> None:
            try:
                pid = await pipe.read_pid()
                raw.reported_pid = pid
                ctx.note_ended(pid)
                os.kill(pid, signal.SIGKILL)
            except Exception as exc:  # noqa: BLE001 - judged with the call
                raw.helper_error = exc

        async with anyio.create_task_group() as group:
            group.start_soon(kill_when_started)
            try:
                raw.value = await ctx.pool.call(PIDPIPE_MODULE, "report_pid_then_hang", pipe.spec)
                raw.returned = True
            except Exception as exc:  # noqa: BLE001 - an outcome to judge
                raw.error = exc
            finally:
                group.cancel_scope.cancel()  # the helper, if the call never started


async def _cancel_once_started(ctx: Context, raw: Raw) -> None:
    """Cancel a scope around the call once the call reports that it runs."""
    with PidPipe() as pipe:
        with anyio.CancelScope() as scope:

            async def cancel_when_started() -> None:
                try:
                    pid = await pipe.read_pid()
                    raw.reported_pid = pid
                    ctx.note_ended(pid)
                except Exception as exc:  # noqa: BLE001 - judged with the call
                    raw.helper_error = exc
                scope.cancel()

            async with anyio.create_task_group() as group:
                group.start_soon(cancel_when_started)
                try:
                    raw.value = await ctx.pool.call(PIDPIPE_MODULE, "report_pid_then_hang", pipe.spec)
                    raw.returned = True
                except Exception as exc:  # noqa: BLE001 - an outcome to judge
                    raw.error = exc
                finally:
                    group.cancel_scope.cancel()
        raw.cancelled = scope.cancelled_caught


async def _drive_async(ctx: Context, plan: Sequence[PlannedCall], concurrency: int, outcomes: list[Outcome]) -> None:
    pending = iter(plan)

    async def lane() -> None:
        for call in pending:
            ctx.begin(call)
            started = time.perf_counter()
            raw = await _call_async(ctx, call)
            latency = time.perf_counter() - started
            ctx.end(call, raw)
            outcomes.append(Run.outcome(call, raw, latency))

    async with anyio.create_task_group() as group:
        for _ in range(min(concurrency, len(plan))):
            group.start_soon(lane)


async def _still_serves_async(pool: freshproc.Pool, count: int) -> str | None:
    wrong: list[str] = []

    async def one(value: int) -> None:
        try:
            result = await pool.call(FAULTS_MODULE, "ok", value)
        except Exception as exc:  # noqa: BLE001 - reported by the check
            wrong.append(f"{value}: raised {exc!r}")
        else:
            if result != value:
                wrong.append(f"{value}: returned {result!r}")

    async with anyio.create_task_group() as group:
        for offset in range(count):
            group.start_soon(one, FINAL_VALUE_BASE + offset)
    return "; ".join(wrong) if wrong else None


async def run_async(config: Config, api: str) -> Report:
    """One campaign on the running event loop (asyncio or trio); ``api`` labels it
    ("pipelined": on a pool that queues up to 2 calls per worker)."""
    plan = make_plan(config.calls, config.seed, config.fault_rate, fault_kinds(api, config.hostile))
    before = Snapshot.take()
    tracker = ProcessTracker()
    pool = make_pool(config, **({"pipeline": PIPELINE_DEPTH} if api == "pipelined" else {}))
    ctx = Context(pool, tracker)
    run = Run(config, api, plan)
    started = time.monotonic()
    try:
        with anyio.fail_after(config.deadline):
            async with pool:
                tracker.note_template(pool.template_pid)
                await _drive_async(ctx, plan, config.concurrency, run.outcomes)
                run.serves_problem = await _still_serves_async(pool, 2 * config.workers)
                run.lingering = await anyio.to_thread.run_sync(ctx.lingering)
                run.stats = pool.stats()
                run.note_memory(ctx)
    except TimeoutError:
        run.hung = ctx.hung_calls() or [PlannedCall(-1, "(after the calls)")]
    run.wall = time.monotonic() - started
    run.leaks = await anyio.to_thread.run_sync(before.leaks, tracker)
    run.workers_seen = tracker.worker_count
    return run.report()
