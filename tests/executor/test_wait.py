"""``concurrent.futures.wait`` over the executor's futures, with each return condition.

Adapted from CPython ``Lib/test/test_concurrent_futures/test_wait.py`` (``WaitTests``).
Changed: pytest functions over ``freshproc.Executor``; the calls that CPython blocks on a
``multiprocessing`` event wait on a handshake (a pipe) the test releases; the futures in
fixed states are made through ``Future``'s public API (``tests/executor/targets.py``)
instead of by setting private fields; the thread-pool-only switch-interval race is left out.
Not in CPython: a running future cancelled through ``Future.cancel()`` counts as done for
every return condition.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import pytest

import freshproc
from tests.executor import targets
from tests.executor.targets import Gates

pytestmark = pytest.mark.timeout(60)


def test_20369(executor: freshproc.Executor) -> None:
    """The same future twice is one future (bpo-20369)."""
    future = executor.submit(targets.mul, 1, 2)
    done, not_done = futures.wait([future, future], return_when=futures.ALL_COMPLETED)
    assert done == {future}
    assert not_done == set()


def test_first_completed(executor: freshproc.Executor, gates: Gates) -> None:
    cancelled = targets.cancelled_future()
    future1 = executor.submit(targets.mul, 21, 2)
    future2 = executor.submit(targets.wait_for, gates.new().spec)
    done, not_done = futures.wait([cancelled, future1, future2], return_when=futures.FIRST_COMPLETED)
    assert done == {future1}
    assert not_done == {cancelled, future2}


def test_first_completed_some_already_completed(executor: freshproc.Executor, gates: Gates) -> None:
    cancelled_and_notified = targets.cancelled_and_notified_future()
    successful = targets.successful_future()
    future1 = executor.submit(targets.wait_for, gates.new().spec)
    finished, pending = futures.wait([cancelled_and_notified, successful, future1], return_when=futures.FIRST_COMPLETED)
    assert finished == {cancelled_and_notified, successful}
    assert pending == {future1}


def test_first_exception(executor: freshproc.Executor, gates: Gates) -> None:
    gate1, gate2 = gates.new(), gates.new()
    future1 = executor.submit(targets.mul, 2, 21)
    future2 = executor.submit(targets.wait_and_raise, gate1.spec)
    future3 = executor.submit(targets.wait_for, gate2.spec)

    def release_after_future1() -> None:
        # future1 is done before future2 can raise.
        future1.result()
        gate1.release()

    thread = threading.Thread(target=release_after_future1)
    thread.start()
    every: list[futures.Future[Any]] = [future1, future2, future3]
    finished, pending = futures.wait(every, return_when=futures.FIRST_EXCEPTION)
    thread.join()
    assert finished == {future1, future2}
    assert pending == {future3}


def test_first_exception_some_already_complete(executor: freshproc.Executor, gates: Gates) -> None:
    successful = targets.successful_future()
    cancelled = targets.cancelled_future()
    cancelled_and_notified = targets.cancelled_and_notified_future()
    future1 = executor.submit(divmod, 21, 0)
    future2 = executor.submit(targets.wait_for, gates.new().spec)
    finished, pending = futures.wait(
        [successful, cancelled, cancelled_and_notified, future1, future2], return_when=futures.FIRST_EXCEPTION
    )
    assert finished == {successful, cancelled_and_notified, future1}
    assert pending == {cancelled, future2}


def test_first_exception_one_already_failed(executor: freshproc.Executor, gates: Gates) -> None:
    failed = targets.exception_future()
    future1 = executor.submit(targets.wait_for, gates.new().spec)
    finished, pending = futures.wait([failed, future1], return_when=futures.FIRST_EXCEPTION)
    assert finished == {failed}
    assert pending == {future1}


def test_all_completed(executor: freshproc.Executor) -> None:
    successful = targets.successful_future()
    cancelled_and_notified = targets.cancelled_and_notified_future()
    failed = targets.exception_future()
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(targets.mul, 2, 21)
    every: list[futures.Future[Any]] = [successful, cancelled_and_notified, failed, future1, future2]
    finished, pending = futures.wait(every, return_when=futures.ALL_COMPLETED)
    assert finished == {successful, cancelled_and_notified, failed, future1, future2}
    assert pending == set()


def test_timeout(executor: freshproc.Executor, gates: Gates) -> None:
    cancelled_and_notified = targets.cancelled_and_notified_future()
    failed = targets.exception_future()
    successful = targets.successful_future()
    future = executor.submit(targets.wait_for, gates.new().spec)
    every: list[futures.Future[Any]] = [cancelled_and_notified, failed, successful, future]
    finished, pending = futures.wait(every, timeout=0.05, return_when=futures.ALL_COMPLETED)
    assert finished == {cancelled_and_notified, failed, successful}
    assert pending == {future}


@pytest.mark.parametrize("return_when", [futures.FIRST_COMPLETED, futures.FIRST_EXCEPTION, futures.ALL_COMPLETED])
def test_cancelling_a_running_call_wakes_wait(executor: freshproc.Executor, gates: Gates, return_when: str) -> None:
    """A waiter blocked on a running future wakes when the future is cancelled."""
    gate = gates.new()
    future = executor.submit(targets.started_then_wait, gate.spec)
    gate.wait_started()
    assert future.running()
    waiting = threading.Thread(target=lambda: outcome.append(futures.wait([future], return_when=return_when)))
    outcome: list[tuple[set[futures.Future[int]], set[futures.Future[int]]]] = []
    waiting.start()
    assert future.cancel()
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    assert outcome == [({future}, set())]
