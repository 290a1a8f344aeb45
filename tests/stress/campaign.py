"""The fault campaign: thousands of calls over one ``freshproc.Pool(4)`` at concurrency 64,
a tenth of them faulting in every way a call can, chosen at random from a seed. Hostile
workers count among the faults (``hostile_kinds``: sizes they do not have, memfds they
could still change, messages and output past every limit; ``--no-hostile`` leaves them out).

It checks that every healthy call got its own value back, every faulted call raised its
own specific error, nothing hung (a global deadline), no descriptor or process leaked,
the workers ended by faults are gone, ``pool.stats()`` adds up, the pool still serves at
the end, and hostile workers left the caller's memory bounded. It prints a table per API
and exits non-zero if any check fails::

    python -m tests.stress.campaign --calls 2000 --seed 7            # every API and phase
    python -m tests.stress.campaign --calls 2000 --seed 7 --api trio --phase none
    python -m tests.stress.campaign --seed 7 --api none --phase interrupts

After the APIs come two phases, each with a pool of its own (``--phase``, repeatable):
``interrupts`` (SIGINT every 1-3 ms during blocking calls on the main thread, see
``interrupts``) and ``fork-failure`` (the template cannot fork during a burst, see
``fork_failure``).

The blocking API (``pool.call_sync`` from 64 threads) runs every fault but cancellation,
which it does not have. Run it from the repository root: the workers import ``tests.*``
through the caller's sys.path. The plan (which call faults, and how) depends only on the
seed; nothing waits on a sleep: kills and cancellations happen once the target reports
that it started.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import itertools
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import psutil

import freshproc
from tests import faults
from tests.stress import hostile_kinds
from tests.stress.hostile_kinds import ANSWERED_KINDS, HOSTILE_KINDS, MAX_RESULT_SIZE, REFUSED_KINDS
from tests.stress.pidpipe import PidPipe

FAULTS_MODULE = "tests.faults"
PIDPIPE_MODULE = "tests.stress.pidpipe"

HEALTHY = "healthy"
#: The faults of the call itself (the hostile kinds, in ``hostile_kinds``, are added to
#: them unless ``--no-hostile``).
BASIC_FAULT_KINDS = (
    "segfault",
    "abort",
    "exit",
    "sigkill",
    "timeout",
    "cancel",
    "raise",
    "unpicklable",
    "too_large",
    "memory",
)
FAULT_KINDS = (*BASIC_FAULT_KINDS, *HOSTILE_KINDS)
KINDS = (HEALTHY, *FAULT_KINDS)
#: Faults that kill the worker while it runs the call (counted in ``workers_crashed``).
CRASH_KINDS = frozenset({"segfault", "abort", "exit", "sigkill"})
#: Calls the worker answers (counted in ``calls_served``).
REPLY_KINDS = frozenset({HEALTHY, "raise", "unpicklable", "too_large", "memory", *ANSWERED_KINDS})
#: The blocking API has no cancellation (only KeyboardInterrupt, in the main thread).
BLOCKING_KINDS = tuple(kind for kind in FAULT_KINDS if kind != "cancel")


def fault_kinds(api: str, hostile: bool) -> tuple[str, ...]:
    """The fault kinds a campaign through ``api`` plans."""
    kinds = BLOCKING_KINDS if api == "blocking" else FAULT_KINDS
    return tuple(kind for kind in kinds if hostile or kind not in HOSTILE_KINDS)


EXPECTED = {
    HEALTHY: "returns its own value",
    "segfault": "WorkerCrashedError, SIGSEGV",
    "abort": "WorkerCrashedError, SIGABRT",
    "exit": "WorkerCrashedError, its exit code",
    "sigkill": "WorkerCrashedError, SIGKILL, its pid",
    "timeout": "CallTimeoutError",
    "cancel": "cancelled / fail_after's TimeoutError",
    "raise": "ValueError from RemoteTraceback",
    "unpicklable": "SerializationError (result)",
    "too_large": "SerializationError (result, limit)",
    "memory": "MemoryError",
    **hostile_kinds.EXPECTED,
}

MEMORY_LIMIT = 1 << 30
OVERSIZED_RESULT = MAX_RESULT_SIZE + 1_000_000
ALLOCATION = 4 << 30
GRACE_PERIOD = 0.5
#: The policy timeout of the "timeout" fault (an ``isolated`` function's own timeout).
POLICY_TIMEOUT = 0.5
#: The ``fail_after`` of the "cancel" fault's second variant.
CANCEL_AFTER = 0.3
# The two variants of the "cancel" fault.
CANCEL_ONCE_STARTED = 0  # a cancel scope cancelled once the target reports it started
CANCEL_BY_FAIL_AFTER = 1  # anyio.fail_after around a call that hangs
#: How long to wait for processes that must have ended to disappear.
EXIT_WAIT = 10.0
FINAL_VALUE_BASE = 1 << 60


@dataclass(frozen=True)
class Config:
    calls: int = 2000
    seed: int = 0
    concurrency: int = 64
    workers: int = 4
    fault_rate: float = 0.1
    deadline: float = 600.0
    #: Mix the hostile kinds into the plan.
    hostile: bool = True
    #: Calls of the interrupts phase (on the main thread, one at a time).
    interrupt_calls: int = 1000
    #: Calls of the fork-failure phase's burst.
    fork_burst: int = 200


@dataclass(frozen=True)
class PlannedCall:
    index: int
    kind: str
    #: healthy: the value it must return; exit: the exit code; cancel: the variant.
    arg: int = 0


def make_plan(calls: int, seed: int, fault_rate: float, fault_kinds: Sequence[str] = FAULT_KINDS) -> list[PlannedCall]:
    """The calls, in order: ``round(calls * fault_rate)`` faults, every kind at least once
    when there are enough faults, at random positions. Depends only on the arguments."""
    rng = random.Random(seed)
    fault_count = min(calls, round(calls * fault_rate))
    kinds = list(fault_kinds)
    if fault_count < len(kinds):
        chosen = rng.sample(kinds, fault_count)
    else:
        chosen = kinds + [rng.choice(kinds) for _ in range(fault_count - len(kinds))]
    sequence = chosen + [HEALTHY] * (calls - fault_count)
    rng.shuffle(sequence)
    cancel_variants = itertools.cycle(rng.sample([CANCEL_ONCE_STARTED, CANCEL_BY_FAIL_AFTER], 2))
    flood_variants = itertools.cycle(rng.sample(hostile_kinds.FLOOD_VARIANTS, len(hostile_kinds.FLOOD_VARIANTS)))
    plan = []
    for index, kind in enumerate(sequence):
        arg = 0
        if kind == HEALTHY:
            arg = (index << 24) | rng.getrandbits(24)
        elif kind == "exit":
            arg = rng.randint(1, 125)
        elif kind == "cancel":
            arg = next(cancel_variants)  # alternating: both variants as soon as there are two
        elif kind == "output_flood":
            arg = next(flood_variants)
        plan.append(PlannedCall(index, kind, arg))
    return plan


def plan_digest(plan: Iterable[PlannedCall]) -> str:
    text = ";".join(f"{call.kind}:{call.arg}" for call in plan)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- what a call did, and whether that was right ---------------------------------------------


@dataclass
class Raw:
    """What one call did."""

    returned: bool = False
    value: object = None
    error: Exception | None = None
    cancelled: bool = False
    #: The worker pid the target reported (sigkill and cancel-once-started).
    reported_pid: int | None = None
    #: The kill or cancel helper failed.
    helper_error: BaseException | None = None
    #: KeyboardInterrupt ended the call (the interrupts phase).
    interrupted: bool = False


@dataclass(frozen=True)
class Outcome:
    index: int
    kind: str
    observed: str
    problem: str | None
    latency: float


def describe(raw: Raw) -> str:
    if raw.interrupted:
        return "KeyboardInterrupt"
    if raw.helper_error is not None:
        return f"helper failed ({type(raw.helper_error).__name__})"
    exc = raw.error
    if exc is not None:
        if isinstance(exc, freshproc.WorkerCrashedError):
            return f"WorkerCrashedError ({_signal_name(exc.signal) if exc.signal else 'exit code'})"
        if isinstance(exc, freshproc.SerializationError):
            return f"SerializationError ({exc.direction})"
        if isinstance(exc, freshproc.RemoteError):
            return f"RemoteError({exc.type_name})"
        if isinstance(exc.__cause__, freshproc.RemoteTraceback):
            return f"{type(exc).__name__} from RemoteTraceback"
        return type(exc).__qualname__
    if raw.cancelled:
        return "cancelled"
    if raw.returned:
        return "returned Captured" if isinstance(raw.value, freshproc.Captured) else "returned"
    return "nothing"


def judge(call: PlannedCall, raw: Raw) -> str | None:
    """None if the call did exactly what its kind must do, else what went wrong."""
    if raw.helper_error is not None:
        return f"the kill or cancel helper failed: {raw.helper_error!r}"
    exc = raw.error
    kind = call.kind
    if kind in HOSTILE_KINDS:
        return hostile_kinds.judge(kind, call.arg, raw.value, raw.returned, exc)
    if kind == HEALTHY:
        if not raw.returned or type(raw.value) is not int or raw.value != call.arg:
            return f"expected its own value {call.arg}, {_got(raw)}"
        return None
    if kind in CRASH_KINDS:
        if not isinstance(exc, freshproc.WorkerCrashedError):
            return f"expected WorkerCrashedError, {_got(raw)}"
        expected_signal = {"segfault": signal.SIGSEGV, "abort": signal.SIGABRT, "sigkill": signal.SIGKILL}.get(kind)
        if exc.signal != expected_signal:
            return f"expected signal {_signal_name(expected_signal)}, got {_signal_name(exc.signal)}: {exc!r}"
        if exc.pid is None:
            return f"the error has no pid: {exc!r}"
        if kind == "exit" and exc.exitcode != call.arg:
            return f"expected exit code {call.arg}, got {exc.exitcode}: {exc!r}"
        if kind == "sigkill" and exc.pid != raw.reported_pid:
            return f"the error names pid {exc.pid}, the killed worker was {raw.reported_pid}"
        return None
    if kind == "timeout":
        if type(exc) is not freshproc.CallTimeoutError or not isinstance(exc, TimeoutError):
            return f"expected CallTimeoutError, {_got(raw)}"
        return None
    if kind == "cancel":
        if call.arg == CANCEL_ONCE_STARTED:
            if exc is not None or raw.returned or not raw.cancelled:
                return f"expected the native cancellation, {_got(raw)}"
        elif type(exc) is not TimeoutError:
            return f"expected fail_after's TimeoutError, {_got(raw)}"
        return None
    if kind == "raise":
        message = raise_message(call)
        if type(exc) is not ValueError or str(exc) != message:
            return f"expected ValueError({message!r}), {_got(raw)}"
        cause = exc.__cause__
        if not isinstance(cause, freshproc.RemoteTraceback) or "raise_error" not in str(cause):
            return f"expected a RemoteTraceback naming raise_error as __cause__, got {cause!r}"
        return None
    if kind in ("unpicklable", "too_large"):
        if not isinstance(exc, freshproc.SerializationError) or (exc.direction, exc.stage) != ("result", "dump"):
            return f"expected SerializationError(direction='result', stage='dump'), {_got(raw)}"
        if kind == "too_large" and "limit" not in str(exc):
            return f"expected the error to mention the size limit: {exc!r}"
        return None
    if kind == "memory":
        if type(exc) is not MemoryError:
            return f"expected MemoryError, {_got(raw)}"
        return None
    raise AssertionError(f"unknown kind {kind!r}")


def raise_message(call: PlannedCall) -> str:
    return f"planned fault {call.index}"


def _got(raw: Raw) -> str:
    if raw.error is not None:
        return f"got {_short(repr(raw.error))}"
    if raw.returned:
        return f"returned {_short(repr(raw.value))}"
    return "got cancelled" if raw.cancelled else "got nothing"


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _signal_name(signum: int | None) -> str:
    if signum is None:
        return "none"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# -- processes and descriptors ---------------------------------------------------------------


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def child_pids() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _still_running(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still running (zombies count as ended) after waiting for their exit."""
    _, alive = psutil.wait_procs(list(processes), timeout=timeout)
    return [process for process in alive if _running(process)]


