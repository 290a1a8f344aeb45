"""The service phase: the campaign's calls on a supervised service with replicas
(``freshproc.service(Faults, options=ServiceOptions(replicas=3, ...))``), from
``config.concurrency`` tasks on asyncio or trio, a tenth of them faulting in every way a
service call can: the pool campaign's crashes (segfault, abort, exit, SIGKILL from
outside), timeouts (the service's own ``timeout``), both kinds of cancellation, an
exception, an unpicklable result and a MemoryError.

Left out, with why: "too_large" and the hostile kinds test ``max_result_size``, a pool
option that services do not have.

Checks, beside the common ones (every outcome right, nothing hung, nothing leaked, the
processes that faults ended gone): each fault that surely ended a process was one
restart (a ``fail_after`` may also end one, or expire while its call waits), the
service is still alive and serves afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence

import anyio
import anyio.to_thread

import freshproc
from tests.stress.checks import Run
from tests.stress.outcomes import Outcome, Raw
from tests.stress.pidpipe import PidPipe
from tests.stress.plan import CANCEL_ONCE_STARTED, CRASH_KINDS, Config, PlannedCall, make_plan
from tests.stress.processes import EXIT_WAIT, ProcessTracker, Snapshot, still_running
from tests.stress.report import Check, Report
from tests.stress.service_object import Faults
from tests.stress.targets import FAULTS_MODULE, FINAL_VALUE_BASE, PIDPIPE_MODULE, plain_target

#: Every fault kind a service call can have (see the module's docstring).
SERVICE_KINDS = ("segfault", "abort", "exit", "sigkill", "timeout", "cancel", "raise", "unpicklable", "memory")
REPLICAS = 3
#: The service's per-call timeout: the "timeout" fault hangs past it; no healthy call
#: comes near it (the time a call waits for a replica does not count).
SERVICE_TIMEOUT = 3.0
CANCEL_AFTER = 0.3
MEMORY_LIMIT = 1 << 30


def service_options() -> freshproc.ServiceOptions:
    return freshproc.ServiceOptions(
        replicas=REPLICAS,
        timeout=SERVICE_TIMEOUT,
        memory_limit=MEMORY_LIMIT,
        grace_period=0.5,
        # Faults are the point here: never give up, never wait.
        max_restarts=1_000_000,
        backoff=(0.0, 0.0),
    )


class _Calls:
    """What the phase's calls share: the service, the calls in flight, ended pids."""

    def __init__(self, svc: freshproc.Service[Faults], tracker: ProcessTracker) -> None:
        self.svc = svc
        self.tracker = tracker
        self._lock = threading.Lock()
        self.in_flight: dict[int, PlannedCall] = {}
        self.ended: set[int] = set()

    def note_ended(self, pid: int) -> None:
        self.tracker.note_workers([pid])
        with self._lock:
            self.ended.add(pid)


async def _call(calls: _Calls, call: PlannedCall) -> Raw:
    raw = Raw()
    svc = calls.svc
    try:
        target = plain_target(call)
        if target is not None:
            module, attr, args = target
            raw.value = await svc.call(Faults.run, module, attr, *args)
            raw.returned = True
        elif call.kind == "timeout":
            await svc.call(Faults.run, FAULTS_MODULE, "hang")
            raw.returned = True
        elif call.kind in ("sigkill", "cancel") and (call.kind == "sigkill" or call.arg == CANCEL_ONCE_STARTED):
            await _end_once_started(calls, call, raw)
        elif call.kind == "cancel":
            with anyio.fail_after(CANCEL_AFTER):
                await svc.call(Faults.run, FAULTS_MODULE, "hang")
            raw.returned = True
        else:
            raise AssertionError(f"unknown kind {call.kind!r}")
    except Exception as exc:  # noqa: BLE001 - an outcome to judge
        raw.error = exc
    return raw


