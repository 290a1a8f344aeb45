"""What ``freshproc.Executor`` does beyond the CPython executor tests: lambdas and
closures, cancelling a running call ends its worker, a crash fails only its future, pool
options pass through, ``map`` chunks travel as batch requests, and asyncio's
``run_in_executor`` (cancellation included)."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import psutil
import pytest

import freshproc
from tests import faults
from tests.executor import targets
from tests.executor.targets import Gates
from tests.handshake import Handshake

pytestmark = pytest.mark.timeout(60)


def wait_exited(pid: int) -> None:
    try:
        psutil.Process(pid).wait(timeout=30)
    except psutil.NoSuchProcess:
        pass


def test_lambdas_and_closures_travel_by_value(executor: freshproc.Executor) -> None:
    offset = 40

    def add_offset(value: int) -> int:
        return value + offset

    assert executor.submit(lambda: offset + 2).result() == 42
    assert executor.submit(add_offset, 2).result() == 42
    assert list(executor.map(lambda value: value * offset, range(3))) == [0, 40, 80]
    assert list(executor.map(add_offset, range(3), chunksize=2)) == [40, 41, 42]


def test_the_calls_run_in_other_processes(executor: freshproc.Executor) -> None:
    pids = {future.result() for future in [executor.submit(targets.worker_pid) for _ in range(4)]}
    assert os.getpid() not in pids
    assert pids <= set(executor.pool.worker_pids())


def test_coroutine_functions_run_on_a_loop_in_the_worker(executor: freshproc.Executor) -> None:
    async def double(value: int) -> int:
        await asyncio.sleep(0)
        return value * 2

    assert executor.submit(double, 21).result() == 42  # type: ignore[comparison-overlap]


def test_cancelling_a_running_call_ends_its_worker(gates: Gates) -> None:
    """cancel() on a RUNNING future returns True, the future ends cancelled, the worker
    that ran it exits, and the executor serves the next call from a new worker."""
    with freshproc.Executor(max_workers=1) as executor:
        gate = gates.new()
        future = executor.submit(targets.started_then_wait, gate.spec)
        gate.wait_started()
        [pid] = executor.pool.worker_pids()
        assert future.running()
        assert future.cancel()
        assert future.cancelled()
        with pytest.raises(futures.CancelledError):
            future.result()
        wait_exited(pid)
        assert executor.submit(targets.worker_pid).result() != pid
        assert executor.pool.stats().calls_cancelled == 1


def test_a_crash_fails_only_its_future(executor: freshproc.Executor, gates: Gates) -> None:
    """A worker that dies fails its call's future with WorkerCrashedError; the call
    running beside it and the calls after it succeed (no BrokenProcessPool)."""
    gate = gates.new()
    beside = executor.submit(targets.started_then_wait, gate.spec)
    gate.wait_started()
    crashed = executor.submit(faults.exit_now, 3)
    with pytest.raises(freshproc.WorkerCrashedError) as caught:
        crashed.result()
    assert caught.value.exitcode == 3
    assert not isinstance(caught.value, futures.BrokenExecutor)
    gate.release()
    assert isinstance(beside.result(), int)
    assert [future.result() for future in [executor.submit(targets.mul, n, 2) for n in range(4)]] == [0, 2, 4, 6]


def test_a_crash_in_a_map_chunk_fails_that_chunk(executor: freshproc.Executor) -> None:
    """Items of earlier chunks come back; the crashed chunk raises WorkerCrashedError."""
    results = executor.map(targets.exit_if, [False, False, True, False], chunksize=2)
    assert next(results) is None
    assert next(results) is None
    with pytest.raises(freshproc.WorkerCrashedError):
        next(results)
    assert executor.submit(targets.mul, 2, 3).result() == 6


def test_policy_timeout_raises_call_timeout_error(gates: Gates) -> None:
    with freshproc.Executor(max_workers=1, timeout=0.5, grace_period=0.1) as executor:
        future = executor.submit(targets.wait_for, gates.new().spec)
        with pytest.raises(freshproc.CallTimeoutError):
            future.result()
        assert executor.submit(targets.mul, 2, 3).result() == 6
        gates.release_all()


def test_fresh_runs_each_call_in_a_new_worker() -> None:
    with freshproc.Executor(max_workers=1, fresh=True) as executor:
        pids = [executor.submit(targets.worker_pid).result() for _ in range(3)]
        assert len(set(pids)) == 3
        assert len(set(executor.map(targets.worker_pid_of, range(3), chunksize=3))) == 3


def test_pool_options_pass_through(tmp_path: Any) -> None:
    with freshproc.Executor(max_workers=1, env={"EXECUTOR_TEST": "yes"}, cwd=tmp_path) as executor:
        assert executor.submit(targets.getenv, "EXECUTOR_TEST").result() == "yes"
        assert executor.submit(os.getcwd).result() == str(tmp_path)
        assert executor.pool.options.workers == 1


def test_bad_pool_options_are_rejected() -> None:
    with pytest.raises(TypeError):
        freshproc.Executor(max_workers=1, no_such_option=True)
    with pytest.raises(TypeError, match="max_workers=, not workers="):
        freshproc.Executor(workers=2)


def test_max_workers_bounds_the_calls_running(gates: Gates) -> None:
    """With every worker busy, a further call stays PENDING (so ``cancel_futures`` and
    ``cancel()`` of a queued call mean what they do for ProcessPoolExecutor)."""
    with freshproc.Executor(max_workers=2) as executor:
        running_gates = [gates.new(), gates.new()]
        running = [executor.submit(targets.started_then_wait, gate.spec) for gate in running_gates]
        for gate in running_gates:
            gate.wait_started()
        queued = executor.submit(targets.mul, 1, 1)
        assert all(future.running() for future in running)
        assert not queued.running()
        assert not queued.done()
        gates.release_all()
        assert queued.result() == 1


def test_map_chunks_travel_as_batch_requests(executor: freshproc.Executor, monkeypatch: pytest.MonkeyPatch) -> None:
    """chunksize=3 over 10 items: 4 requests, each a batch, results in order; an item's
    error is its own (the items after it in the chunk still run)."""
    requests: list[object] = []
    submit = executor.pool.submit

    async def counting_submit(request: Any, *, policy_timeout: float | None) -> object:
        requests.append(request)
        return await submit(request, policy_timeout=policy_timeout)

    monkeypatch.setattr(executor.pool, "submit", counting_submit)
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == [n**n for n in range(10)]
    assert [len(request.args) for request in requests] == [3, 3, 3, 1]  # type: ignore[attr-defined]

    results = executor.map(divmod, [1, 1, 1, 1], [2, 0, 3, 5], chunksize=4)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_under_a_policy_timeout_sends_one_call_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    with freshproc.Executor(max_workers=2, timeout=30) as executor:
        batches: list[object] = []
        monkeypatch.setattr(executor.pool, "submit", lambda *args, **kwargs: batches.append(args))
        assert list(executor.map(abs, range(-4, 0), chunksize=2)) == [4, 3, 2, 1]
        assert batches == []


def test_leaving_a_map_early_cancels_the_running_calls(gates: Gates) -> None:
    """Closing the result iterator cancels what is left, running calls included."""
    with freshproc.Executor(max_workers=1) as executor:
        gate = gates.new()
        results = executor.map(targets.none_or_wait, [None, gate.spec, None])
        assert next(results) is None
        gate.wait_started()
        [pid] = executor.pool.worker_pids()
        results.close()
        wait_exited(pid)
        # One worker: this call starts once the cancelled one has been accounted for.
        assert executor.submit(targets.worker_pid).result() != pid
        assert executor.pool.stats().calls_cancelled == 1


def test_many_threads_submit_at_once(executor: freshproc.Executor) -> None:
    submitted: list[futures.Future[int]] = []
    lock = threading.Lock()

    def submit_some(base: int) -> None:
        for n in range(20):
            future = executor.submit(targets.mul, base + n, 1)
            with lock:
                submitted.append(future)

    threads = [threading.Thread(target=submit_some, args=(base,)) for base in (0, 100, 200, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(future.result() for future in submitted) == sorted(
        base + n for base in (0, 100, 200, 300) for n in range(20)
    )


def run_in_asyncio(main: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(main())  # type: ignore[arg-type]


def test_run_in_executor(executor: freshproc.Executor) -> None:
    async def main() -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(targets.mul, 6, 7))

    assert run_in_asyncio(main) == 42


def test_cancelling_run_in_executor_ends_the_worker() -> None:
    """Cancelling the asyncio future of ``run_in_executor`` cancels the running call."""
    handshake = Handshake()
    try:
        with freshproc.Executor(max_workers=1) as executor:
            pid = executor.submit(targets.worker_pid).result()

            async def main() -> None:
                loop = asyncio.get_running_loop()
                call = loop.run_in_executor(executor, targets.started_then_wait, handshake.spec)
                await loop.run_in_executor(None, handshake.wait_started)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call

            run_in_asyncio(main)
            wait_exited(pid)
            assert executor.submit(targets.worker_pid).result() != pid
    finally:
        handshake.close()
