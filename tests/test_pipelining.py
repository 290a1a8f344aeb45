"""Pipelined dispatch: requests queued on a busy worker keep every guarantee of a call
that has its worker alone (each runs once, a cancelled one never runs, a worker that ends
fails only the call it was running)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import freshproc
from tests import pipeline_targets
from tests.handshake import Handshake


class QueuedSends:
    """Counts requests that went out queued behind another (``WorkerSet.send`` returned
    False), so a test knows a request sits on a busy worker's channel before it acts."""

    def __init__(self, pool: freshproc.Pool) -> None:
        self._condition = threading.Condition()
        self.count = 0
        workers = pool._workers
        real_send = workers.send

        def send(*args: Any, **kwargs: Any) -> bool | None:
            head = real_send(*args, **kwargs)
            if head is False:
                with self._condition:
                    self.count += 1
                    self._condition.notify_all()
            return head

        workers.send = send  # type: ignore[method-assign]

    def wait_for(self, count: int) -> None:
        with self._condition:
            assert self._condition.wait_for(lambda: self.count >= count, timeout=30), self.count


def _lines(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


async def test_a_call_cancelled_while_queued_never_runs(tmp_path: Path, anyio_backend: str) -> None:
    proof = tmp_path / "queued-call-ran"
    handshake = Handshake()
    async with freshproc.Pool(1, pipeline=2) as pool:
        queued = QueuedSends(pool)
        first_pid = await pool.call("tests.pipeline_targets", "pid")
        async with anyio.create_task_group() as group:
            results: list[str] = []

            async def head() -> None:
                results.append(await pool.call("tests.pipeline_targets", "wait_then_return", handshake.spec, "head"))

            group.start_soon(head)
            await anyio.to_thread.run_sync(handshake.wait_started)
            with anyio.CancelScope() as scope:
                group.start_soon(_cancel_when_queued, scope, queued)
                await pool.call("tests.pipeline_targets", "touch", str(proof))
            assert scope.cancelled_caught
            handshake.release()
        assert results == ["head"]
        # The worker carried on (it dropped the queued call unstarted): same pid, and the
        # next call on it runs after the dropped one would have.
        assert await pool.call("tests.pipeline_targets", "pid") == first_pid
        assert not proof.exists()
        stats = pool.stats()
        assert stats.calls_cancelled == 1
        assert stats.workers_cancelled == 0
    handshake.close()


async def _cancel_when_queued(scope: anyio.CancelScope, queued: QueuedSends) -> None:
    await anyio.to_thread.run_sync(queued.wait_for, 1)
    scope.cancel()


def test_a_crash_at_the_head_sends_the_queued_calls_elsewhere_blocking(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    handshake = Handshake()
    outcomes: dict[str, object] = {}
    with freshproc.Pool(1, pipeline=3) as pool:
        queued = QueuedSends(pool)
        first_pid = pool.call_sync("tests.pipeline_targets", "pid")

        def crash() -> None:
            with pytest.raises(freshproc.WorkerCrashedError):
                pool.call_sync("tests.pipeline_targets", "wait_then_segfault", handshake.spec)
            outcomes["a"] = "crashed"

        def record(tag: str) -> None:
            outcomes[tag] = pool.call_sync("tests.pipeline_targets", "record", str(log), tag)

        threads = [threading.Thread(target=crash)]
        threads[0].start()
        handshake.wait_started()
        for count, tag in enumerate(("b", "c"), start=1):
            threads.append(threading.Thread(target=record, args=(tag,)))
            threads[-1].start()
            queued.wait_for(count)
        handshake.release()
        for thread in threads:
            thread.join(30)
        assert outcomes == {"a": "crashed", "b": "b", "c": "c"}
        assert pool.call_sync("tests.pipeline_targets", "pid") != first_pid
        stats = pool.stats()
        assert (stats.calls_crashed, stats.workers_crashed) == (1, 1)
    # Each queued call ran exactly once (on the new worker).
    assert _lines(log) == Counter({"b": 1, "c": 1})
    handshake.close()


async def test_a_crash_at_the_head_sends_the_queued_calls_elsewhere(tmp_path: Path, anyio_backend: str) -> None:
    log = tmp_path / "runs.log"
    handshake = Handshake()
    async with freshproc.Pool(1, pipeline=3) as pool:
        queued = QueuedSends(pool)
        first_pid = await pool.call("tests.pipeline_targets", "pid")
        outcomes: dict[str, object] = {}

        async def crash() -> None:
            with pytest.raises(freshproc.WorkerCrashedError):
                await pool.call("tests.pipeline_targets", "wait_then_segfault", handshake.spec)
            outcomes["a"] = "crashed"

        async def record(tag: str) -> None:
            outcomes[tag] = await pool.call("tests.pipeline_targets", "record", str(log), tag)

        async with anyio.create_task_group() as group:
            group.start_soon(crash)
            await anyio.to_thread.run_sync(handshake.wait_started)
            for count, tag in enumerate(("b", "c"), start=1):
                group.start_soon(record, tag)
                await anyio.to_thread.run_sync(queued.wait_for, count)
            handshake.release()
        assert outcomes == {"a": "crashed", "b": "b", "c": "c"}
        assert await pool.call("tests.pipeline_targets", "pid") != first_pid
    assert _lines(log) == Counter({"b": 1, "c": 1})
    handshake.close()


async def test_a_timeout_at_the_head_ends_its_worker_and_the_queued_call_runs_elsewhere(
    tmp_path: Path, anyio_backend: str
) -> None:
    log = tmp_path / "runs.log"
    handshake = Handshake()
    async with freshproc.Pool(1, pipeline=2) as pool:
        queued = QueuedSends(pool)
        hang = freshproc.isolated(pool=pool, timeout=1.0)(pipeline_targets.hang)
        first_pid = await pool.call("tests.pipeline_targets", "pid")
        outcomes: dict[str, object] = {}

        async def timed() -> None:
            with pytest.raises(freshproc.CallTimeoutError):
                await hang.aio(handshake.spec)
            outcomes["timed"] = "timed out"

        async def record() -> None:
            outcomes["queued"] = await pool.call("tests.pipeline_targets", "record", str(log), "queued")

        async with anyio.create_task_group() as group:
            group.start_soon(timed)
            await anyio.to_thread.run_sync(handshake.wait_started)
            group.start_soon(record)
            await anyio.to_thread.run_sync(queued.wait_for, 1)
        assert outcomes == {"timed": "timed out", "queued": "queued"}
        assert await pool.call("tests.pipeline_targets", "pid") != first_pid
        stats = pool.stats()
        assert (stats.calls_timed_out, stats.workers_timed_out) == (1, 1)
    assert _lines(log) == Counter({"queued": 1})
    handshake.close()


async def test_a_worker_that_breaks_the_protocol_is_ended_once_the_call_queued_behind_has_run(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The head's reply is refused (a memfd that is not sealed): the worker may have
    started the call queued behind. That call runs once (there, or elsewhere if the
    cancel reached it first) and returns its own value; then the worker is ended."""
    log = tmp_path / "runs.log"
    handshake = Handshake()
    async with freshproc.Pool(1, pipeline=2) as pool:
        queued = QueuedSends(pool)
        first_pid = await pool.call("tests.pipeline_targets", "pid")
        outcomes: dict[str, object] = {}

        async def broken() -> None:
            with pytest.raises(freshproc.ProtocolError, match="not sealed"):
                await pool.call("tests.pipeline_targets", "wait_then_return_unsealed", handshake.spec, 1 << 20)
            outcomes["head"] = "refused"

        async def record() -> None:
            outcomes["queued"] = await pool.call("tests.pipeline_targets", "record", str(log), "queued")

        async with anyio.create_task_group() as group:
            group.start_soon(broken)
            await anyio.to_thread.run_sync(handshake.wait_started)
            group.start_soon(record)
            await anyio.to_thread.run_sync(queued.wait_for, 1)
            handshake.release()
        assert outcomes == {"head": "refused", "queued": "queued"}
        assert await pool.call("tests.pipeline_targets", "pid") != first_pid
        stats = pool.stats()
        assert (stats.calls_crashed, stats.workers_crashed) == (1, 1)
    assert _lines(log) == Counter({"queued": 1})
    handshake.close()


async def test_ten_thousand_calls_with_random_cancellations(tmp_path: Path, anyio_backend: str) -> None:
    """1,000 tasks make 10 calls each, all in flight at once; 5 % are cancelled at a random
    point. Every other call returns its own result, and ran exactly once."""
    log = tmp_path / "runs.log"
    chooser = random.Random(20261201)
    plan = [[(chooser.random() < 0.05, chooser.randrange(4)) for _ in range(10)] for _ in range(1000)]
    results: dict[str, object] = {}
    cancelled: set[str] = set()
    async with freshproc.Pool(2, pipeline=2) as pool:

        async def task(number: int) -> None:
            for index, (cancel, checkpoints) in enumerate(plan[number]):
                tag = f"{number}.{index}"
                if not cancel:
                    results[tag] = await pool.call("tests.pipeline_targets", "record", str(log), tag)
                    continue
                async with anyio.create_task_group() as group:

                    async def doomed(tag: str = tag) -> None:
                        results[tag] = await pool.call("tests.pipeline_targets", "record", str(log), tag)

                    group.start_soon(doomed)
                    for _ in range(checkpoints):
                        await anyio.lowlevel.checkpoint()
                    group.cancel_scope.cancel()
                if tag not in results:
                    cancelled.add(tag)

        async with anyio.create_task_group() as group:
            for number in range(1000):
                group.start_soon(task, number)
        stats = pool.stats()
    assert all(results[tag] == tag for tag in results)
    assert len(results) + len(cancelled) == 10_000
    assert len(cancelled) > 0
    runs = _lines(log)
    assert all(runs[tag] == 1 for tag in results), "a call that returned did not run exactly once"
    assert all(runs[tag] <= 1 for tag in cancelled), "a cancelled call ran twice"
    assert stats.calls_ok == len(results)


def test_calls_from_many_threads_each_run_once(tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    results: dict[str, object] = {}
    with freshproc.Pool(2, pipeline=2) as pool:

        def thread(number: int) -> None:
            for index in range(60):
                tag = f"{number}.{index}"
                results[tag] = pool.call_sync("tests.pipeline_targets", "record", str(log), tag)

        threads = [threading.Thread(target=thread, args=(number,)) for number in range(16)]
        for each in threads:
            each.start()
        for each in threads:
            each.join(60)
    assert len(results) == 16 * 60
    assert all(results[tag] == tag for tag in results)
    assert _lines(log) == Counter(dict.fromkeys(results, 1))


def test_policies_that_count_calls_per_worker_queue_nothing(tmp_path: Path) -> None:
    policies: list[dict[str, Any]] = [
        {"fresh": True, "pipeline": 2},
        {"max_calls_per_worker": 1, "pipeline": 2},
        {"max_memory": "1GB", "pipeline": 2},
        {"timeout": 30.0, "pipeline": 2},
        {},  # the default: no pipelining
    ]
    for options in policies:
        handshake = Handshake()
        with freshproc.Pool(1, **options) as pool:
            queued = QueuedSends(pool)
            holder = threading.Thread(
                target=pool.call_sync, args=("tests.pipeline_targets", "wait_then_return", handshake.spec, "x")
            )
            holder.start()
            handshake.wait_started()
            second = threading.Thread(target=pool.call_sync, args=("tests.pipeline_targets", "pid"))
            second.start()
            handshake.release()
            holder.join(30)
            second.join(30)
            assert queued.count == 0, options
        handshake.close()


def test_pipeline_option_is_checked() -> None:
    with pytest.raises(ValueError, match="pipeline"):
        freshproc.Pool(pipeline=0)
    with pytest.raises(TypeError, match="pipeline"):
        freshproc.Pool(pipeline=2.0)  # type: ignore[arg-type]