class ProcessTracker:
    """Every template and worker process the campaign saw (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._template: psutil.Process | None = None
        self._workers: dict[int, psutil.Process] = {}

    def note_template(self, pid: int | None) -> None:
        if pid is not None:
            with self._lock:
                self._template = psutil.Process(pid)

    def note_workers(self, pids: Iterable[int]) -> None:
        """Remember workers of the template (anything else with such a pid is ignored)."""
        with self._lock:
            template = self._template
            new = [pid for pid in pids if pid not in self._workers]
        for pid in new:
            try:
                process = psutil.Process(pid)
                if template is not None and process.ppid() != template.pid:
                    continue
            except psutil.Error:
                continue  # already gone
            with self._lock:
                self._workers.setdefault(pid, process)

    def workers(self, pids: Iterable[int]) -> list[psutil.Process]:
        with self._lock:
            return [self._workers[pid] for pid in pids if pid in self._workers]

    def all(self) -> list[psutil.Process]:
        with self._lock:
            template = [self._template] if self._template is not None else []
            return [*template, *self._workers.values()]

    @property
    def worker_count(self) -> int:
        with self._lock:
            return len(self._workers)


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
        """The caller's RSS once garbage is collected (see ``_Snapshot.leaks``) and the
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
        return _still_running(self.tracker.workers(ended), EXIT_WAIT)

    def hung_calls(self) -> list[PlannedCall]:
        with self._lock:
            return sorted(self.in_flight.values(), key=lambda call: call.index)


