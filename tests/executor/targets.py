"""Functions the Executor tests run in workers, and futures in each state for ``wait`` and
``as_completed``. Targets that must wait do so on a handshake (a pipe the test controls),
never on a clock."""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any

from tests.handshake import Handshake, signal_started, wait_go


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return args, kwargs


def wait_for(spec: str) -> None:
    """Block until the test releases this call (the CPython tests' ``event.wait``)."""
    wait_go(spec)


def none_or_wait(spec: str | None) -> None:
    """Return at once, or (given a handshake) say the call started and block until released."""
    if spec is not None:
        signal_started(spec)
        wait_go(spec)


def started_then_wait(spec: str) -> int:
    """Say the call started, block until released, and return the worker's pid."""
    signal_started(spec)
    wait_go(spec)
    return os.getpid()


def wait_and_raise(spec: str) -> None:
    wait_go(spec)
    raise Exception("this is an exception")  # noqa: TRY002 - the CPython test's own plain Exception


def raise_runtime_error() -> None:
    raise RuntimeError(123)  # some comment


def worker_pid() -> int:
    return os.getpid()


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def worker_pid_of(_: object) -> int:
    return os.getpid()


def exit_if(crash: bool) -> None:
    """End the worker (exit code 3) mid-call, or return None."""
    if crash:
        os._exit(3)


class MyObject:
    def my_method(self) -> None:
        pass


def make_dummy_object(_: object) -> MyObject:
    return MyObject()


# -- futures in each state, made through Future's public API -------------------------------


def pending_future() -> Future[Any]:
    return Future()


def running_future() -> Future[Any]:
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    return future


def cancelled_future() -> Future[Any]:
    future: Future[Any] = Future()
    future.cancel()
    return future


def cancelled_and_notified_future() -> Future[Any]:
    future = cancelled_future()
    future.set_running_or_notify_cancel()
    return future


def exception_future() -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(OSError())
    return future


def successful_future() -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(42)
    return future


class Gates:
    """Handshakes a test hands out to blocking calls, all released at the end."""

    def __init__(self) -> None:
        self._open: list[Handshake] = []

    def new(self) -> Handshake:
        handshake = Handshake()
        self._open.append(handshake)
        return handshake

    def release_all(self) -> None:
        for handshake in self._open:
            handshake.release()

    def close(self) -> None:
        for handshake in self._open:
            handshake.close()
