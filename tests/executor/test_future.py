"""The executor's futures: done callbacks added before and after completion, and
``cancel()`` in each state.

Adapted from CPython ``Lib/test/test_concurrent_futures/test_future.py`` (``FutureTests``,
the ``test_done_callback_*`` and ``test_cancel`` tests). Changed: the futures come from
``freshproc.Executor.submit`` instead of bare ``Future()`` objects completed by the test,
so a callback added before completion runs on the executor's thread and the test waits
for it on an event; callback errors are read from the ``concurrent.futures`` logger
(caplog) instead of captured stderr; in ``test_cancel`` a RUNNING future's ``cancel()``
returns True and the future ends cancelled (CPython's returns False and stays RUNNING).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import Any

import pytest

import freshproc
from tests.executor import targets
from tests.executor.targets import Gates

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A done callback that records what it saw, and an event set once it has run."""

    def __init__(self) -> None:
        self.called = threading.Event()
        self.seen: list[object] = []

    def __call__(self, future: futures.Future[Any]) -> None:
        if future.cancelled():
            self.seen.append("cancelled")
        elif future.exception() is not None:
            self.seen.append(future.exception())
        else:
            self.seen.append(future.result())
        self.called.set()

    def wait(self) -> list[object]:
        assert self.called.wait(timeout=30)
        return self.seen


def test_done_callback_with_result(executor: freshproc.Executor, gates: Gates) -> None:
    gate = gates.new()
    future = executor.submit(targets.started_then_wait, gate.spec)
    recorder = Recorder()
    future.add_done_callback(recorder)
    gate.wait_started()
    assert not recorder.called.is_set()
    gate.release()
    [pid] = recorder.wait()
    assert pid == future.result()


def test_done_callback_with_exception(executor: freshproc.Executor, gates: Gates) -> None:
    gate = gates.new()
    future = executor.submit(targets.wait_and_raise, gate.spec)
    recorder = Recorder()
    future.add_done_callback(recorder)
    gate.release()
    [error] = recorder.wait()
    assert isinstance(error, Exception)
    assert error.args == ("this is an exception",)


def test_done_callback_with_cancel(executor: freshproc.Executor, gates: Gates) -> None:
    """A callback added to a running call sees it cancelled, synchronously in cancel()."""
    gate = gates.new()
    future = executor.submit(targets.started_then_wait, gate.spec)
    recorder = Recorder()
    future.add_done_callback(recorder)
    gate.wait_started()
    assert future.cancel()
    assert recorder.seen == ["cancelled"]


def test_done_callback_raises(executor: freshproc.Executor, gates: Gates, caplog: pytest.LogCaptureFixture) -> None:
    """A raising callback is logged; the next callback still runs."""
    gate = gates.new()
    future = executor.submit(targets.wait_for, gate.spec)
    raising_called = threading.Event()

    def raising(_: futures.Future[None]) -> None:
        raising_called.set()
        raise Exception("doh!")  # noqa: TRY002 - the CPython test's own plain Exception

    recorder = Recorder()
    future.add_done_callback(raising)
    future.add_done_callback(recorder)
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        gate.release()
        assert recorder.wait() == [None]
    assert raising_called.is_set()
    assert "exception calling callback for" in caplog.text
    assert "Exception: doh!" in caplog.text


def test_done_callback_already_successful(executor: freshproc.Executor) -> None:
    future = executor.submit(targets.mul, 5, 1)
    futures.wait([future])
    recorder = Recorder()
    future.add_done_callback(recorder)
    assert recorder.seen == [5]  # run at once, in this thread


def test_done_callback_already_failed(executor: freshproc.Executor) -> None:
    future = executor.submit(divmod, 1, 0)
    futures.wait([future])
    recorder = Recorder()
    future.add_done_callback(recorder)
    [error] = recorder.seen
    assert isinstance(error, ZeroDivisionError)


def test_done_callback_already_cancelled(executor: freshproc.Executor, gates: Gates) -> None:
    gate = gates.new()
    future = executor.submit(targets.started_then_wait, gate.spec)
    gate.wait_started()
    assert future.cancel()
    recorder = Recorder()
    future.add_done_callback(recorder)
    assert recorder.seen == ["cancelled"]


def test_done_callback_raises_already_succeeded(executor: freshproc.Executor, caplog: pytest.LogCaptureFixture) -> None:
    future = executor.submit(targets.mul, 5, 1)
    futures.wait([future])

    def raising(_: futures.Future[int]) -> None:
        raise Exception("doh!")  # noqa: TRY002 - the CPython test's own plain Exception

    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        future.add_done_callback(raising)
    assert "exception calling callback for" in caplog.text
    assert "doh!" in caplog.text


def test_cancel(executor: freshproc.Executor, gates: Gates) -> None:
    """cancel() in each state: a queued call (PENDING) and a running one are cancelled;
    cancelling again says True; a finished call cannot be cancelled."""
    gate = gates.new()
    running = executor.submit(targets.started_then_wait, gate.spec)
    blocker = gates.new()
    executor.submit(targets.started_then_wait, blocker.spec)
    gate.wait_started()
    blocker.wait_started()
    queued = executor.submit(targets.mul, 2, 2)  # both workers are busy: it stays PENDING
    assert not queued.running()
    assert queued.cancel()
    assert queued.cancelled()

    assert running.running()
    assert running.cancel()
    assert running.cancelled()
    assert running.done()
    assert running.cancel()  # again
    with pytest.raises(futures.CancelledError):
        running.result(timeout=0)

    succeeded = executor.submit(targets.mul, 3, 3)
    assert succeeded.result() == 9
    assert not succeeded.cancel()
    failed = executor.submit(divmod, 1, 0)
    futures.wait([failed])
    assert not failed.cancel()
    assert isinstance(failed.exception(), ZeroDivisionError)
