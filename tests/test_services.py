"""Services against real worker processes: state that lives across calls, restarts after
crashes, exits, failed health checks, timeouts and cancellations, replicas, graceful close,
errors, and no leftovers. Synchronized by handshakes, files and process exits, never sleeps."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psutil
import pytest

import freshproc
from freshproc import RemoteTraceback
from tests.handshake import Handshake
from tests.service_targets import (
    AsyncManaged,
    Broken,
    Checked,
    Closable,
    Counter,
    Echo,
    FailingClose,
    Fragile,
    HangingClose,
    Managed,
    read_lines,
)

#: How long a process that is being ended may take to go, at most (a backstop, not a wait).
EXIT_DEADLINE = 10.0


def wait_gone(pid: int, timeout: float = EXIT_DEADLINE) -> None:
    """Wait for process ``pid`` to exit (it need not be our child)."""
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass


def descendants() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


# -- state and restarts -----------------------------------------------------------------


async def test_state_lives_across_calls_and_restart_starts_fresh() -> None:
    """A counter keeps its state across 1,000 calls (by name, by the class's function and
    by attribute); ``restart()`` gives a new object in a new pid, and ``restarts`` counts."""
    async with freshproc.service(Counter, 10) as svc:
        pid = await svc.call(Counter.getpid)
        for _ in range(1000):
            await svc.call("bump")
        assert await svc.call(Counter.bump, 0) == 1010
        assert await svc.bump_async(2) == 1012
        assert await svc.getpid() == pid
        assert svc.restarts == 0
        await svc.restart()
        assert await svc.call("get") == 10
        assert await svc.call("getpid") != pid
        assert svc.restarts == 1


def test_state_lives_across_calls_and_restart_starts_fresh_blocking() -> None:
    """The same through the blocking API: ``call_sync`` and ``restart_sync``."""
    with freshproc.service(Counter) as svc:
        pid = svc.call_sync("getpid")
        for _ in range(1000):
            svc.call_sync(Counter.bump)
        assert svc.call_sync("get") == 1000
        svc.restart_sync()
        assert (svc.call_sync("get"), svc.restarts) == (0, 1)
        assert svc.call_sync("getpid") != pid
        wait_gone(pid)


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_crash_raises_and_the_next_call_gets_a_fresh_object(concurrency: int) -> None:
    """The call that segfaults raises WorkerCrashedError; the next is served by a new pid
    with fresh state; ``restarts`` counts the restart."""
    options = freshproc.ServiceOptions(max_concurrency=concurrency)
    async with freshproc.service(Fragile, options=options) as svc:
        pid, calls = await svc.step()
        assert calls == 1
        assert await svc.step() == (pid, 2)
        with pytest.raises(freshproc.WorkerCrashedError) as crashed:
            await svc.step()
        assert crashed.value.signal == signal.SIGSEGV
        new_pid, calls = await svc.step()
        assert (new_pid != pid, calls, svc.restarts, svc.alive) == (True, 1, 1, True)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_too_many_crashes_in_the_window_fail_the_service(caplog: pytest.LogCaptureFixture, concurrency: int) -> None:
    """With ``max_restarts=2`` the third crash inside the window fails the service: every
    later call raises ServiceFailedError whose ``__cause__`` is that crash; the failure is
    logged once, saying so once."""
    options = freshproc.ServiceOptions(max_restarts=2, max_concurrency=concurrency)
    with (
        caplog.at_level(logging.WARNING, logger="freshproc.service"),
        freshproc.service(Fragile, options=options) as svc,
    ):
        crashes = []
        for _ in range(3):
            assert svc.call_sync("step")[1] == 1
            assert svc.call_sync("step")[1] == 2
            with pytest.raises(freshproc.WorkerCrashedError) as crashed:
                svc.call_sync("step")
            crashes.append(crashed.value)
        assert svc.restarts == 2
        assert not svc.alive
        for _ in range(2):
            with pytest.raises(freshproc.ServiceFailedError, match=r"more than 2 restarts") as failed:
                svc.call_sync("step")
            assert failed.value.__cause__ is crashes[-1]
        with pytest.raises(freshproc.ServiceFailedError):
            svc.restart_sync()
    (logged,) = [record.getMessage() for record in caplog.records if record.name == "freshproc.service"]
    assert logged.count("failed") == 1, logged


async def test_calls_queued_behind_a_crash_run_exactly_once(tmp_path: Path) -> None:
    """Tasks that call while the first call crashes (on a handshake): every queued call
    runs on the restarted process, none is lost and none runs twice (each appends a
    record to a file)."""
    records = tmp_path / "records"
    handshake = Handshake()
    results: dict[int, int] = {}
    async with freshproc.service(Fragile) as svc:

        async def crash() -> None:
            with pytest.raises(freshproc.WorkerCrashedError):
                await svc.crash_after_handshake(handshake.spec)

        async def record(index: int) -> None:
            results[index] = await svc.record(str(records), index)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(crash)
                await anyio.to_thread.run_sync(handshake.wait_started)
                for index in range(8):
                    group.start_soon(record, index)
                await anyio.wait_all_tasks_blocked()  # all queued for the one process
                handshake.release()
        assert results == {index: index for index in range(8)}
        assert sorted(int(line) for line in read_lines(records)) == list(range(8))
        assert svc.restarts == 1


def test_calls_queued_behind_a_crash_run_exactly_once_blocking(tmp_path: Path) -> None:
    """The same with threads calling ``call_sync`` while the first call crashes."""
    records = tmp_path / "records"
    handshake = Handshake()
    results: dict[int, int] = {}
    errors: list[BaseException] = []
    with freshproc.service(Fragile) as svc:

        def crash() -> None:
            try:
                svc.call_sync("crash_after_handshake", handshake.spec)
            except freshproc.WorkerCrashedError as exc:
                errors.append(exc)

        def record(index: int) -> None:
            results[index] = svc.call_sync("record", str(records), index)

        crasher = threading.Thread(target=crash)
        crasher.start()
        handshake.wait_started()
        callers = [threading.Thread(target=record, args=(index,)) for index in range(8)]
        for caller in callers:
            caller.start()
        handshake.release()
        for thread in [crasher, *callers]:
            thread.join(30)
            assert not thread.is_alive()
    assert [type(error) for error in errors] == [freshproc.WorkerCrashedError]
    assert results == {index: index for index in range(8)}
    assert sorted(int(line) for line in read_lines(records)) == list(range(8))


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize(("restart", "comes_back"), [("always", True), ("never", False), ("on-failure", False)])
def test_a_clean_exit_is_restarted_only_with_always(
    restart: freshproc._supervision.Restart, comes_back: bool, concurrency: int
) -> None:
    """``restart="always"`` brings back an object whose method called ``os._exit(0)``;
    with ``"never"``, and with the default ``"on-failure"`` (a clean end is no failure),
    the next call raises ServiceFailedError."""
    with freshproc.service(
        Counter, options=freshproc.ServiceOptions(restart=restart, max_concurrency=concurrency)
    ) as svc:
        pid = svc.call_sync("getpid")
        assert svc.call_sync("bump") == 1
        with pytest.raises(freshproc.WorkerCrashedError) as ended:
            svc.call_sync("exit_cleanly")
        assert ended.value.exitcode == 0
        if comes_back:
            assert svc.call_sync("bump") == 1
            assert svc.call_sync("getpid") != pid
            assert svc.restarts == 1
        else:
            with pytest.raises(freshproc.ServiceFailedError) as failed:
                svc.call_sync("bump")
            assert failed.value.__cause__ is ended.value
            assert svc.restarts == 0


# -- health -----------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("how", ["hang", "raise"])
def test_an_unhealthy_process_is_restarted(tmp_path: Path, how: str, concurrency: int) -> None:
    """A health method that starts hanging (on a pipe the test never writes) gets its
    process ended within ``health_interval + health_timeout`` plus a margin; one that
    raises gets it ended too. The next call runs on a new, healthy object."""
    trigger = tmp_path / "trigger"
    handshake = Handshake()
    interval, timeout, margin = 0.2, 0.5, 5.0
    options = freshproc.ServiceOptions(
        health="healthy", health_interval=interval, health_timeout=timeout, max_concurrency=concurrency
    )
    with freshproc.service(Checked, str(trigger), handshake.spec, how, options=options) as svc:
        pid = svc.call_sync("getpid")
        old = psutil.Process(pid)
        started = time.monotonic()
        trigger.write_text("")
        if how == "hang":
            handshake.wait_started()
        old.wait(interval + timeout + margin)
        assert time.monotonic() - started < interval + timeout + margin
        assert not trigger.exists()
        assert svc.call_sync("getpid") != pid
        assert svc.restarts == 1


# -- replicas ---------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_replicas_spread_and_restart_alone(concurrency: int) -> None:
    """With ``replicas=3``, three calls held at once run in three pids (each holds its
    replica until all three have started); SIGKILLing one replica replaces only it: the
    others keep their state."""

    async def round_of_three(svc: freshproc.Service[Counter]) -> dict[int, int]:
        handshakes = [Handshake() for _ in range(3)]
        seen: dict[int, int] = {}

        async def hold(handshake: Handshake) -> None:
            pid, value = await svc.call(Counter.bump_and_hold, handshake.spec)
            seen[pid] = value

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for handshake in handshakes:
                    group.start_soon(hold, handshake)
                for handshake in handshakes:
                    await anyio.to_thread.run_sync(handshake.wait_started)
                for handshake in handshakes:
                    handshake.release()
        return seen

    options = freshproc.ServiceOptions(replicas=3, max_concurrency=concurrency)
    async with freshproc.service(Counter, options=options) as svc:
        first = await round_of_three(svc)
        assert len(first) == 3
        assert set(first.values()) == {1}
        victim, *survivors = sorted(first)
        os.kill(victim, signal.SIGKILL)
        await anyio.to_thread.run_sync(wait_gone, victim)
        second = await round_of_three(svc)
        assert len(second) == 3
        assert {pid: second[pid] for pid in survivors} == dict.fromkeys(survivors, 2)
        (replacement,) = set(second) - set(survivors)
        assert replacement != victim
        assert second[replacement] == 1


# -- graceful stop ----------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_process_that_dies_idle_counts_as_a_restart(concurrency: int) -> None:
    """A process killed while no call runs on it is replaced by the worker set on its own;
    the supervisor counts it all the same (restarts, and toward max_restarts)."""
    options = freshproc.ServiceOptions(max_restarts=1, max_concurrency=concurrency)
    with freshproc.service(Counter, options=options) as svc:
        assert svc.call_sync("bump") == 1
        old = psutil.Process(svc.pid)
        old.kill()
        _, alive = psutil.wait_procs([old], timeout=30)
        assert not alive
        served = None
        for _ in range(3):  # the call that finds the dead process may see it crash
            try:
                served = svc.call_sync("bump")
                break
            except freshproc.WorkerCrashedError:
                continue
        assert served == 1  # a new object
        assert svc.restarts == 1
        old = psutil.Process(svc.pid)
        old.kill()
        psutil.wait_procs([old], timeout=30)
        outcomes = [_outcome(svc) for _ in range(3)]  # the second death exceeds max_restarts=1
        assert outcomes[-1] == "ServiceFailedError", outcomes


def _outcome(svc: freshproc.Service[Counter]) -> str:
    try:
        svc.call_sync("bump")
    except (freshproc.ServiceFailedError, freshproc.WorkerCrashedError) as exc:
        return type(exc).__name__
    return "served"


@pytest.mark.parametrize(
    ("factory", "entered", "closed"),
    [(Closable, [], "close"), (Managed, ["enter"], "exit"), (AsyncManaged, ["aenter"], "aexit")],
)
@pytest.mark.parametrize("concurrency", [1, 3])
def test_close_runs_the_objects_own_close(
    tmp_path: Path, factory: Callable[[str], object], entered: list[str], closed: str, concurrency: int
) -> None:
    """Leaving the service runs the object's ``close()``, ``__exit__`` or ``__aexit__``
    in its process (it writes a file) before the process ends."""
    path = tmp_path / "closed"
    with freshproc.service(factory, str(path), options=freshproc.ServiceOptions(max_concurrency=concurrency)) as svc:
        pid = svc.call_sync("getpid")
        assert read_lines(path) == entered
    assert read_lines(path) == [*entered, f"{closed} {pid}"]
    wait_gone(pid)


async def test_async_with_closes_the_object(tmp_path: Path) -> None:
    """``async with`` closes gracefully too (here an async context manager's ``__aexit__``)."""
    path = tmp_path / "closed"
    async with freshproc.service(AsyncManaged, str(path)) as svc:
        pid = await svc.getpid()
    assert read_lines(path) == ["aenter", f"aexit {pid}"]


def test_a_hanging_close_is_ended_after_the_grace_period(caplog: pytest.LogCaptureFixture) -> None:
    """A ``close()`` that hangs (and ignores SIGTERM) is ended after ``grace_period``:
    the service's close returns and the process is gone; the timeout is logged."""
    handshake = Handshake()
    svc = freshproc.service(HangingClose, handshake.spec, options=freshproc.ServiceOptions(grace_period=0.3))
    with caplog.at_level(logging.WARNING, logger="freshproc.service"):
        with svc:
            pid = svc.call_sync("getpid")
        handshake.wait_started()  # the object's close did start
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "CallTimeoutError" in caplog.text


def test_an_exception_from_the_objects_close_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An exception raised by the object's ``close()`` is logged on ``freshproc.service``,
    with its type and message, not lost; closing still ends the process."""
    with caplog.at_level(logging.WARNING, logger="freshproc.service"), freshproc.service(FailingClose) as svc:
        pid = svc.call_sync("getpid")
    records = [record for record in caplog.records if record.name == "freshproc.service"]
    assert len(records) == 1
    assert "OSError" in records[0].getMessage()
    assert "the object's close failed on purpose" in records[0].getMessage()
    wait_gone(pid)


# -- cancellation and timeouts ------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_cancelled_call_restarts_its_process(concurrency: int) -> None:
    """Cancelling a call (anyio, once a handshake says the method started) ends its
    process; the next call runs on a new object, and the cancelled call's reply (sent
    when SIGTERM arrives) is never delivered."""
    handshake = Handshake()
    async with freshproc.service(Counter, options=freshproc.ServiceOptions(max_concurrency=concurrency)) as svc:
        assert await svc.bump() == 1
        pid = await svc.getpid()
        scope = anyio.CancelScope()
        outcome: list[object] = []

        async def victim() -> None:
            with scope:
                outcome.append(await svc.hang_until_sigterm(handshake.spec))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(victim)
                await anyio.to_thread.run_sync(handshake.wait_started)
                scope.cancel()
        assert scope.cancelled_caught
        assert outcome == []
        await anyio.to_thread.run_sync(wait_gone, pid)
        assert [await svc.bump() for _ in range(3)] == [1, 2, 3]
        assert await svc.getpid() != pid
        assert svc.restarts == 1


async def test_a_policy_timeout_restarts_the_process() -> None:
    """A call that outlives the service's ``timeout`` raises CallTimeoutError, its process
    is ended, and the next call runs on a new object; the late reply is never delivered."""
    handshake = Handshake()
    async with freshproc.service(Counter, options=freshproc.ServiceOptions(timeout=1.0)) as svc:
        assert await svc.bump() == 1
        pid = await svc.getpid()
        with pytest.raises(freshproc.CallTimeoutError):
            await svc.hang_until_sigterm(handshake.spec)
        await anyio.to_thread.run_sync(wait_gone, pid)
        assert [await svc.bump() for _ in range(3)] == [1, 2, 3]
        assert svc.restarts == 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_policy_timeout_restarts_the_process_blocking(concurrency: int) -> None:
    """The same through ``call_sync``."""
    handshake = Handshake()
    options = freshproc.ServiceOptions(timeout=1.0, max_concurrency=concurrency)
    with freshproc.service(Counter, options=options) as svc:
        assert svc.call_sync("bump") == 1
        pid = svc.call_sync("getpid")
        with pytest.raises(freshproc.CallTimeoutError):
            svc.call_sync("hang_until_sigterm", handshake.spec)
        wait_gone(pid)
        assert [svc.call_sync("bump") for _ in range(3)] == [1, 2, 3]
        assert svc.restarts == 1


# -- errors -----------------------------------------------------------------------------


async def test_a_factory_that_raises_fails_async_with() -> None:
    """``async with`` raises the factory's own exception, with the remote traceback as
    its ``__cause__``."""
    with pytest.raises(ValueError, match="no object today") as raised:
        async with freshproc.service(Broken, "no object today"):
            pytest.fail("entered a service whose factory raised")
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "raise ValueError(message)" in str(raised.value.__cause__)


def test_a_factory_that_raises_fails_with() -> None:
    """``with`` too."""
    with pytest.raises(ValueError, match="no object today") as raised, freshproc.service(Broken, "no object today"):
        pytest.fail("entered a service whose factory raised")
    assert isinstance(raised.value.__cause__, RemoteTraceback)


async def test_unknown_module_or_attribute_fails_async_with() -> None:
    """A module that does not exist raises ModuleNotFoundError at ``async with``; an
    attribute that does not exist, AttributeError."""
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        async with freshproc.service("no_such_module_here", "Thing"):
            pytest.fail("entered")
    with pytest.raises(AttributeError, match="NoSuchThing"):
        async with freshproc.service("tests.service_targets", "NoSuchThing"):
            pytest.fail("entered")


async def test_an_unknown_method_raises_and_the_service_keeps_serving() -> None:
    """An unknown method raises AttributeError naming the method and the type; the object
    keeps its state in the same process."""
    async with freshproc.service(Counter) as svc:
        assert await svc.bump() == 1
        pid = await svc.getpid()
        with pytest.raises(AttributeError, match=r"'Counter'.*'no_such_method'"):
            await svc.no_such_method()
        with pytest.raises(AttributeError, match=r"'Counter'.*'missing'"):
            await anyio.to_thread.run_sync(svc.call_sync, "missing")
        with pytest.raises(TypeError, match=r"Counter\.not_a_method is not a method"):
            await svc.call("not_a_method")
        assert (await svc.bump(), await svc.getpid(), svc.restarts) == (2, pid, 0)


async def test_keywords_named_like_options_reach_the_factory_and_methods() -> None:
    """``timeout``, ``restart`` and ``replicas`` given as keywords go to the factory and
    to the methods untouched; only ``options=`` belongs to freshproc."""
    options: dict[str, Any] = {"timeout": 0.001, "restart": "never", "replicas": 0}
    async with freshproc.service(Echo, 1, **options) as svc:
        assert svc.options == freshproc.ServiceOptions()
        assert await svc.echo(2, **options) == ((2,), options, options)
        assert await svc.call("echo", timeout="t") == ((), {"timeout": "t"}, options)
        assert await svc.call("echo", replicas=3) == ((), {"replicas": 3}, options)


def test_an_unpicklable_factory_argument_fails_when_the_service_is_made() -> None:
    """An unpicklable factory argument raises SerializationError from ``service()``
    itself, naming the argument, before any process starts."""
    before = descendants()
    with pytest.raises(freshproc.SerializationError, match=r"lock") as raised:
        freshproc.service(Counter, threading.Lock())
    assert raised.value.direction == "arguments"
    assert descendants() == before


async def test_an_unpicklable_result_raises_and_the_object_keeps_its_state() -> None:
    """A result that cannot be pickled raises SerializationError; the object (which
    counted that call) and its process live on."""
    async with freshproc.service(Counter) as svc:
        assert await svc.bump() == 1
        pid = await svc.getpid()
        with pytest.raises(freshproc.SerializationError) as raised:
            await svc.unpicklable()
        assert raised.value.direction == "result"
        assert (await svc.bump(), await svc.getpid(), svc.restarts) == (3, pid, 0)


async def test_calls_after_close_raise_service_closed_error() -> None:
    """After close, calls (async, blocking, by attribute) and restart raise
    ServiceClosedError, which is a PoolClosedError; closing again does nothing."""
    async with freshproc.service(Counter) as svc:
        await svc.bump()
    for attempt in (svc.call("bump"), svc.bump(), svc.restart()):
        with pytest.raises(freshproc.ServiceClosedError):
            await attempt
    with pytest.raises(freshproc.PoolClosedError):
        await anyio.to_thread.run_sync(svc.call_sync, "bump")
    assert issubclass(freshproc.ServiceClosedError, freshproc.PoolClosedError)
    assert not svc.alive
    await svc.aclose()
    svc.close()


# -- no leftovers -----------------------------------------------------------------------


def test_a_dropped_service_warns_and_ends(tmp_path: Path) -> None:
    """A service dropped without close emits a ResourceWarning naming where it was made;
    its object's close runs (a file) and its processes end."""
    path = tmp_path / "closed"
    made_at = f"{__file__}:{sys._getframe().f_lineno + 1}"
    svc = freshproc.service(Closable, str(path))
    svc.start_sync()
    pids = [*svc.pids, svc._workers.template_pid]
    worker = svc.call_sync("getpid")
    with pytest.warns(ResourceWarning, match=rf"unclosed freshproc service .*Closable made at {made_at}$"):
        del svc  # the last reference: the finalizer runs now
    for pid in pids:
        assert pid is not None
        wait_gone(pid)
    assert read_lines(path) == [f"close {worker}"]


