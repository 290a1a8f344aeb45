"""The worker set cannot be torn or wedged: interrupts inside its critical sections, calls
from its own thread, a start that fails half way, workers that died unseen."""

from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import freshproc
from freshproc import _interrupts
from freshproc._ledger import Ledger
from tests import faults
from tests.handshake import Handshake

ROOT = Path(__file__).resolve().parent.parent
TraceFunction = Callable[[types.FrameType, str, Any], Any]


def _settled(pool: freshproc.Pool) -> Ledger:
    """The ledger, checked for what must hold whenever no call is in flight: every
    worker alive is idle (none is owned by a caller that is gone), nobody waits."""
    ledger = pool._workers._ledger
    assert ledger.busy() == 0, f"{ledger.busy()} workers are checked out with no call running"
    assert not ledger.waiting
    return ledger


def _in_protected_code(frame: types.FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _interrupts._protected_codes:
            return True
        frame = frame.f_back
    return False


class _LineTracer:
    """Counts the lines run inside critical sections; raises SIGINT at line ``at``."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.lines = 0

    def __call__(self, frame: types.FrameType, event: str, arg: object) -> TraceFunction:
        if event == "line" and _in_protected_code(frame):
            if self.lines == self.at:
                signal.raise_signal(signal.SIGINT)
            self.lines += 1
        return self


@pytest.fixture
def traced() -> Iterator[Callable[[_LineTracer], None]]:
    def install(tracer: _LineTracer) -> None:
        sys.settrace(tracer)

    yield install
    sys.settrace(None)


@pytest.mark.parametrize(
    "kind",
    ["plain", "captured-large-memfd"],
)
def test_a_sigint_at_any_line_of_a_critical_section_leaves_the_pool_whole(
    kind: str, traced: Callable[[_LineTracer], None], fd_guard: Callable[[], None], default_sigint: None
) -> None:
    """A SIGINT raised at each line of the critical sections (checkout, check-in, the
    receive of a reply with its descriptors, the capture files), in a seeded order, is
    held back until the section is done: the call raises KeyboardInterrupt, no worker is
    left owned by nobody (before, one Ctrl-C there hung every later call), and no
    descriptor leaks (before, one right after the receive leaked the reply's memfd)."""
    assert threading.current_thread() is threading.main_thread()
    installs_before = _interrupts._installs  # pools other tests left open keep theirs
    env = {"FRESHPROC_DIRECT_COPY": "0"} if kind != "plain" else None

    def call(pool: freshproc.Pool, value: int) -> object:
        if kind == "plain":
            return pool.call_sync("tests.faults", "ok", value)
        return pool.call_captured_sync("tests.faults", "large_result", 1 << 20).value

    with freshproc.Pool(1, env=env) as pool:
        assert signal.getsignal(signal.SIGINT) is _interrupts._handler
        call(pool, 0)
        counter = _LineTracer()
        traced(counter)
        call(pool, 0)
        sys.settrace(None)
        assert counter.lines > 10, "the trace saw no critical section"
        interrupted = 0
        for line in random.Random(2025).sample(range(counter.lines), counter.lines):
            traced(_LineTracer(at=line))
            try:
                call(pool, line)
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                sys.settrace(None)
            _settled(pool)
            assert call(pool, 1) is not None
        assert interrupted > counter.lines // 2
        stats = pool.stats()
        assert stats.workers_started == stats.workers_alive + stats.workers_exited
    fd_guard()
    assert _interrupts._installs == installs_before
    if not installs_before:  # the last pool that installed it put the default back
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_a_blocking_call_waits_counts_as_cancelled(default_sigint: None) -> None:
    """Ctrl-C while the caller waits for the reply: KeyboardInterrupt, the worker is
    ended, and the call is counted as cancelled (it was counted as a crash)."""
    handshake = Handshake()
    with freshproc.Pool(1) as pool:
        pool.call_sync("tests.faults", "ok", 0)

        def interrupt_once_started() -> None:
            handshake.wait_started()
            os.kill(os.getpid(), signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_once_started)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            pool.call_sync("tests.faults", "handshake_then_hang", handshake.spec)
        interrupter.join()
        stats = pool.stats()
        assert (stats.calls_cancelled, stats.workers_cancelled) == (1, 1)
        assert (stats.calls_crashed, stats.workers_crashed) == (0, 0)
        assert pool.call_sync("tests.faults", "ok", 3) == 3


class _Marker:
    """Something a weak reference can watch, hung on an exception (which cannot be)."""


def test_a_failed_calls_exception_is_freed_without_the_garbage_collector() -> None:
    """The exception a failed call raises is not kept in a reference cycle through the
    round trip's frames (with its reply): it goes as soon as nothing refers to it."""
    with freshproc.Pool(1) as pool:
        gc.disable()
        try:
            references = []
            for _ in range(3):
                try:
                    pool.call_sync("tests.faults", "raise_error", "x" * 1000)
                except ValueError as exc:
                    marker = _Marker()
                    exc.marker = marker  # type: ignore[attr-defined]
                    references.append(weakref.ref(marker))
                    del marker
            assert all(reference() is None for reference in references)
        finally:
            gc.enable()


_STORM_SCRIPT = """
import os, random, signal, threading
import freshproc

# Python's own Ctrl-C handling, whatever this process inherited (a shell starts its
# background jobs with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)

rng = random.Random(4242)
intervals = [rng.uniform(0.001, 0.003) for _ in range(400)]
stop = threading.Event()

def interrupter():
    for interval in intervals:
        if stop.wait(interval):
            return
        os.kill(os.getpid(), signal.SIGINT)

def storm(pool):
    thread = threading.Thread(target=interrupter)
    thread.start()
    interrupted = served = 0
    while thread.is_alive():
        try:
            pool.call_sync("tests.faults", "ok", 1)
            served += 1
        except KeyboardInterrupt:
            interrupted += 1
    thread.join()
    return interrupted, served

with freshproc.Pool(1) as pool:
    pool.call_sync("tests.faults", "ok", 0)
    while True:  # an interrupt may still land after the storm: run it again
        try:
            interrupted, served = storm(pool)
            break
        except KeyboardInterrupt:
            continue
    ledger = pool._workers._ledger
    print("interrupted", interrupted, "served", served, "busy", ledger.busy(), "waiting", len(ledger.waiting))
    print("after", pool.call_sync("tests.faults", "ok", 7))
"""


def test_ctrl_c_every_few_milliseconds_never_wedges_the_pool() -> None:
    """The reported case, in a process of its own: SIGINT every 1-3 ms (seeded) during a
    loop of blocking calls on Pool(1). Some calls are interrupted; afterwards no worker is
    owned by nobody, nobody waits, and the pool serves."""
    completed = subprocess.run(
        [sys.executable, "-c", _STORM_SCRIPT], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary, after = completed.stdout.splitlines()[-2:]
    words = summary.split()
    assert int(words[1]) > 0, summary  # some calls were interrupted
    assert (words[5], words[7]) == ("0", "0"), summary
    assert after == "after 7"


def test_a_call_from_the_supervisor_thread_raises_instead_of_hanging() -> None:
    """A finalizer that the garbage collector runs on the supervisor thread and that makes
    a call would wait for a worker only that thread can deliver: it gets a clear error."""
    seen: list[BaseException | int] = []

    class CallsInDel:
        def __init__(self, pool: freshproc.Pool) -> None:
            self.pool = pool
            self.cycle = self

        def __del__(self) -> None:
            try:
                seen.append(self.pool.call_sync("tests.faults", "ok", 1))
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                seen.append(exc)

    with freshproc.Pool(1) as pool:
        workers = pool._workers
        original = workers._next_timer
        collected = threading.Event()

        def next_timer() -> float | None:
            # The supervisor calls this after every event: collect garbage there once.
            if not collected.is_set() and threading.current_thread() is workers._supervisor:
                collected.set()
                gc.collect()
            return original()

        gc.disable()
        try:
            CallsInDel(pool)  # garbage in a cycle, collected only by gc.collect()
            workers._next_timer = next_timer  # type: ignore[method-assign]
            pool.call_sync("tests.faults", "ok", 0)  # spawns a worker: an event for the supervisor
            assert collected.wait(10)
        finally:
            gc.enable()
        assert len(seen) == 1
        assert isinstance(seen[0], freshproc.FreshprocError)
        assert "supervisor thread" in str(seen[0])
        assert pool.call_sync("tests.faults", "ok", 2) == 2


def test_a_failed_start_leaves_the_pool_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor thread cannot be started (as at interpreter shutdown): the call
    raises PoolClosedError, the template it started is gone, and once threads can start
    again the same pool serves."""
    children_before = {child.pid for child in psutil.Process().children()}
    real_start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        if thread.name == "freshproc-supervisor":
            raise RuntimeError("can't create new thread at interpreter shutdown")
        real_start(thread)

    pool = freshproc.Pool(1)
    try:
        monkeypatch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(freshproc.PoolClosedError, match="can't create new thread"):
            pool.call_sync("tests.faults", "ok", 1)
        monkeypatch.undo()
        assert pool.template_pid is None
        assert {child.pid for child in psutil.Process().children()} == children_before
        assert pool.call_sync("tests.faults", "ok", 2) == 2
    finally:
        pool.close()


_ATEXIT_SCRIPT = """
import atexit, freshproc

def at_exit():
    pool = freshproc.Pool(1)
    try:
        print("result", pool.call_sync("os", "getpid") > 0, flush=True)
    except freshproc.PoolClosedError as exc:
        print("closed", exc, flush=True)
    finally:
        pool.close()

atexit.register(at_exit)
"""


def test_a_call_from_an_atexit_handler_works_or_says_the_pool_is_closed() -> None:
    """A pool made and used in an atexit handler (3.12+ refuses new threads then) either
    serves or raises PoolClosedError; it never hangs."""
    completed = subprocess.run(
        [sys.executable, "-c", _ATEXIT_SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(("result True", "closed")), completed.stdout


def test_idle_workers_that_died_unseen_do_not_exhaust_the_template_retries() -> None:
    """Four idle workers die while the supervisor hears nothing: a call moves past each
    one (they ran nothing) and is served by a new worker. The dead-worker retries and the
    template-restart retries are separate budgets (one shared counter ended such a call
    with AssertionError('unreachable'))."""
    with freshproc.Pool(4) as pool:
        workers = pool._workers
        handshakes = [Handshake() for _ in range(4)]
        holders = [
            threading.Thread(target=pool.run_sync, args=(faults.handshake_then_pid, handshake.spec))
            for handshake in handshakes
        ]
        for holder in holders:
            holder.start()
        for handshake in handshakes:
            handshake.wait_started()
        for handshake in handshakes:
            handshake.release()
        for holder in holders:
            holder.join()
        pids = pool.worker_pids()
        assert len(pids) == 4

        # The supervisor blocks before it records any exit, until told to go on.
        resume = threading.Event()
        real_transition = workers._transition

        def held_transition(*args: Any) -> None:
            resume.wait()
            real_transition(*args)

        workers._transition = held_transition  # type: ignore[method-assign, assignment]
        dead = threading.Event()
        outcomes: list[str] = []
        real_release = workers.release

        def counting_release(lease: Any, outcome: Any, **kwargs: Any) -> None:
            outcomes.append(outcome)
            if outcomes.count("dead") == 4:
                dead.set()
            real_release(lease, outcome, **kwargs)

        workers.release = counting_release  # type: ignore[method-assign]
        processes = [psutil.Process(pid) for pid in pids]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(processes, timeout=30)  # the template reaps them
        assert not alive
        result: list[object] = []
        caller = threading.Thread(target=lambda: result.append(pool.call_sync("tests.faults", "ok", 5)))
        caller.start()
        assert dead.wait(30), outcomes
        resume.set()
        caller.join(30)
        assert result == [5]
        _settled(pool)


def test_interrupt_protection_is_installed_only_over_the_default_handler() -> None:
    """A program's own SIGINT handler is left alone."""

    def own(signum: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, own)
    try:
        with freshproc.Pool(1) as pool:
            assert pool.call_sync("tests.faults", "ok", 1) == 1
            assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)


_POOL_LINE = 0


def _use_pools_and_drop_them(count: int) -> list[psutil.Process]:
    """Make ``count`` pools, call on each, and let go of them unclosed; return the
    processes they started."""
    global _POOL_LINE
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    _POOL_LINE = sys._getframe().f_lineno + 1
    pools = [freshproc.Pool(1) for _ in range(count)]
    for pool in pools:
        pool.call_sync("tests.faults", "ok", 1)
    return [child for child in psutil.Process().children(recursive=True) if child.pid not in before]


def test_a_dropped_pool_ends_its_processes_and_warns_where_it_was_made() -> None:
    """A Pool garbage-collected without close(): its template and workers end (a
    finalizer), and a ResourceWarning names the line that made it. (Before, three dropped
    pools left six processes until the interpreter exited.)"""
    with pytest.warns(ResourceWarning, match=r"unclosed freshproc.Pool made at .*test_robustness.py:\d+") as caught:
        started = _use_pools_and_drop_them(3)  # collected by reference counting on return
    assert len(caught) == 3
    assert all(f"test_robustness.py:{_POOL_LINE}" in str(warning.message) for warning in caught)
    assert len(started) >= 6
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive


def test_unknown_backend_fails_when_the_pool_is_made() -> None:
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        freshproc.Pool(backend="nope")


def test_version_is_exported() -> None:
    assert isinstance(freshproc.__version__, str)
    assert freshproc.__version__[0].isdigit()
