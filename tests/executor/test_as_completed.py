"""``concurrent.futures.as_completed`` over the executor's futures.

Adapted from CPython ``Lib/test/test_concurrent_futures/test_as_completed.py``
(``AsCompletedTests``). Changed: pytest functions over ``freshproc.Executor``; the call
that CPython makes long with ``time.sleep`` waits on a handshake (a pipe) instead; futures
in fixed states come from ``Future``'s public API; ``test_duplicate_futures`` uses a quick
call (no sleep).
"""

from __future__ import annotations

import gc
import itertools
import weakref
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

import freshproc
from tests.executor import targets
from tests.executor.targets import Gates

pytestmark = pytest.mark.timeout(60)


def collect(iterator: Iterator[futures.Future[Any]], into: list[futures.Future[Any]]) -> None:
    """Append what ``iterator`` yields to ``into`` until it ends or raises."""
    into.extend(iterator)


def test_no_timeout(executor: freshproc.Executor) -> None:
    fixed = {targets.cancelled_and_notified_future(), targets.exception_future(), targets.successful_future()}
    future1 = executor.submit(targets.mul, 2, 21)
    future2 = executor.submit(targets.mul, 7, 6)
    completed = set(futures.as_completed([*fixed, future1, future2]))
    assert completed == {*fixed, future1, future2}


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_future_times_out(executor: freshproc.Executor, gates: Gates, timeout: float) -> None:
    """as_completed yields what is done, then raises TimeoutError for the rest."""
    already_completed = {
        targets.cancelled_and_notified_future(),
        targets.exception_future(),
        targets.successful_future(),
    }
    future = executor.submit(targets.wait_for, gates.new().spec)
    completed: list[futures.Future[Any]] = []
    with pytest.raises(futures.TimeoutError):
        collect(futures.as_completed([*already_completed, future], timeout), completed)
    assert set(completed) == already_completed


def test_duplicate_futures(executor: freshproc.Executor) -> None:
    """A future given several times is yielded once (bpo-20367; any iterable, bpo-31641)."""
    future1 = executor.submit(targets.mul, 3, 3)
    completed = list(futures.as_completed(itertools.repeat(future1, 3)))
    assert completed == [future1]


def test_free_reference_yielded_future(executor: freshproc.Executor) -> None:
    """as_completed keeps no reference to the futures it has yielded (bpo-14406)."""
    futures_list = [executor.submit(targets.mul, n, n) for n in range(8)]
    futures.wait(futures_list)
    for future in futures.as_completed(futures_list):
        futures_list.remove(future)
        reference = weakref.ref(future)
        del future
        gc.collect()
        assert reference() is None


def test_correct_timeout_exception_msg() -> None:
    futures_list = [
        targets.cancelled_and_notified_future(),
        targets.pending_future(),
        targets.running_future(),
        targets.successful_future(),
    ]
    with pytest.raises(futures.TimeoutError, match=r"^2 \(of 4\) futures unfinished$"):
        list(futures.as_completed(futures_list, timeout=0))


def test_a_cancelled_running_call_is_yielded(executor: freshproc.Executor, gates: Gates) -> None:
    """Not in CPython: cancelling a running call completes it for as_completed too."""
    gate = gates.new()
    future = executor.submit(targets.started_then_wait, gate.spec)
    gate.wait_started()
    completed = futures.as_completed([future])
    assert future.cancel()
    assert next(completed) is future
    assert future.cancelled()
