"""One-shot waiters that any thread may wake: the bridge between the pool's state (shared
by threads and event loops) and whoever waits on it (a blocking caller or a task on an
asyncio or trio loop)."""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, TypeVar

from freshproc._asynclib import current_async_library

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
        """Deliver a value (or an error); False if it was woken already, or if its event
        loop has closed (nobody will ever take the value: give it to someone else)."""
        with self._lock:
            if self.woken:
                return False
            self.woken = True
            self._value, self._error = value, error
        if not self._notify():
            self._value = None
            return False
        return True

    def result(self) -> ValueT:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def peek(self) -> ValueT | None:
        return self._value

    def _notify(self) -> bool:
        """Wake the waiting side; False if it can no longer be woken."""
        raise NotImplementedError


class SyncWaiter(Waiter[ValueT]):
    __slots__ = ("_event",)

    def __init__(self) -> None:
        super().__init__()
        self._event = threading.Event()

    def _notify(self) -> bool:
        self._event.set()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until woken; False on timeout."""
        return self._event.wait(timeout)


class AsyncWaiter(Waiter[ValueT]):
    """Woken from any thread; awaited on the event loop that created it.

    Built on the loop's own primitives (an asyncio future, or a trio event and token):
    one is made for every call that waits, and anyio's portable equivalents cost several
    times more to create. Cancelling the awaiting task works as for any await.
    """

    __slots__ = ("_future", "_loop", "_loop_thread", "_trio_event", "_trio_token")

    def __init__(self) -> None:
        super().__init__()
        self._loop_thread = threading.get_ident()
        self._loop: asyncio.AbstractEventLoop | None
        if current_async_library() == "asyncio":
            self._loop = asyncio.get_running_loop()
            self._future: asyncio.Future[None] = self._loop.create_future()
        else:
            import trio

            self._loop = None
            self._trio_event = trio.Event()
            self._trio_token = trio.lowlevel.current_trio_token()

    def _notify(self) -> bool:
        same_thread = threading.get_ident() == self._loop_thread
        try:
            if self._loop is None:
                if same_thread:
                    self._trio_event.set()
                else:
                    self._trio_token.run_sync_soon(self._trio_event.set)
            elif same_thread:
                self._resolve()
            else:
                self._loop.call_soon_threadsafe(self._resolve)
        except RuntimeError:
            return False  # the loop has closed: nobody is left to wake
        return True

    def _resolve(self) -> None:
        if not self._future.done():  # a cancelled wait leaves a cancelled future
            self._future.set_result(None)

    async def wait(self) -> None:
        if self._loop is None:
            await self._trio_event.wait()
        else:
            await self._future
