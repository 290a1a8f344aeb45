"""Shutting the executor down: with and without waiting, with ``cancel_futures``, by
``with``, by dropping it, and at interpreter exit with calls pending.

Adapted from CPython ``Lib/test/test_concurrent_futures/test_shutdown.py``
(``ExecutorShutdownTest`` and ``ProcessPoolShutdownTest``). Changed: pytest functions over
``freshproc.Executor``; the interpreter-exit scripts run ``python -c`` with the target
defined in the script (it travels by value) instead of importing CPython's test package,
and print at once instead of after ``time.sleep(1)``; ``test_cancel_futures`` first blocks
both workers on handshakes, so exactly the queued calls are cancelled (CPython can only
say "more than 20"); ``test_hang_gh94440`` bounds the shutdown with a thread join instead
of ``signal.alarm``; checks of CPython's internal queues and process lists become checks
that the pool is closed and its workers have exited.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
from concurrent import futures

import psutil
import pytest

import freshproc
from tests.executor import targets
from tests.executor.targets import Gates

pytestmark = pytest.mark.timeout(90)


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True, timeout=60, check=False
    )


def executor_thread(executor: freshproc.Executor) -> threading.Thread:
    thread = executor._runner._thread
    assert thread is not None
    return thread


def assert_exited(pids: list[int]) -> None:
    for pid in pids:
        try:
            psutil.Process(pid).wait(timeout=30)
        except psutil.NoSuchProcess:
            pass


def test_run_after_shutdown(executor: freshproc.Executor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(pow, 2, 5)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(pow, [2], [5])


def test_interpreter_shutdown() -> None:
    """Calls still pending when the main thread ends run to completion; no hang, no error."""
    completed = run_script(
        """
        import freshproc

        def say(word):
            print(word, flush=True)

        if __name__ == "__main__":
            executor = freshproc.Executor(1)
            for word in ("apple", "banana", "cherry"):  # one runs, two queue behind it
                executor.submit(say, word)
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.split() == ["apple", "banana", "cherry"]


def test_submit_after_interpreter_shutdown() -> None:
    completed = run_script(
        """
        import atexit

        @atexit.register
        def run_last():
            try:
                executor.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise

        import freshproc

        if __name__ == "__main__":
            executor = freshproc.Executor(1)
            executor.submit(id, 42).result()
        """
    )
    assert "RuntimeError: cannot schedule new futures after interpreter shutdown" in completed.stderr
    assert completed.stdout.strip() == "runtime-error"


def test_hang_issue12364(executor: freshproc.Executor) -> None:
    submitted = [executor.submit(targets.mul, n, 2) for n in range(50)]
    executor.shutdown()
    assert [future.result() for future in submitted] == [n * 2 for n in range(50)]


def test_cancel_futures(executor: freshproc.Executor, gates: Gates) -> None:
    """Queued calls are cancelled; running ones finish (here: released after the shutdown)."""
    running_gates = [gates.new(), gates.new()]
    running = [executor.submit(targets.started_then_wait, gate.spec) for gate in running_gates]
    for gate in running_gates:
        gate.wait_started()
    queued = [executor.submit(targets.mul, n, 2) for n in range(48)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(future.cancelled() for future in queued)
    for gate in running_gates:
        gate.release()
    assert all(isinstance(future.result(), int) for future in running)
    executor.shutdown(wait=True)


def test_hang_gh83386() -> None:
    """shutdown(wait=False) with a call running does not hang at exit; the call finishes."""
    completed = run_script(
        """
        import freshproc

        def say(word):
            print(word, flush=True)

        if __name__ == "__main__":
            executor = freshproc.Executor(max_workers=3)
            executor.submit(say, "apple")
            executor.shutdown(wait=False)
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.strip() == "apple"


def test_cancel_futures_wait_false() -> None:
    completed = run_script(
        """
        import freshproc

        def say(word):
            print(word, flush=True)

        if __name__ == "__main__":
            executor = freshproc.Executor()
            executor.submit(say, "apple")
            executor.shutdown(wait=False, cancel_futures=True)
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    # The call may have been cancelled before it started (gh-116682).
    assert completed.stdout.strip() in ("apple", "")


def test_hang_gh94440() -> None:
    """shutdown(wait=True) returns when a call was submitted and cancelled just before."""
    executor = freshproc.Executor(max_workers=1)
    executor.submit(int).result()
    executor.submit(int).cancel()
    shutting_down = threading.Thread(target=executor.shutdown, kwargs={"wait": True})
    shutting_down.start()
    shutting_down.join(timeout=30)
    assert not shutting_down.is_alive(), "shutdown(wait=True) hung"


def test_processes_terminate(executor: freshproc.Executor, gates: Gates) -> None:
    running_gates = [gates.new(), gates.new()]
    for gate in running_gates:
        executor.submit(targets.started_then_wait, gate.spec)
    for gate in running_gates:
        gate.wait_started()
    pids = executor.pool.worker_pids()
    assert len(pids) == 2
    for gate in running_gates:
        gate.release()
    executor.shutdown()
    assert executor.pool.closed
    assert_exited(pids)


def test_context_manager_shutdown() -> None:
    with freshproc.Executor(max_workers=2) as executor:
        assert list(executor.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        pids = executor.pool.worker_pids()
    assert executor.pool.closed
    assert not executor_thread(executor).is_alive()
    assert_exited(pids)


def test_del_shutdown() -> None:
    """A dropped executor shuts down without waiting: the calls already submitted still
    complete, and then its thread ends and its pool closes."""
    executor = freshproc.Executor(max_workers=2)
    results = executor.map(abs, range(-5, 5))
    thread = executor_thread(executor)
    pool = executor.pool
    del executor
    gc.collect()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert pool.closed
    assert list(results) == [abs(value) for value in range(-5, 5)]


def test_shutdown_no_wait() -> None:
    executor = freshproc.Executor(max_workers=2)
    results = executor.map(abs, range(-5, 5))
    executor.shutdown(wait=False)
    executor_thread(executor).join(timeout=60)
    assert executor.pool.closed
    assert list(results) == [abs(value) for value in range(-5, 5)]


def test_shutdown_never_used() -> None:
    """Not in CPython: an executor that never ran a call starts no thread or process."""
    executor = freshproc.Executor(max_workers=2)
    executor.shutdown()
    assert executor._runner._thread is None
    assert executor.pool.closed


def test_shutdown_is_idempotent(executor: freshproc.Executor) -> None:
    assert executor.submit(abs, -1).result() == 1
    executor.shutdown()
    executor.shutdown(wait=False, cancel_futures=True)
    executor.shutdown()
    assert executor.pool.closed


def test_shutdown_from_a_done_callback(executor: freshproc.Executor) -> None:
    """Not in CPython: shutdown(wait=True) in a callback on the executor's own thread
    does not wait for itself."""
    called = threading.Event()

    def shut_down(_: futures.Future[int]) -> None:
        executor.shutdown(wait=True)
        called.set()

    future = executor.submit(abs, -1)
    future.add_done_callback(shut_down)
    assert called.wait(timeout=30)
    executor_thread(executor).join(timeout=30)
    assert executor.pool.closed