def _plain_target(call: PlannedCall) -> tuple[str, str, tuple[object, ...]] | None:
    """The target of a call that needs no helper (module, attribute, arguments)."""
    match call.kind:
        case "healthy":
            return FAULTS_MODULE, "ok", (call.arg,)
        case "segfault":
            return FAULTS_MODULE, "segfault", ()
        case "abort":
            return FAULTS_MODULE, "abort", ()
        case "exit":
            return FAULTS_MODULE, "exit_now", (call.arg,)
        case "raise":
            return FAULTS_MODULE, "raise_error", (raise_message(call),)
        case "unpicklable":
            return FAULTS_MODULE, "unpicklable_result", ()
        case "too_large":
            return FAULTS_MODULE, "large_result", (OVERSIZED_RESULT,)
        case "memory":
            return FAULTS_MODULE, "allocate", (ALLOCATION,)
    return None


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS keeps what the allocator keeps
        pass


# -- the async API -----------------------------------------------------------------------------


async def _call_async(ctx: Context, call: PlannedCall) -> Raw:
    raw = Raw()
    try:
        target = _plain_target(call)
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
            outcomes.append(_Run.outcome(call, raw, latency))

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
    """One campaign on the running event loop (asyncio or trio); ``api`` labels it."""
    plan = make_plan(config.calls, config.seed, config.fault_rate, fault_kinds(api, config.hostile))
    before = _Snapshot.take()
    tracker = ProcessTracker()
    pool = _make_pool(config)
    ctx = Context(pool, tracker)
    run = _Run(config, api, plan)
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