async def _end_once_started(calls: _Calls, call: PlannedCall, raw: Raw) -> None:
    """SIGKILL the call's process from outside, or cancel the call, once it reports that
    it runs."""
    with PidPipe() as pipe, anyio.CancelScope() as scope:

        async def when_started() -> None:
            try:
                pid = await pipe.read_pid()
                raw.reported_pid = pid
                calls.note_ended(pid)
                if call.kind == "sigkill":
                    os.kill(pid, signal.SIGKILL)
                else:
                    scope.cancel()
            except Exception as exc:  # noqa: BLE001 - judged with the call
                raw.helper_error = exc

        async with anyio.create_task_group() as group:
            group.start_soon(when_started)
            try:
                raw.value = await calls.svc.call(Faults.run, PIDPIPE_MODULE, "report_pid_then_hang", pipe.spec)
                raw.returned = True
            except Exception as exc:  # noqa: BLE001 - an outcome to judge
                raw.error = exc
            finally:
                group.cancel_scope.cancel()
    raw.cancelled = scope.cancelled_caught


async def _drive(calls: _Calls, plan: Sequence[PlannedCall], concurrency: int, outcomes: list[Outcome]) -> None:
    pending = iter(plan)

    async def lane() -> None:
        for call in pending:
            calls.in_flight[call.index] = call
            started = time.perf_counter()
            raw = await _call(calls, call)
            latency = time.perf_counter() - started
            del calls.in_flight[call.index]
            calls.tracker.note_workers(calls.svc.pids)
            if isinstance(raw.error, freshproc.WorkerCrashedError) and raw.error.pid is not None:
                calls.note_ended(raw.error.pid)
            outcomes.append(Run.outcome(call, raw, latency))

    async with anyio.create_task_group() as group:
        for _ in range(min(concurrency, len(plan))):
            group.start_soon(lane)


async def _still_serves(svc: freshproc.Service[Faults]) -> str | None:
    wrong: list[str] = []

    async def one(value: int) -> None:
        try:
            result = await svc.call(Faults.run, FAULTS_MODULE, "ok", value)
        except Exception as exc:  # noqa: BLE001 - reported by the check
            wrong.append(f"{value}: raised {exc!r}")
        else:
            if result != value:
                wrong.append(f"{value}: returned {result!r}")

    async with anyio.create_task_group() as group:
        for offset in range(2 * REPLICAS):
            group.start_soon(one, FINAL_VALUE_BASE + offset)
    if not svc.alive:  # (a replica may still be on its way back: its count is no check)
        wrong.append("the service is no longer alive")
    return "; ".join(wrong) if wrong else None


def _restarts_check(plan: Sequence[PlannedCall], restarts: int | None) -> Check:
    name = "each fault that ended a process was one restart"
    if restarts is None:
        return Check(name, False, "not reached")
    kinds = Counter(call.kind for call in plan)
    once_started = sum(1 for call in plan if call.kind == "cancel" and call.arg == CANCEL_ONCE_STARTED)
    surely = sum(kinds[kind] for kind in CRASH_KINDS) + kinds["timeout"] + kinds["memory"] + once_started
    maybe = kinds["cancel"] - once_started
    detail = f"restarts {restarts}; faults that end a process {surely}, plus up to {maybe} fail_after cancellations"
    return Check(name, surely <= restarts <= surely + maybe, detail)


async def run_service(config: Config, api: str) -> Report:
    """The service phase on the running event loop (asyncio or trio); ``api`` labels it."""
    config = dataclasses.replace(config, workers=REPLICAS)
    plan = make_plan(config.calls, config.seed, config.fault_rate, SERVICE_KINDS)
    before = Snapshot.take()
    tracker = ProcessTracker()
    run = Run(config, f"service/{api}", plan, title=f"service phase on {api}, replicas={REPLICAS}")
    restarts: int | None = None
    started = time.monotonic()
    svc = freshproc.service(Faults, options=service_options())
    calls = _Calls(svc, tracker)
    try:
        with anyio.fail_after(config.deadline):
            async with svc:
                tracker.note_template(svc._workers.template_pid)
                await _drive(calls, plan, config.concurrency, run.outcomes)
                run.serves_problem = await _still_serves(svc)
                run.lingering = await anyio.to_thread.run_sync(
                    still_running, tracker.workers(sorted(calls.ended)), EXIT_WAIT
                )
                restarts = svc.restarts
                run.stats = svc.stats()
    except TimeoutError:
        run.hung = sorted(calls.in_flight.values(), key=lambda call: call.index) or [
            PlannedCall(-1, "(after the calls)")
        ]
    run.wall = time.monotonic() - started
    run.stats_check = lambda: _restarts_check(plan, restarts)
    run.leaks = await anyio.to_thread.run_sync(before.leaks, tracker)
    run.workers_seen = tracker.worker_count
    return run.report()