def test_no_descriptors_leak_after_close_and_failures(fd_guard: Callable[[], None]) -> None:
    """Services that served, crashed, failed for good, timed out or whose factory raised
    leave no descriptor open in the caller (and, by the autouse guard, no process)."""
    with freshproc.service(Fragile, options=freshproc.ServiceOptions(max_restarts=0)) as svc:
        svc.call_sync("step")
        svc.call_sync("step")
        with pytest.raises(freshproc.WorkerCrashedError):
            svc.call_sync("step")
        with pytest.raises(freshproc.ServiceFailedError):
            svc.call_sync("step")
    handshake = Handshake()
    with freshproc.service(Counter, options=freshproc.ServiceOptions(timeout=0.5)) as svc:
        with pytest.raises(freshproc.CallTimeoutError):
            svc.call_sync("hang_until_sigterm", handshake.spec)
        svc.call_sync("bump")
    del handshake  # its own pipes are not the service's
    with pytest.raises(ValueError, match="no"), freshproc.service(Broken, "no"):
        pass
    with freshproc.service(Counter, options=freshproc.ServiceOptions(replicas=2)) as svc:
        svc.call_sync("bump")
    with freshproc.service(Fragile, options=freshproc.ServiceOptions(replicas=2, max_concurrency=3)) as svc:
        svc.call_sync("step")
        svc.call_sync("step")
        with pytest.raises(freshproc.WorkerCrashedError):
            svc.call_sync("step")
        svc.restart_sync()
        svc.call_sync("step")
    fd_guard()


def test_processes_end_when_the_caller_is_killed() -> None:
    """A caller SIGKILLed with a service open (two replicas) leaves nothing behind: its
    template and workers are all gone within 2 s."""
    script = textwrap.dedent(
        """
        import sys

        import psutil

        import freshproc

        svc = freshproc.service("collections", "Counter", options=freshproc.ServiceOptions(replicas=2))
        svc.start_sync()
        svc.call_sync("update", "ab")
        print(" ".join(str(child.pid) for child in psutil.Process().children(recursive=True)), flush=True)
        sys.stdin.read()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as caller:
        assert caller.stdout is not None
        pids = [int(pid) for pid in caller.stdout.readline().split()]
        assert len(pids) >= 2  # the template and a worker at least
        processes = [psutil.Process(pid) for pid in pids]
        caller.kill()
        caller.wait()
        _, alive = psutil.wait_procs(processes, timeout=2)
        assert not alive, f"left behind after the caller was killed: {alive}"