# -- the blocking API --------------------------------------------------------------------------


def _call_blocking(ctx: Context, call: PlannedCall, raw: Raw | None = None) -> Raw:
    """Make the call and record what it did in ``raw`` (a new one by default)."""
    raw = Raw() if raw is None else raw
    try:
        target = _plain_target(call)
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


def check_whole(pool: freshproc.Pool) -> Check:
    """With no call running: no worker checked out, nobody waiting for one."""
    ledger = pool._workers._ledger
    busy, waiting = ledger.busy(), len(ledger.waiting)
    return Check(
        "no worker left checked out, nobody waiting",
        busy == 0 and waiting == 0,
        f"{busy} workers checked out and {waiting} callers waiting with no call running",
    )


def _still_serves_blocking(pool: freshproc.Pool, count: int) -> str | None:
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
    before = _Snapshot.take()
    tracker = ProcessTracker()
    pool = _make_pool(config)
    ctx = Context(pool, tracker)
    run = _Run(config, "blocking", plan)
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
                raw = _call_blocking(ctx, call)
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
            run.serves_problem = _still_serves_blocking(pool, 2 * config.workers)
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


# -- running and reporting ---------------------------------------------------------------------


def _make_pool(config: Config, **options: Any) -> freshproc.Pool:
    return freshproc.Pool(
        config.workers,
        timeout=None,
        memory_limit=MEMORY_LIMIT,
        max_result_size=MAX_RESULT_SIZE,
        grace_period=GRACE_PERIOD,
        **options,
    )


