"""Faults: crashes, timeouts, cancellation, startup failures, limits. Every fault gets a
specific error, the pool carries on, and nothing is left behind. Deterministic: faults
are triggered by the target itself or after a handshake, never after a sleep."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import psutil
import pytest

import freshproc
from tests.conftest import Invoke, open_fds
from tests.handshake import Handshake

pytestmark = pytest.mark.timeout(60)

CRASHES = [
    pytest.param("segfault", (), signal.SIGSEGV, None, "SIGSEGV", id="segfault"),
    pytest.param("abort", (), signal.SIGABRT, None, "SIGABRT", id="abort"),
    pytest.param("exit_now", (7,), None, 7, "exited with code 7", id="os._exit"),
]


@pytest.mark.parametrize(("target", "args", "signum", "exitcode", "words"), CRASHES)
async def test_crash_matrix_async(
    target: str, args: tuple[object, ...], signum: int | None, exitcode: int | None, words: str
) -> None:
    async with freshproc.Pool(2) as pool:
        with pytest.raises(freshproc.WorkerCrashedError, match=words) as info:
            await pool.call("tests.faults", target, *args)
        assert info.value.signal == signum
        assert info.value.pid is not None
        if exitcode is not None:
            assert info.value.exitcode == exitcode
        assert await pool.call("tests.faults", "ok", 5) == 5
        assert pool.stats().workers_crashed == 1


@pytest.mark.parametrize(("target", "args", "signum", "exitcode", "words"), CRASHES)
def test_crash_matrix_blocking(
    target: str, args: tuple[object, ...], signum: int | None, exitcode: int | None, words: str
) -> None:
    with freshproc.Pool(1) as pool:
        with pytest.raises(freshproc.WorkerCrashedError, match=words) as info:
            pool.call_sync("tests.faults", target, *args)
        assert info.value.signal == signum
        assert pool.call_sync("tests.faults", "ok", 5) == 5


def _kill_when_started(handshake: Handshake, pool: freshproc.Pool) -> None:
    handshake.wait_started()
    (pid,) = [pid for pid in pool.worker_pids() if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    os.kill(pid, signal.SIGKILL)


async def test_sigkill_from_outside_mid_call_says_so() -> None:
    async with freshproc.Pool(1) as pool:
        handshake = Handshake()
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, _kill_when_started, handshake, pool)
            with pytest.raises(freshproc.WorkerCrashedError, match=r"SIGKILL.*memory limit") as info:
                await pool.call("tests.faults", "handshake_then_hang", handshake.spec)
        assert info.value.signal == signal.SIGKILL
        assert await pool.call("tests.faults", "ok", 1) == 1


def test_other_calls_are_untouched_by_a_crash() -> None:
    with freshproc.Pool(2) as pool:
        handshake = Handshake()
        results: list[object] = []
        thread = threading.Thread(target=lambda: results.append(pool.run_sync(_handshake_value, handshake.spec)))
        thread.start()
        handshake.wait_started()
        with pytest.raises(freshproc.WorkerCrashedError):
            pool.call_sync("tests.faults", "segfault")
        handshake.release()
        thread.join()
        assert results == ["survived"]


def _handshake_value(spec: str) -> str:
    from tests.handshake import signal_started, wait_go

    signal_started(spec)
    wait_go(spec)
    return "survived"


def test_idle_worker_death_is_invisible_to_calls(invoke: Invoke) -> None:
    with freshproc.Pool(1) as pool:
        first = invoke(pool, "tests.faults", "worker_pid")
        assert isinstance(first, int)
        process = psutil.Process(first)
        os.kill(first, signal.SIGKILL)
        process.wait(timeout=10)
        second = invoke(pool, "tests.faults", "worker_pid")
        assert second != first
        assert pool.stats().workers_crashed == 1


# -- startup failures --------------------------------------------------------------------


def test_failing_preload_raises_startup_error_with_its_traceback(invoke: Invoke, tmp_path: Path) -> None:
    (tmp_path / "broken_preload.py").write_text("raise RuntimeError('preload exploded')\n")
    pool = freshproc.Pool(1, preload=["broken_preload"], env={"PYTHONPATH": str(tmp_path)})
    with pytest.raises(freshproc.WorkerStartupError, match="preload exploded"):
        invoke(pool, "tests.faults", "ok", 1)
    pool.close()


def test_bad_cwd_raises_startup_error(invoke: Invoke, tmp_path: Path) -> None:
    pool = freshproc.Pool(1, cwd=tmp_path / "missing")
    with pytest.raises(freshproc.WorkerStartupError, match="missing"):
        invoke(pool, "tests.faults", "ok", 1)
    pool.close()


async def test_interpreter_that_cannot_start_raises_startup_error_with_stderr() -> None:
    pool = freshproc.Pool(1, env={"PYTHONHOME": "/nonexistent-python-home"})
    with pytest.raises(freshproc.WorkerStartupError, match=r"(?s)before it was ready.*stderr"):
        await pool.call("tests.faults", "ok", 1)
    await pool.aclose()


# -- timeouts and cancellation -------------------------------------------------------------


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_policy_timeout_ends_the_worker_and_the_pool_carries_on() -> None:
    async with freshproc.Pool(1, timeout=0.5, grace_period=0.2) as pool:
        with pytest.raises(freshproc.CallTimeoutError) as info:
            await pool.call("tests.faults", "hang")
        assert isinstance(info.value, TimeoutError)
        assert await pool.call("tests.faults", "ok", 3) == 3


def test_policy_timeout_blocking_kills_a_worker_that_ignores_sigterm() -> None:
    with freshproc.Pool(1, timeout=2.0, grace_period=0.2) as pool:
        hung_pid = pool.call_sync("tests.faults", "worker_pid")  # the one worker, reused next
        handshake = Handshake()
        with pytest.raises(freshproc.CallTimeoutError):
            pool.call_sync("tests.faults", "ignore_sigterm_then_hang", handshake.spec)
        handshake.wait_started()  # it did start, and trapped SIGTERM
        assert _gone_within(hung_pid, seconds=10)
        assert pool.call_sync("tests.faults", "worker_pid") != hung_pid


def _gone_within(pid: int, *, seconds: float) -> bool:
    """Wait for a process (not necessarily our child) to end; zombies count as ended."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    _, alive = psutil.wait_procs([process], timeout=seconds)
    return all(proc.status() == psutil.STATUS_ZOMBIE for proc in alive if proc.is_running())


