"""map streams and fails early; blocking map works where an event loop runs; trio guest
mode; when a call's arguments are read; queued calls hold nothing; running out of
descriptors is a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
import trio

import freshproc
from tests import faults
from tests.conftest import open_fds
from tests.handshake import Handshake

ROOT = Path(__file__).resolve().parent.parent


async def test_map_yields_each_result_as_soon_as_it_and_earlier_ones_are_done() -> None:
    """Item 0 is yielded while item 1 still runs (it waits for the test): map streams."""
    handshake = Handshake()
    with freshproc.Pool(2) as pool:
        results = pool.map(functools.partial(faults.block_on, blocked=1, spec=handshake.spec), [0, 1])
        with anyio.fail_after(30):
            assert await anext(results) == 0
        await anyio.to_thread.run_sync(handshake.wait_started)
        handshake.release()
        with anyio.fail_after(30):
            assert await anext(results) == 1
        with pytest.raises(StopAsyncIteration):
            await anext(results)


async def test_map_raises_an_items_error_as_soon_as_its_turn_comes() -> None:
    """Item 0 fails while item 1 is still running: the error surfaces at once (not when the
    window completes), and the running item's worker is ended."""
    handshake = Handshake()
    with freshproc.Pool(2) as pool:

        def items() -> list[int]:
            return [0, 1]

        results = pool.map(functools.partial(_fail_or_block, spec=handshake.spec), items())
        with anyio.fail_after(30), pytest.raises(ValueError, match="item 0 fails"):
            await anext(results)
        await results.aclose()
        assert await pool.call("tests.faults", "ok", 3) == 3


def _fail_or_block(value: int, spec: str) -> int:
    if value == 0:
        raise ValueError("item 0 fails")
    return faults.block_on(value, 1, spec)


def test_map_sync_streams_failures_in_order() -> None:
    with freshproc.Pool(2) as pool, pytest.raises(ValueError, match="item 5 fails"):
        pool.map_sync(functools.partial(faults.fail_on, failing=5), range(1000))


def test_map_sync_results_in_order_over_many_batches() -> None:
    with freshproc.Pool(2) as pool:
        assert pool.map_sync(abs, range(-3000, 0)) == list(range(3000, 0, -1))
        assert pool.stats().calls_ok == 3000


async def test_map_sync_works_in_a_thread_that_runs_an_event_loop() -> None:
    """map_sync ran anyio.run and failed with 'Already running asyncio in this thread';
    it works wherever call_sync does (and warns, as call_sync does, that it blocks)."""
    from freshproc import _call

    _call._warned_loop_thread = False
    with freshproc.Pool(2) as pool, pytest.warns(RuntimeWarning, match="stalls"):
        assert pool.map_sync(abs, [-1, -2, 3]) == [1, 2, 3]


def test_trio_guest_mode_on_an_asyncio_host() -> None:
    """A trio task in guest mode on an asyncio loop: the library is detected as trio
    (sniffio), not guessed from the host's running asyncio loop."""
    with freshproc.Pool(1) as pool:

        async def trio_main() -> tuple[int, int]:
            value = await pool.call("tests.faults", "ok", 5)
            results = [result async for result in pool.map(abs, [-1, -2])]
            return value, sum(results)

        async def asyncio_main() -> tuple[int, int]:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[object] = loop.create_future()
            trio.lowlevel.start_guest_run(
                trio_main, run_sync_soon_threadsafe=loop.call_soon_threadsafe, done_callback=done.set_result
            )
            outcome = await done
            return outcome.unwrap()  # type: ignore[attr-defined, no-any-return]

        assert asyncio.run(asyncio_main()) == (5, 3)


@pytest.mark.parametrize("size", [1024, 4 * 1024 * 1024], ids=["small", "large"])
@pytest.mark.parametrize("direct_copy", ["1", "0"], ids=["by-address", "memfd"])
def test_arguments_are_read_when_the_call_starts(size: int, direct_copy: str) -> None:
    """The same semantics whatever the size and however large buffers travel: a call's
    arguments are read when it starts running (it is dispatched to a worker), so a write
    made while the call waited for a worker is seen by it."""
    handshake = Handshake()
    with freshproc.Pool(1, env={"FRESHPROC_DIRECT_COPY": direct_copy}) as pool:
        data = np.zeros(size // 8)
        results: list[int] = []

        async def main() -> None:
            async with anyio.create_task_group() as group:
                # The only worker is held by a call that waits for the test.
                group.start_soon(pool.run, faults.handshake_then_pid, handshake.spec)
                await anyio.to_thread.run_sync(handshake.wait_started)

                async def queued() -> None:
                    results.append(await pool.run(faults.first_element, data))

                group.start_soon(queued)
                await anyio.wait_all_tasks_blocked()
                assert len(pool._workers._ledger.waiting) == 1  # it waits for the worker
                data[0] = 7  # written while the call waits
                handshake.release()

        anyio.run(main)
        assert results == [7]


async def test_queued_calls_hold_no_pickles_or_descriptors() -> None:
    """300 calls with large arguments wait for the one busy worker: they hold no memfd
    each (arguments are pickled when a worker takes the call), and all complete."""
    handshake = Handshake()
    with freshproc.Pool(1, env={"FRESHPROC_DIRECT_COPY": "0"}) as pool:
        payload = np.ones(40_000)  # 320 kB: out of band, in a memfd
        async with anyio.create_task_group() as group:
            group.start_soon(pool.run, faults.handshake_then_pid, handshake.spec)
            await anyio.to_thread.run_sync(handshake.wait_started)
            before = len(open_fds())
            results: list[int] = []

            async def queued() -> None:
                results.append(await pool.run(faults.first_element, payload))

            for _ in range(300):
                group.start_soon(queued)
            await anyio.wait_all_tasks_blocked()
            assert len(pool._workers._ledger.waiting) == 300
            assert len(open_fds()) - before < 10
            handshake.release()
        assert results == [1] * 300


_EMFILE_SCRIPT = """
import resource, numpy, freshproc, anyio

async def main():
    with freshproc.Pool(1, env={"FRESHPROC_DIRECT_COPY": "0"}) as pool:
        await pool.run(abs, -1)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        import os
        in_use = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use, hard))  # no descriptor left
        try:
            await pool.run(len, numpy.ones(100_000))
        except freshproc.FreshprocError as exc:
            print("clear:", exc)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print("after:", await pool.run(abs, -2))

anyio.run(main)
"""


def test_running_out_of_descriptors_is_a_clear_error() -> None:
    """EMFILE while sending becomes a FreshprocError that says so; the pool carries on."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_EMFILE_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "clear: the caller ran out of file descriptors" in completed.stdout, completed.stdout
    assert "after: 2" in completed.stdout


def test_leaving_an_endless_async_map_early_leaves_no_batch_unawaited(pool: freshproc.Pool) -> None:
    """The batches spawned but cancelled before they began (the consumer left, the loop
    ended) are closed: none is reported as a coroutine never awaited when collected."""

    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    async def first() -> int:
        async with contextlib.aclosing(pool.map(abs, endless())) as results:
            async for value in results:
                return int(value)
        raise AssertionError("the map yielded nothing")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            assert anyio.run(first) == 0
            gc.collect()
    assert [str(warning.message) for warning in caught if "never awaited" in str(warning.message)] == []
