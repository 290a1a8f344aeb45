"""Objects the service tests host in worker processes. Each is deterministic: it waits on
handshakes (pipes) or files the test controls, never on a clock."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import threading
from pathlib import Path
from types import TracebackType

from tests.handshake import signal_started, wait_go


def _append(path: str, line: str) -> None:
    with open(path, "a") as file:
        file.write(line + "\n")


class Counter:
    """State that lives as long as its process: a count, bumped by each call."""

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def bump(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def get(self) -> int:
        return self.value

    def getpid(self) -> int:
        return os.getpid()

    async def bump_async(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def bump_and_hold(self, spec: str) -> tuple[int, int]:
        """Bump, then hold this process until the test says go."""
        self.value += 1
        signal_started(spec)
        wait_go(spec)
        return os.getpid(), self.value

    def hang_until_sigterm(self, spec: str) -> str:
        """Hangs after a handshake; returns a late result as soon as SIGTERM arrives (a
        reply that must never reach any call)."""
        finished = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: finished.set())
        signal_started(spec)
        finished.wait()
        return "LATE RESULT"

    def exit_cleanly(self) -> None:
        os._exit(0)

    def unpicklable(self) -> object:
        self.value += 1
        return threading.Lock()

    not_a_method = 3


class Fragile:
    """Segfaults on the third call of each object; records every call it serves."""

    def __init__(self) -> None:
        self.calls = 0

    def step(self) -> tuple[int, int]:
        self.calls += 1
        if self.calls == 3:
            ctypes.string_at(0)
        return os.getpid(), self.calls

    def crash_after_handshake(self, spec: str) -> None:
        signal_started(spec)
        wait_go(spec)
        ctypes.string_at(0)

    def record(self, path: str, index: int) -> int:
        _append(path, str(index))
        return index


class Echo:
    """Keeps the keywords its factory got; its method returns them with its own."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args
        self.kwargs = kwargs

    def echo(self, *args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object], dict[str, object]]:
        return args, kwargs, self.kwargs


class Broken:
    def __init__(self, message: str) -> None:
        raise ValueError(message)


class Checked:
    """A health method that hangs (on a pipe nobody writes) or raises once the trigger
    file exists; the trigger is consumed, so the restarted object is healthy."""

    def __init__(self, trigger: str, spec: str, how: str) -> None:
        self.trigger = trigger
        self.spec = spec
        self.how = how

    def healthy(self) -> None:
        if not os.path.exists(self.trigger):
            return
        os.unlink(self.trigger)
        if self.how == "raise":
            raise RuntimeError("unhealthy on purpose")
        signal_started(self.spec)
        wait_go(self.spec)

    def getpid(self) -> int:
        return os.getpid()


class Closable:
    """Writes its pid to ``path`` when closed (``close()``)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def getpid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        _append(self.path, f"close {os.getpid()}")


class Managed:
    """A context manager: entered when built, exited when the service closes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> Managed:
        _append(self.path, "enter")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _append(self.path, f"exit {os.getpid()}")

    def getpid(self) -> int:
        return os.getpid()


class AsyncManaged:
    """An async context manager: ``__aenter__`` and ``__aexit__`` run on the object's loop."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def __aenter__(self) -> AsyncManaged:
        _append(self.path, "aenter")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _append(self.path, f"aexit {os.getpid()}")

    def getpid(self) -> int:
        return os.getpid()


class HangingClose:
    """A close() that signals it started, then never ends (it ignores SIGTERM too)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def getpid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal_started(self.spec)
        wait_go(self.spec)


class FailingClose:
    def getpid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        raise OSError("the object's close failed on purpose")


def read_lines(path: str | Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


class Gathering:
    """Calls that return only once ``expected`` of them are running at once: a barrier
    inside the object (threads for plain methods, the event loop for ``async def``). Calls
    that ran one at a time would never pass it: the backstop timeout fails them instead."""

    BACKSTOP = 60.0

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.barrier = threading.Barrier(expected, timeout=self.BACKSTOP)
        self.arrived = 0
        self.all_here: asyncio.Event | None = None
        self.value = 0

    def gather(self) -> int:
        """Wait at the barrier; the thread this call ran on."""
        self.barrier.wait()
        return threading.get_ident()

    async def gather_async(self) -> int:
        """Wait until ``expected`` coroutines have arrived; the thread of the event loop."""
        if self.all_here is None:
            self.all_here = asyncio.Event()
        self.arrived += 1
        if self.arrived == self.expected:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), self.BACKSTOP)
        return threading.get_ident()

    def hold(self, spec: str) -> int:
        """Tell the test it runs, then wait until it says go."""
        signal_started(spec)
        wait_go(spec)
        return os.getpid()

    async def hold_async(self, spec: str) -> int:
        signal_started(spec)
        await asyncio.get_running_loop().run_in_executor(None, wait_go, spec)
        return os.getpid()

    def record(self, path: str, index: int) -> int:
        """Note the call's start and end in ``path`` (one at a time: they never interleave)."""
        _append(path, f"enter {index}")
        self.value += 1
        _append(path, f"exit {index}")
        return index

    def getpid(self) -> int:
        return os.getpid()

    def segfault(self) -> None:
        ctypes.string_at(0)

    def ping(self) -> str:
        return "pong"