@pytest.mark.parametrize("how", ["fail_after", "move_on_after", "sibling_failure"])
async def test_cancellation_ends_the_worker_and_its_children(how: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    async with freshproc.Pool(1) as pool:
        handshake = Handshake()

        async def cancel_when_started(scope: anyio.CancelScope) -> None:
            await anyio.to_thread.run_sync(handshake.wait_started)
            if how == "sibling_failure":
                raise LookupError("sibling failed")
            if how == "fail_after":
                scope.deadline = anyio.current_time()  # expire now: a real timeout
            else:
                scope.cancel()

        call = pool.call("tests.faults", "start_child_then_hang", handshake.spec, str(pid_file))
        if how == "fail_after":
            with pytest.raises(TimeoutError), anyio.fail_after(30) as scope:  # noqa: PT012
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel_when_started, scope)
                    await call
        elif how == "move_on_after":
            with anyio.move_on_after(30) as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel_when_started, scope)
                    await call
            assert scope.cancelled_caught
        else:
            with pytest.RaisesGroup(pytest.RaisesExc(LookupError, match="sibling failed")):
                async with anyio.create_task_group() as group:
                    group.start_soon(cancel_when_started, group.cancel_scope)
                    await call
        child = int(pid_file.read_text())
        process = psutil.Process(child) if psutil.pid_exists(child) else None
        if process is not None:
            _, alive = psutil.wait_procs([process], timeout=10)
            assert not [proc for proc in alive if proc.status() != psutil.STATUS_ZOMBIE]
        assert await pool.call("tests.faults", "ok", 9) == 9


async def test_fail_after_expiry_gives_timeout_error() -> None:
    async with freshproc.Pool(1) as pool:
        with pytest.raises(TimeoutError) as info, anyio.fail_after(0.3):
            await pool.call("tests.faults", "hang")
        assert not isinstance(info.value, freshproc.FreshprocError)
        assert await pool.call("tests.faults", "ok", 2) == 2


async def test_a_late_result_never_reaches_another_call() -> None:
    async with freshproc.Pool(1, grace_period=5.0) as pool:
        handshake = Handshake()

        async def cancel_when_started(scope: anyio.CancelScope) -> None:
            await anyio.to_thread.run_sync(handshake.wait_started)
            scope.cancel()

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_when_started, scope)
                # Answers "LATE RESULT" the moment SIGTERM arrives, just after the deadline.
                await pool.call("tests.faults", "finish_on_sigterm", handshake.spec)
        results = [await pool.call("tests.faults", "ok", index) for index in range(5)]
        assert results == list(range(5))


def test_keyboard_interrupt_during_a_blocking_call_ends_the_worker() -> None:
    with freshproc.Pool(1) as pool:
        handshake = Handshake()
        main = threading.get_ident()

        def interrupt() -> None:
            handshake.wait_started()
            signal.pthread_kill(main, signal.SIGINT)

        thread = threading.Thread(target=interrupt)
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            pool.call_sync("tests.faults", "handshake_then_hang", handshake.spec)
        thread.join()
        assert pool.call_sync("tests.faults", "ok", 4) == 4
        assert pool.stats().workers_alive == 1


