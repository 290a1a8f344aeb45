"""One-shot waiters that any thread may wake: the bridge between the pool's state (shared
by threads and event loops) and whoever waits on it (a blocking caller or a task on an
asyncio or trio loop)."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

ValueT = TypeVar("ValueT")


class Waiter(Generic[ValueT]):
    """Holds a value or an error once woken. ``wake`` is thread-safe and idempotent:
    only the first value counts."""

    __slots__ = ("_error", "_lock", "_value", "woken")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.woken = False
        self._value: ValueT | None = None
        self._error: BaseException | None = None

    def wake(self, value: ValueT | None = None, error: BaseException | None = None) -> bool:
        """Deliver a value (or an error); False if it was woken already."""
        with self._lock:
            if self.woken:
                return False
            self.woken = True
            self._value, self._error = value, error
        self._notify()
        return True

    def result(self) -> ValueT:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def peek(self) -> ValueT | None:
        return self._value

    def _notify(self) -> None:
        raise NotImplementedError


class SyncWaiter(Waiter[ValueT]):
    __slots__ = ("_event",)

    def __init__(self) -> None:
        super().__init__()
        self._event = threading.Event()

    def _notify(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until woken; False on timeout."""
        return self._event.wait(timeout)


class AsyncWaiter(Waiter[ValueT]):
    """Woken from any thread; awaited on the event loop that created it."""

    __slots__ = ("_event", "_loop_thread", "_token")

    def __init__(self) -> None:
        super().__init__()
        self._event = anyio.Event()
        self._token = anyio.lowlevel.current_token().native_token
        self._loop_thread = threading.get_ident()

    def _notify(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._event.set()
            return
        try:
            # asyncio: the running loop; trio: a TrioToken.
            schedule = getattr(self._token, "call_soon_threadsafe", None) or self._token.run_sync_soon  # type: ignore[attr-defined]
            schedule(self._event.set)
        except RuntimeError:
            pass  # the loop has closed: nobody is left to wake

    async def wait(self) -> None:
        await self._event.wait()