@dataclass(frozen=True)
class _Snapshot:
    """Descriptors and child processes before the pool opens."""

    fds: frozenset[int]
    children: frozenset[int]

    @classmethod
    def take(cls) -> _Snapshot:
        return cls(frozenset(open_fds()), frozenset(child_pids()))

    def leaks(self, tracker: ProcessTracker) -> list[str]:
        """After the pool closed: descriptors opened and processes left since.

        Garbage is collected first: an exception a call raised sits in a reference cycle
        (its traceback holds the frames that hold it), and so may a result it shares a
        frame with, until the collector runs. What survives the collector is a leak."""
        gc.collect()
        problems = [f"descriptor {fd} -> {_describe_fd(fd)}" for fd in sorted(open_fds() - self.fds)]
        seen = tracker.all()
        children = [psutil.Process(pid) for pid in child_pids() - self.children if psutil.pid_exists(pid)]
        for process in _still_running([*seen, *children], EXIT_WAIT):
            try:
                name = process.name()
            except psutil.Error:
                name = "?"
            problems.append(f"process {process.pid} ({name}) still running")
        problems.extend(f"child process {pid} not reaped" for pid in child_pids() - self.children)
        return problems


@dataclass
class _Run:
    config: Config
    api: str
    plan: list[PlannedCall]
    outcomes: list[Outcome] = field(default_factory=list)
    hung: list[PlannedCall] = field(default_factory=list)
    serves_problem: str | None = "not reached"
    lingering: list[psutil.Process] = field(default_factory=list)
    stats: freshproc.PoolStats | None = None
    leaks: list[str] = field(default_factory=list)
    wall: float = 0.0
    workers_seen: int = 0
    #: The caller's RSS before the calls, the most seen after a hostile call, and after.
    rss: tuple[int, int, int] | None = None
    memfd_problem: str | None = None
    #: The calls that reached a worker, for the counters (None: every planned call).
    ran: list[PlannedCall] | None = None
    #: Answered calls outside the plan: the final check that the pool serves, and more.
    extra_served: int | None = None
    #: Checks of a phase, after the common ones.
    extra_checks: list[Check] = field(default_factory=list)
    #: Counted apart from the kinds in the table (say, KeyboardInterrupt per kind).
    notes: list[str] = field(default_factory=list)
    #: A phase's own check of the counters (None: every call counted as its kind says).
    stats_check: Callable[[], Check] | None = None
    #: What the table's title says (default: "<api> API"), and the calls at once.
    title: str | None = None
    concurrency: int | None = None

    @staticmethod
    def outcome(call: PlannedCall, raw: Raw, latency: float) -> Outcome:
        """Judge a call, then let go of its value: a raw its exception's traceback keeps
        in a reference cycle must not hold a result (a mapped memfd) until the collector
        runs, or the leak check would see its descriptor."""
        problem = None if raw.interrupted else judge(call, raw)
        outcome = Outcome(call.index, call.kind, describe(raw), problem, latency)
        raw.value = None
        return outcome

    def note_memory(self, ctx: Context) -> None:
        self.rss = (ctx.rss_before, ctx.rss_peak, ctx.rss_settled())
        self.memfd_problem = ctx.memfd_problem()

    def report(self) -> Report:
        checks = [
            self._check_outcomes(),
            Check("nothing hung", not self.hung, self._hung_detail()),
            Check("no descriptor or process leaked", not self.leaks, "; ".join(self.leaks) or "none"),
            Check(
                "workers ended by faults are gone",
                not self.lingering,
                ", ".join(str(process.pid) for process in self.lingering) or "all gone before close",
            ),
            self._check_stats() if self.stats_check is None else self.stats_check(),
            Check(
                "the pool still serves afterwards",
                self.serves_problem is None,
                self.serves_problem or f"{2 * self.config.workers} concurrent calls returned their values",
            ),
        ]
        if any(call.kind in HOSTILE_KINDS for call in self.plan):
            checks.append(self._check_memory())
        checks.extend(self.extra_checks)
        return Report(self.api, self.config, self.plan, sorted(self.outcomes, key=lambda o: o.index), checks, self)

    def _check_outcomes(self) -> Check:
        wrong = sum(1 for outcome in self.outcomes if outcome.problem is not None)
        missing = len(self.plan) - len(self.outcomes)
        detail = f"{len(self.outcomes) - wrong}/{len(self.plan)} as expected"
        if missing:
            detail += f", {missing} never finished"
        return Check("every call got its own expected outcome", wrong == 0 and missing == 0, detail)

    def _hung_detail(self) -> str:
        if not self.hung:
            return f"{self.wall:.1f} s, deadline {self.config.deadline:.0f} s"
        calls = ", ".join(f"#{call.index} {call.kind}" for call in self.hung[:20])
        return f"deadline of {self.config.deadline:.0f} s passed; in flight: {calls}"

    def _check_memory(self) -> Check:
        name = "the caller's memory stays bounded by hostile workers"
        if self.rss is None:
            return Check(name, False, "not reached")
        before, peak, after = self.rss
        named = hostile_kinds.named_bytes(call.kind for call in self.plan)
        detail = (
            f"RSS {before / 2**20:.0f} MiB before, {after / 2**20:.0f} MiB after (limit "
            f"+{hostile_kinds.RSS_GROWTH_LIMIT >> 20} MiB), {peak / 2**20:.0f} MiB at most after a hostile "
            f"call, garbage included (limit +{hostile_kinds.RSS_PEAK_LIMIT >> 20} MiB); the hostile calls "
            f"named {named / 2**30:.1f} GiB, {hostile_kinds.SPARSE_SIZE >> 20} MiB at once, and sizes up to 2**63"
        )
        if self.memfd_problem is not None:
            return Check(name, False, f"a memfd result changed after its call: {self.memfd_problem}; {detail}")
        bounded = after - before < hostile_kinds.RSS_GROWTH_LIMIT and peak - before < hostile_kinds.RSS_PEAK_LIMIT
        return Check(name, bounded, detail)

    def consistency_problems(self) -> list[str]:
        """What ``pool.stats()`` gets wrong whatever the calls did."""
        stats = self.stats
        assert stats is not None
        problems = []
        if stats.workers_started != stats.workers_alive + stats.workers_exited:
            problems.append(f"workers_started {stats.workers_started} != alive + exited {stats.workers_exited}")
        exits = sum(getattr(stats, f"workers_{reason}") for reason in EXIT_REASONS)
        if exits != stats.workers_exited:
            problems.append(f"exits by reason add up to {exits}, not workers_exited {stats.workers_exited}")
        if stats.calls_served != stats.calls_ok + stats.calls_failed:
            problems.append(f"calls_served {stats.calls_served} != calls_ok + calls_failed")
        if stats.workers_alive > self.config.workers:
            problems.append(f"workers_alive {stats.workers_alive} > {self.config.workers}")
        return problems

    def _check_stats(self) -> Check:
        stats = self.stats
        if stats is None:
            return Check("pool.stats() adds up", False, "not reached")
        kinds = Counter(call.kind for call in (self.plan if self.ran is None else self.ran))
        crashes = sum(kinds[kind] for kind in (*CRASH_KINDS, *REFUSED_KINDS))
        extra = 2 * self.config.workers if self.extra_served is None else self.extra_served
        replies = sum(kinds[kind] for kind in REPLY_KINDS) + extra
        cancelled_once_started = sum(1 for c in self.plan if c.kind == "cancel" and c.arg == CANCEL_ONCE_STARTED)
        # Workers a fault surely ended; a fail_after may also end one, or expire in the queue.
        ended = crashes + kinds["timeout"] + kinds["memory"] + cancelled_once_started
        problems = []
        if stats.workers_crashed != crashes:
            problems.append(f"workers_crashed {stats.workers_crashed} != {crashes} crash faults and refused replies")
        if stats.calls_served != replies:
            problems.append(f"calls_served {stats.calls_served} != {replies} answered calls")
        if stats.workers_retired != kinds["memory"]:
            problems.append(f"workers_retired {stats.workers_retired} != {kinds['memory']} memory faults")
        problems.extend(self.consistency_problems())
        if stats.workers_started < ended + stats.workers_alive:
            problems.append(f"workers_started {stats.workers_started} < {ended} ended + {stats.workers_alive} alive")
        detail = "; ".join(problems) or (
            f"crashed {crashes}, served {replies}, retired {kinds['memory']}, started = alive + exited >= {ended} + alive"
        )
        return Check("pool.stats() adds up", not problems, detail)