def test_workers_ignore_sigint(invoke: Invoke) -> None:
    with freshproc.Pool(1) as pool:
        pid = invoke(pool, "tests.faults", "worker_pid")
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGINT)
        assert invoke(pool, "tests.faults", "worker_pid") == pid


# -- limits ------------------------------------------------------------------------------------


def test_memory_limit_raises_memory_error_and_recycles(invoke: Invoke) -> None:
    with freshproc.Pool(1, memory_limit="512MiB") as pool:
        before = invoke(pool, "tests.faults", "worker_pid")
        with pytest.raises(MemoryError):
            invoke(pool, "tests.faults", "allocate", 2 << 30)
        assert invoke(pool, "tests.faults", "allocate", 1 << 20) == 1 << 20
        assert invoke(pool, "tests.faults", "worker_pid") != before


def test_max_memory_recycles_a_worker_above_it() -> None:
    with freshproc.Pool(1, max_memory="200MB") as pool:
        first = pool.run_sync(_hold_memory, 300_000_000)
        second = pool.call_sync("tests.faults", "worker_pid")
        third = pool.call_sync("tests.faults", "worker_pid")
    assert first != second == third  # recycled once, then the small worker is kept


_held: list[bytearray] = []


def _hold_memory(size: int) -> int:
    block = bytearray(size)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not just mapped
    _held.append(block)
    return os.getpid()


def test_idle_timeout_ends_idle_workers(invoke: Invoke) -> None:
    with freshproc.Pool(1, idle_timeout=0.2) as pool:
        pid = invoke(pool, "tests.faults", "worker_pid")
        assert isinstance(pid, int)
        psutil.Process(pid).wait(timeout=20)  # it exits on its own, idle
        assert invoke(pool, "tests.faults", "worker_pid") != pid


def test_result_over_max_result_size_is_a_serialization_error(invoke: Invoke) -> None:
    with freshproc.Pool(1, max_result_size="1MB") as pool:
        pid = invoke(pool, "tests.faults", "worker_pid")
        with pytest.raises(freshproc.SerializationError, match="over the limit"):
            invoke(pool, "tests.faults", "large_result", 2_000_000)
        assert invoke(pool, "tests.faults", "worker_pid") == pid


# -- output ---------------------------------------------------------------------------------


def test_output_reaches_the_callers_streams_before_the_result(
    invoke: Invoke, capfd: pytest.CaptureFixture[str]
) -> None:
    with freshproc.Pool(1) as pool:
        assert invoke(pool, "tests.faults", "print_then_return", "hello") == "HELLO"
        captured = capfd.readouterr()
        assert captured.out == "hello\n"
        assert captured.err == "err:hello\n"
        invoke(pool, "tests.faults", "write_native_stdout", "native\n")
        assert capfd.readouterr().out == "native\n"


def test_stderr_flood_does_not_deadlock(capfd: pytest.CaptureFixture[str]) -> None:
    with freshproc.Pool(1) as pool:
        assert pool.call_sync("tests.faults", "flood_stderr", 8) == 8
    assert len(capfd.readouterr().err) == 8 << 20


async def test_capture_output_attaches_output_to_results_and_errors(capfd: pytest.CaptureFixture[str]) -> None:
    async with freshproc.Pool(1, capture_output=True) as pool:
        from tests import faults

        captured = await pool.run_captured(faults.print_then_return, "hi")
        assert (captured.value, captured.stdout, captured.stderr) == ("HI", "hi\n", "err:hi\n")
        with pytest.raises(KeyError) as info:
            await pool.call("tests.faults", "print_then_raise", "oops")
        assert info.value.captured_output == ("oops\n", "")  # type: ignore[attr-defined]
        assert await pool.call("tests.faults", "print_then_return", "quiet") == "QUIET"
    assert "quiet" not in capfd.readouterr().out


# -- nothing left behind --------------------------------------------------------------------------


def test_no_descriptor_leaks_after_crashes_and_timeouts(fd_guard: Callable[[], None]) -> None:
    pool = freshproc.Pool(2, timeout=1.0, grace_period=0.1)
    with pool:
        pool.call_sync("tests.faults", "ok", 1)
        with pytest.raises(freshproc.WorkerCrashedError):
            pool.call_sync("tests.faults", "segfault")
        with pytest.raises(freshproc.CallTimeoutError):
            pool.call_sync("tests.faults", "hang")
        with pytest.raises(freshproc.SerializationError):
            pool.call_sync("tests.faults", "unpicklable_result")
        pool.run_sync(bytes, 5 << 20)  # out-of-band segments both ways
    fd_guard()


