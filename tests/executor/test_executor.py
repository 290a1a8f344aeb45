"""The executor's core behaviours, as CPython checks them for its own executors.

Adapted from CPython ``Lib/test/test_concurrent_futures/executor.py`` (``ExecutorTest``)
and, for ``test_map_chunksize`` and ``test_traceback``, from
``Lib/test/test_concurrent_futures/test_process_pool.py`` (``ProcessPoolExecutorTest``).
Changed: pytest functions over ``freshproc.Executor`` instead of ``unittest`` classes
generated per executor type; ``test_map_timeout`` blocks its third call on a handshake
(a pipe) instead of ``time.sleep(6)``; ``test_no_stale_references`` waits on the weakref
callback's event without the free-threading branches; the remote traceback is a
``freshproc.RemoteTraceback``; tests for CPython internals (call queues, process lists) are
left out.
"""

from __future__ import annotations

import concurrent.futures
import gc
import sys
import threading
import traceback
import weakref

import pytest

import freshproc
from tests.executor import targets
from tests.executor.targets import Gates

pytestmark = pytest.mark.timeout(60)


def test_submit(executor: freshproc.Executor) -> None:
    future = executor.submit(pow, 2, 8)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result() == 256


def test_submit_keyword(executor: freshproc.Executor) -> None:
    """Keywords reach the function, even ones named like submit's own parameters."""
    assert executor.submit(targets.mul, 2, y=8).result() == 16
    assert executor.submit(targets.capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=targets.capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-arg]


def test_map(executor: freshproc.Executor) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_exception(executor: freshproc.Executor) -> None:
    """Results before a failing item come first; the failure is raised at its turn."""
    results = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(executor: freshproc.Executor, gates: Gates) -> None:
    """``next()`` raises TimeoutError for a result not ready by the deadline, after the
    ones that were; the call still running is cancelled (its worker ended)."""
    executor.submit(pow, 1, 1).result()  # workers warm: the quick items cannot miss the deadline
    gate = gates.new()
    results: list[object] = []
    mapped = executor.map(targets.none_or_wait, [None, None, gate.spec], timeout=3)
    with pytest.raises(concurrent.futures.TimeoutError):
        results.extend(mapped)  # takes each result as it comes, until the timeout
    assert results == [None, None]


def test_shutdown_race_issue12456(executor: freshproc.Executor) -> None:
    executor.map(str, [2] * 3)
    executor.shutdown()


def test_no_stale_references(executor: freshproc.Executor) -> None:
    """The executor drops the function and arguments of a call once it has run."""
    my_object = targets.MyObject()
    collected = threading.Event()
    reference = weakref.ref(my_object, lambda _: collected.set())
    executor.submit(my_object.my_method).result()  # CPython discards this future
    del my_object
    gc.collect()
    assert collected.wait(timeout=10), f"stale reference not collected: {reference()!r}"


@pytest.mark.parametrize("number", [0, -1])
def test_max_workers_negative(number: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        freshproc.Executor(max_workers=number)


@pytest.mark.parametrize("bad", [True, 2.0, "2"])
def test_max_workers_of_the_wrong_type(bad: object) -> None:
    with pytest.raises(TypeError, match="max_workers must be an int or None"):
        freshproc.Executor(max_workers=bad)  # type: ignore[arg-type]


def test_free_reference(executor: freshproc.Executor) -> None:
    """The result iterator keeps no reference to the results it has yielded."""
    for obj in executor.map(targets.make_dummy_object, range(10)):
        reference = weakref.ref(obj)
        del obj
        gc.collect()
        assert reference() is None


def test_free_reference_in_chunks(executor: freshproc.Executor) -> None:
    """Not in CPython: the same for results that came in a batch."""
    for obj in executor.map(targets.make_dummy_object, range(10), chunksize=4):
        reference = weakref.ref(obj)
        del obj
        gc.collect()
        assert reference() is None


def test_map_chunksize(executor: freshproc.Executor) -> None:
    expected = list(map(pow, range(40), range(40)))
    for chunksize in (6, 50, 40):
        assert list(executor.map(pow, range(40), range(40), chunksize=chunksize)) == expected
    with pytest.raises(ValueError, match="chunksize must be >= 1"):
        executor.map(pow, range(40), range(40), chunksize=-1)


def test_traceback(executor: freshproc.Executor, capsys: pytest.CaptureFixture[str]) -> None:
    """The exception keeps its type and arguments, and its cause holds the worker's
    traceback, source line included; printing the exception shows it."""
    future = executor.submit(targets.raise_runtime_error)
    with pytest.raises(RuntimeError) as caught:
        future.result()
    exc = caught.value
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is freshproc.RemoteTraceback
    assert "raise RuntimeError(123)  # some comment" in str(cause)

    sys.excepthook(type(exc), exc, exc.__traceback__)
    assert "raise RuntimeError(123)  # some comment" in capsys.readouterr().err
    assert "raise RuntimeError(123)  # some comment" in "".join(traceback.format_exception(exc))
