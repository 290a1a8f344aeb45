"""The public API: call, run, their blocking twins, isolated, map, stats, options and
bad input, on asyncio, trio and the blocking API."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import anyio
import pytest

import freshproc
from tests import faults, isolated_targets
from tests.handshake import Handshake

pytestmark = pytest.mark.timeout(60)


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def boom(message: str) -> None:
    raise ValueError(message)


def make_lock() -> object:
    return threading.Lock()


def pid() -> int:
    return os.getpid()


@pytest.fixture(scope="module")
def shared_pool() -> Iterator[freshproc.Pool]:
    with freshproc.Pool(2) as pool:
        yield pool


@pytest.fixture(autouse=True)
def no_leftover_processes() -> None:
    """This module shares one pool across tests; the leak guard is in the pool fixture."""


# -- async ------------------------------------------------------------------------------


async def test_call_passes_arguments_and_keywords_untouched(shared_pool: freshproc.Pool) -> None:
    assert await shared_pool.call("tests.test_api", "add", 1, 2, scale=10) == 30
    assert await shared_pool.call("os.path", "join", "a", "b") == os.path.join("a", "b")
    assert await shared_pool.call("os", "path.basename", "/x/y") == "y"


async def test_run_ships_closures(shared_pool: freshproc.Pool) -> None:
    factor = 7
    assert await shared_pool.run(lambda x: x * factor, 6) == 42


async def test_run_awaits_coroutine_functions_in_the_worker(shared_pool: freshproc.Pool, anyio_backend: str) -> None:
    """A coroutine function runs on an event loop of the caller's own library: a target
    that needs trio works from a trio caller, one that needs asyncio from asyncio."""

    async def coroutine(x: int, library: str) -> int:
        import sniffio

        assert sniffio.current_async_library() == library
        if library == "trio":
            import trio

            await trio.lowlevel.checkpoint()
        else:
            import asyncio

            await asyncio.sleep(0)
        return x + 1

    assert await shared_pool.run(coroutine, 1, anyio_backend) == 2


async def test_exceptions_keep_their_type_and_remote_traceback(shared_pool: freshproc.Pool) -> None:
    with pytest.raises(ValueError, match="bad input") as info:
        await shared_pool.call("tests.test_api", "boom", "bad input")
    assert isinstance(info.value.__cause__, freshproc.RemoteTraceback)
    assert "in boom" in str(info.value.__cause__)


async def test_missing_module_and_attribute(shared_pool: freshproc.Pool) -> None:
    with pytest.raises(ModuleNotFoundError) as info:
        await shared_pool.call("no_such_module_anywhere", "f")
    assert "no_such_module_anywhere" in str(info.value.__cause__)
    with pytest.raises(AttributeError):
        await shared_pool.call("math", "no_such_function")


async def test_unpicklable_argument_fails_before_sending(shared_pool: freshproc.Pool) -> None:
    served = shared_pool.stats().calls_served
    with pytest.raises(freshproc.SerializationError, match="arguments") as info:
        await shared_pool.call("tests.test_api", "add", threading.Lock(), 1)
    assert (info.value.direction, info.value.stage) == ("arguments", "dump")
    assert shared_pool.stats().calls_served == served  # nothing reached a worker
    assert await shared_pool.call("tests.test_api", "add", 1, 1) == 2


async def test_unpicklable_result_names_the_type_and_the_worker_carries_on() -> None:
    async with freshproc.Pool(1) as pool:
        before = await pool.call("tests.test_api", "pid")
        with pytest.raises(freshproc.SerializationError, match="lock") as info:
            await pool.call("tests.test_api", "make_lock")
        assert (info.value.direction, info.value.stage) == ("result", "dump")
        assert await pool.call("tests.test_api", "pid") == before
        assert pool.stats().workers_started == 1


async def test_map_yields_results_in_input_order(shared_pool: freshproc.Pool) -> None:
    results = [value async for value in shared_pool.map(add, range(20), range(20))]
    assert results == [2 * index for index in range(20)]


async def test_map_raises_the_first_failure_in_order(shared_pool: freshproc.Pool) -> None:
    def maybe_fail(value: int) -> int:
        if value == 3:
            raise KeyError(value)
        return value

    seen: list[int] = []
    results = shared_pool.map(maybe_fail, range(6))
    with pytest.raises(KeyError):  # noqa: PT012 - the loop is what raises
        async for value in results:
            seen.append(value)  # noqa: PERF401 - the point is to see each item as it comes
    assert seen == [0, 1, 2]


async def test_module_level_functions_use_a_default_pool() -> None:
    assert await freshproc.call("tests.test_api", "add", 2, 3) == 5
    assert await freshproc.run(add, 1, 1) == 2
    assert freshproc.default_pool() is freshproc.default_pool()
    freshproc.default_pool().close()


async def test_isolated_functions_keep_their_shape() -> None:
    async_pid = await isolated_targets.async_worker_pid()
    assert async_pid != os.getpid()
    assert await isolated_targets.worker_pid_plus.aio(0) != os.getpid()
    freshproc.default_pool().close()


# -- blocking -----------------------------------------------------------------------------


def test_blocking_twins(shared_pool: freshproc.Pool) -> None:
    assert shared_pool.call_sync("tests.test_api", "add", 1, 2, scale=2) == 6
    assert shared_pool.run_sync(add, 4, 5) == 9
    assert shared_pool.map_sync(add, [1, 2], [3, 4]) == [4, 6]
    assert freshproc.call_sync("tests.test_api", "add", 1, 1) == 2
    assert freshproc.run_sync(add, 2, 2) == 4


def test_isolated_def_blocks_and_runs_in_a_worker() -> None:
    assert isolated_targets.worker_pid_plus(0) != os.getpid()
    assert isolated_targets.worker_pid_plus.__name__ == "worker_pid_plus"


def test_isolated_fresh_runs_each_call_in_a_new_process() -> None:
    pids = {isolated_targets.fresh_pid() for _ in range(3)}
    assert len(pids) == 3
    assert os.getpid() not in pids


def test_isolated_with_explicit_pool_and_local_function() -> None:
    with freshproc.Pool(1) as pool:

        @freshproc.isolated(pool=pool)
        def local(x: int) -> tuple[int, int]:
            return x, os.getpid()

        value, worker_pid = local(5)
        assert value == 5
        assert worker_pid in pool.worker_pids()


def test_isolated_timeout_is_its_own_policy() -> None:
    with freshproc.Pool(1) as pool:

        @freshproc.isolated(pool=pool, timeout=0.2)
        def hang() -> None:
            threading.Event().wait()

        with pytest.raises(freshproc.CallTimeoutError):
            hang()
        assert pool.run_sync(add, 1, 2) == 3


def test_stats_count_calls_and_workers() -> None:
    with freshproc.Pool(2) as pool:
        for _ in range(3):
            pool.call_sync("tests.test_api", "add", 1, 1)
        stats = pool.stats()
        assert stats.calls_served == 3
        assert stats.workers_started == 1
        assert stats.workers_alive == 1
        pool.recycle()
        pool.call_sync("tests.test_api", "add", 1, 1)
        stats = pool.stats()
        assert stats.workers_recycled == 1
        assert stats.workers_started == 2
        assert stats.calls_served == 4


def test_fresh_pool_never_reuses_a_process() -> None:
    with freshproc.Pool(2, fresh=True) as pool:
        pids = [pool.call_sync("tests.test_api", "pid") for _ in range(6)]
    assert len(set(pids)) == 6


def test_max_calls_per_worker() -> None:
    with freshproc.Pool(1, max_calls_per_worker=2) as pool:
        pids = [pool.call_sync("tests.test_api", "pid") for _ in range(4)]
    assert pids[0] == pids[1] != pids[2] == pids[3]


def test_recycle_replaces_a_busy_worker_after_its_call() -> None:
    with freshproc.Pool(1) as pool:
        first_pid = pool.call_sync("tests.test_api", "pid")
        results: list[object] = []
        handshake = Handshake()
        thread = threading.Thread(
            target=lambda: results.append(pool.run_sync(faults.handshake_then_pid, handshake.spec))
        )
        thread.start()
        handshake.wait_started()
        pool.recycle()
        handshake.release()
        thread.join()
        assert results == [first_pid]
        assert pool.call_sync("tests.test_api", "pid") != first_pid
        assert pool.stats().workers_recycled == 1


def test_closed_pool_raises_pool_closed_error() -> None:
    pool = freshproc.Pool(1)
    pool.call_sync("tests.test_api", "add", 1, 1)
    pool.close()
    pool.close()  # idempotent
    with pytest.raises(freshproc.PoolClosedError):
        pool.call_sync("tests.test_api", "add", 1, 1)
    with pytest.raises(freshproc.PoolClosedError):
        anyio.run(pool.call, "tests.test_api", "add", 1, 1)


@pytest.mark.parametrize(
    "options",
    [
        {"workers": 0},
        {"workers": -1},
        {"timeout": -1.0},
        {"timeout": 0},
        {"idle_timeout": -5},
        {"max_calls_per_worker": 0},
        {"max_memory": "lots"},
        {"memory_limit": -1},
        {"grace_period": float("nan")},
    ],
)
def test_nonsense_options_raise_value_error(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must|not a size"):
        freshproc.Pool(**options)  # type: ignore[arg-type]


def test_isolated_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        freshproc.isolated(timeout=-1)


def fail_on_three(value: int) -> int:
    if value == 3:
        raise KeyError(value)
    return value


def crash_on_three(value: int) -> int:
    if value == 3:
        os._exit(9)
    return value


def test_map_batches_many_calls_in_order_and_counts_each() -> None:
    with freshproc.Pool(2) as pool:
        assert pool.map_sync(add, range(1000), range(1000)) == [2 * index for index in range(1000)]
        assert pool.stats().calls_served == 1000
        assert pool.stats().workers_started <= 2


def test_map_failures_keep_their_position_and_type() -> None:
    with freshproc.Pool(2) as pool:
        with pytest.raises(KeyError) as info:
            pool.map_sync(fail_on_three, range(200))
        assert isinstance(info.value.__cause__, freshproc.RemoteTraceback)
        assert pool.map_sync(fail_on_three, range(3)) == [0, 1, 2]


def test_map_reports_a_crash_and_the_pool_carries_on() -> None:
    with freshproc.Pool(2) as pool:
        with pytest.raises(freshproc.WorkerCrashedError, match="code 9"):
            pool.map_sync(crash_on_three, range(100))
        assert pool.map_sync(add, [1], [1]) == [2]


async def test_cancelling_a_map_ends_its_workers() -> None:
    async with freshproc.Pool(2) as pool:
        handshake = Handshake()

        async def consume() -> None:
            async for _ in pool.map(faults.handshake_then_pid, [handshake.spec] * 4):
                pass

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(consume)
                await anyio.to_thread.run_sync(handshake.wait_started)
                scope.cancel()
        assert scope.cancelled_caught
        assert await pool.call("tests.test_api", "add", 2, 2) == 4


def test_fresh_pool_map_uses_a_process_per_item() -> None:
    with freshproc.Pool(2, fresh=True) as pool:
        pids = pool.map_sync(pid_of, range(6))
    assert len(set(pids)) == 6


def pid_of(_: int) -> int:
    return os.getpid()