EXIT_REASONS = ("recycled", "expired", "crashed", "timed_out", "cancelled", "retired", "closed")


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Report:
    api: str
    config: Config
    plan: list[PlannedCall]
    outcomes: list[Outcome]
    checks: list[Check]
    run: _Run

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    def table(self) -> str:
        config, run = self.config, self.run
        faults_planned = sum(1 for call in self.plan if call.kind != HEALTHY)
        lines = [
            (
                f"== freshproc fault campaign: {run.title or self.api + ' API'}, seed {config.seed}, "
                f"{len(self.plan)} calls ({faults_planned} faults), "
                f"concurrency {run.concurrency or config.concurrency}, Pool({config.workers}) =="
            ),
            f"plan {plan_digest(self.plan)}",
            f"{'kind':<16} {'calls':>6} {'right':>6}  {'expected':<42} observed",
        ]
        planned = Counter(call.kind for call in self.plan)
        for kind in KINDS:
            if not planned[kind]:
                continue
            outcomes = [outcome for outcome in self.outcomes if outcome.kind == kind]
            right = sum(1 for outcome in outcomes if outcome.problem is None)
            observed = Counter(outcome.observed for outcome in outcomes)
            seen = ", ".join(f"{label} x{count}" for label, count in observed.most_common())
            lines.append(f"{kind:<16} {planned[kind]:>6} {right:>6}  {EXPECTED[kind]:<42} {seen}")
        right = sum(1 for outcome in self.outcomes if outcome.problem is None)
        lines.append(f"{'total':<16} {len(self.plan):>6} {right:>6}")
        latencies = sorted(outcome.latency for outcome in self.outcomes if outcome.kind == HEALTHY)
        if latencies:
            lines.append(
                f"healthy latency (queueing included): p50 {_quantile(latencies, 0.50) * 1e3:.1f} ms, "
                f"p99 {_quantile(latencies, 0.99) * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms"
            )
        if run.stats is not None:
            stats = run.stats
            lines.append(
                f"pool.stats(): workers_started {stats.workers_started}, workers_crashed {stats.workers_crashed}, "
                f"workers_retired {stats.workers_retired}, calls_served {stats.calls_served}, "
                f"workers_alive {stats.workers_alive}, workers_idle {stats.workers_idle}"
            )
        lines.append(f"worker processes seen: {run.workers_seen}; wall time {run.wall:.1f} s")
        lines.extend(run.notes)
        lines.append("checks:")
        lines.extend(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}" for check in self.checks)
        wrong = [outcome for outcome in self.outcomes if outcome.problem is not None]
        if wrong:
            lines.append(f"wrong outcomes ({len(wrong)}, first 20):")
            lines.extend(f"  #{outcome.index} {outcome.kind}: {outcome.problem}" for outcome in wrong[:20])
        lines.append(f"RESULT ({self.api}): {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


APIS = ("asyncio", "trio", "blocking")
#: Runs beside the three APIs' campaigns, each with a pool of its own.
PHASES = ("interrupts", "fork-failure")


def run_api(config: Config, api: str) -> Report:
    """One campaign through ``api``, or one phase (on the calling thread, which must be
    the main thread for "interrupts")."""
    if api == "blocking":
        return run_blocking(config)
    if api == "interrupts":
        from tests.stress.interrupts import run_interrupts  # it imports this module

        return run_interrupts(config, watchdog=True)
    if api == "fork-failure":
        from tests.stress.fork_failure import run_fork_failure  # it imports this module

        return run_fork_failure(config)
    return anyio.run(run_async, config, api, backend=api)


def _parse(argv: Sequence[str] | None) -> tuple[Config, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m tests.stress.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed, printed")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--deadline", type=float, default=None, help="seconds per API (default: generous)")
    parser.add_argument("--api", choices=[*APIS, "all", "none"], default="all", help="which API drives the calls")
    parser.add_argument(
        "--phase",
        choices=[*PHASES, "all", "none"],
        action="append",
        help="a phase to run after the APIs (repeatable; default: all)",
    )
    parser.add_argument(
        "--hostile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mix hostile workers (tests/hostile.py) into the plan (default: yes)",
    )
    parser.add_argument("--interrupt-calls", type=int, default=1000, help="calls of the interrupts phase")
    parser.add_argument("--fork-burst", type=int, default=200, help="calls of the fork-failure phase's burst")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.concurrency < 1 or args.workers < 1 or not 0 <= args.fault_rate <= 1:
        parser.error("--calls, --concurrency and --workers must be positive, --fault-rate within [0, 1]")
    if args.interrupt_calls < 1 or args.fork_burst < 1:
        parser.error("--interrupt-calls and --fork-burst must be positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    deadline = args.deadline if args.deadline is not None else max(300.0, 0.3 * args.calls)
    config = Config(
        args.calls,
        seed,
        args.concurrency,
        args.workers,
        args.fault_rate,
        deadline,
        hostile=args.hostile,
        interrupt_calls=args.interrupt_calls,
        fork_burst=args.fork_burst,
    )
    apis = list(APIS) if args.api == "all" else [] if args.api == "none" else [args.api]
    phases = args.phase or ["all"]
    selected = [phase for phase in PHASES if "all" in phases or phase in phases]
    return config, apis + ([] if "none" in phases else selected)


def main(argv: Sequence[str] | None = None) -> int:
    config, apis = _parse(argv)
    print(f"seed {config.seed} (rerun with --seed {config.seed})", flush=True)
    results: list[tuple[str, bool, float]] = []
    for api in apis:
        started = time.monotonic()
        report = run_api(config, api)
        results.append((api, report.ok, time.monotonic() - started))
        print(report.table(), end="\n\n", flush=True)
    for api, ok, wall in results:
        print(f"{api:<12} {'PASS' if ok else 'FAIL'}  {wall:.1f} s")
    failed = [api for api, ok, _ in results if not ok]
    print(f"campaign {'FAILED: ' + ', '.join(failed) if failed else 'passed'} (seed {config.seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