def _freshproc_temp_entries() -> set[str]:
    import tempfile

    root = Path(tempfile.gettempdir())
    return {entry.name for entry in root.iterdir() if entry.name.startswith(("pymp-", "freshproc"))}


def test_no_temporary_files_or_shared_memory_remain() -> None:
    temp_before = _freshproc_temp_entries()
    shm_before = _shm_names()
    with freshproc.Pool(2) as pool:
        pool.run_sync(bytes, 5 << 20)
        with pytest.raises(freshproc.WorkerCrashedError):
            pool.call_sync("tests.faults", "segfault")
    assert _freshproc_temp_entries() <= temp_before
    assert _shm_names() <= shm_before


def test_no_tcp_listener_and_no_listening_unix_socket() -> None:
    with freshproc.Pool(1) as pool:
        pid = pool.call_sync("tests.faults", "worker_pid")
        assert isinstance(pid, int)
        assert pool.template_pid is not None
        for process in (psutil.Process(pid), psutil.Process(pool.template_pid)):
            assert process.net_connections(kind="inet") == []
            assert all(conn.status != psutil.CONN_LISTEN for conn in process.net_connections(kind="unix"))


_SCRIPT = """
import os, sys, freshproc
pool = freshproc.Pool(2)
pool.start()
pids = [pool.call_sync("tests.faults", "worker_pid") for _ in range(1)]
print(pool.template_pid, *pids, flush=True)
{ending}
"""


@pytest.mark.parametrize(
    "ending",
    ["pass  # normal exit, pool never closed", "raise RuntimeError('unhandled')", "os.kill(os.getpid(), 9)"],
    ids=["normal-exit", "unhandled-exception", "caller-sigkilled"],
)
def test_workers_end_with_the_caller(ending: str) -> None:
    """On normal exit, after an unhandled exception, and when the caller is SIGKILLed,
    every worker and the template are gone within 2 seconds."""
    script = textwrap.dedent(_SCRIPT).format(ending=ending)
    root = str(Path(__file__).parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root, check=False
    )
    pids = [int(pid) for pid in result.stdout.split()]
    assert len(pids) == 2, result.stderr
    processes = [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)]
    _, alive = psutil.wait_procs(processes, timeout=2)
    assert not [proc for proc in alive if proc.status() != psutil.STATUS_ZOMBIE]


async def test_a_malformed_frame_from_a_worker_is_a_protocol_error() -> None:
    async with freshproc.Pool(1) as pool:
        with pytest.raises(freshproc.ProtocolError):
            await pool.call("tests.faults", "corrupt_own_channel")
        assert await pool.call("tests.faults", "ok", 8) == 8


def _shm_names() -> set[str]:
    """Names in /dev/shm that freshproc, or a shared_memory-based design, could create."""
    return {name for name in os.listdir("/dev/shm") if name.startswith(("psm_", "freshproc", "pymp"))}


def _segments_mapped() -> int:
    with open("/proc/self/maps") as maps:
        return sum("memfd:freshproc" in line for line in maps)


@pytest.mark.parametrize("direct_copy", ["1", "0"], ids=["by-address", "memfd"])
async def test_shared_memory_segments_are_released_whatever_the_outcome(direct_copy: str) -> None:
    """Large arguments and results travel by address or as memfd segments: after a crash,
    a timeout and a cancellation with segments in flight, none stays mapped or open, and
    /dev/shm is untouched."""
    numpy = pytest.importorskip("numpy")
    fds_before = open_fds()  # taken inside the running event loop, which has its own
    shm_before = _shm_names()
    big = numpy.arange(1 << 20, dtype=numpy.float64)  # 8 MiB: out of band both ways
    async with freshproc.Pool(2, timeout=2.0, grace_period=0.1, env={"FRESHPROC_DIRECT_COPY": direct_copy}) as pool:
        echoed = await pool.call("tests.faults", "echo", big)
        assert numpy.array_equal(echoed, big)
        assert pool._workers.direct_copy is (direct_copy == "1")
        # By memfd, the result array is read in place from its segment; by address it
        # was copied into private memory.
        assert _segments_mapped() == (0 if direct_copy == "1" else 1)
        del echoed
        assert _segments_mapped() == 0
        with pytest.raises(freshproc.WorkerCrashedError):
            await pool.call("tests.faults", "crash_holding", big)
        with pytest.raises(freshproc.CallTimeoutError):
            await pool.call("tests.faults", "hang", big)
        handshake = Handshake()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:

                async def cancel_when_started() -> None:
                    await anyio.to_thread.run_sync(handshake.wait_started)
                    scope.cancel()

                group.start_soon(cancel_when_started)
                await pool.call("tests.faults", "hang_holding", big, handshake.spec)
        handshake.close()
    gc.collect()
    assert _segments_mapped() == 0
    assert _shm_names() <= shm_before
    assert open_fds() <= fds_before
