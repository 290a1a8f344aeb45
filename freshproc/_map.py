"""``Pool.map``: many calls of one function, streamed back in input order.

Items travel in batches (one request runs many calls, so small calls cost little more
than their pickles) unless a per-call policy (``fresh``, ``max_calls_per_worker``, a
policy ``timeout``) needs one request per call. The requests run concurrently in a
producer; the consumer (an ``async for``, or ``map_sync``'s loop) takes each result as
soon as it and every earlier one are done, and an item's error is raised as soon as its
turn comes. The producer keeps a bounded number of items in flight or waiting to be taken,
so a long input is not pickled all at once.

Where the producer runs:
- under ``async for``: in a task of its own on the same event loop, detached from the
  consumer (an async generator cannot safely suspend inside a task group of its own: a
  consumer that stops early would leave the group to be closed from another task);
- under ``map_sync`` where no event loop runs in the thread: beside the consumer, on one
  event loop made for the map;
- under ``map_sync`` in a thread that runs an event loop: on a thread with a loop of its
  own, while the calling thread waits (as ``call_sync`` would there).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, cast

import anyio

from freshproc import _call, _serialization
from freshproc._asynclib import current_async_library, event_loop_runs_in_this_thread
from freshproc._progress import Progress
from freshproc._waiters import AsyncWaiter, SyncWaiter, Waiter
from freshproc._worker import BATCH, BY_VALUE
from freshproc._workers import WorkerSet

#: How many map items one request carries at most.
MAX_BATCH = 256


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Stop:
    """The producer ended early (it was told to stop, or could not go on)."""


class MapRun:
    """One map: the producer thread and the ordered results it hands to the consumer."""

    def __init__(
        self,
        workers: WorkerSet,
        fn: Callable[..., object],
        items: Iterator[tuple[object, ...]],
        *,
        timeout: float | None,
        batched: bool,
        max_result_size: int | None,
        progress: Progress | None = None,
    ) -> None:
        self._workers = workers
        self._fn = fn
        self._items = items
        self._timeout = timeout
        self._batched = batched
        self._max_result_size = max_result_size
        self._progress = progress
        self._concurrency = workers.options.workers
        self._requests_in_flight = 2 * self._concurrency if batched else self._concurrency
        #: Items read from the input at a time, then split into batches.
        self._chunk = self._requests_in_flight * (MAX_BATCH if batched else 2)
        #: Items started but not yet taken by the consumer, at most.
        self._window = 2 * self._chunk
        self._lock = threading.Lock()
        #: Finished batches of outcomes, by the index of their first item.
        self._results: dict[int, list[object]] = {}
        self._next = 0  # the index the consumer takes next
        self._end: int | None = None  # how many items there are, once known
        self._waiter: Waiter[None] | None = None
        self._room: Waiter[None] | None = None
        self._stopping = False
        self._cancel: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None  # the producer, when it is an asyncio task
        #: Batches spawned whose coroutine has not begun, by their first item's index.
        self._unstarted: dict[int, Coroutine[Any, Any, None]] = {}

    def start_here(self) -> None:
        """Produce in a task of its own on the running event loop, detached from the
        consumer's (an ``async for`` may stop between items, where a task group of its own
        could not be left): an asyncio task, or a trio system task."""
        if current_async_library() == "asyncio":
            self._task = asyncio.get_running_loop().create_task(self.produce())
        else:
            import trio

            trio.lowlevel.spawn_system_task(self.produce)

    def start_thread(self) -> None:
        """Produce on a thread with an event loop of its own (for ``async for``, and for a
        blocking consumer in a thread that runs an event loop)."""
        threading.Thread(target=self._produce, name="freshproc-map", daemon=True).start()

    # -- consumer side ------------------------------------------------------------------

    def _take(self, waiter_factory: Callable[[], Waiter[None]]) -> list[object] | Waiter[None] | type[_Stop]:
        """The next batch of outcomes if it is done; else a registered waiter to wait on."""
        with self._lock:
            batch = self._results.pop(self._next, None)
            if batch is not None:
                self._next += len(batch)
                room, self._room = self._room, None
            elif self._end is not None and self._next >= self._end:
                return _Stop
            else:
                self._waiter = waiter = waiter_factory()
                return waiter
        if room is not None:
            room.wake()
        return batch

    async def next_batch_async(self) -> list[object] | type[_Stop]:
        while True:
            taken = self._take(AsyncWaiter)
            if isinstance(taken, AsyncWaiter):
                await taken.wait()
                continue
            return cast("list[object] | type[_Stop]", taken)

    def next_batch_sync(self) -> list[object] | type[_Stop]:
        while True:
            taken = self._take(SyncWaiter)
            if isinstance(taken, SyncWaiter):
                taken.wait()
                continue
            return cast("list[object] | type[_Stop]", taken)

    def stop(self) -> None:
        """Stop early (the consumer is done or was cancelled): running calls are
        cancelled, which ends their workers; queued items never start."""
        with self._lock:
            self._stopping = True
            cancel = self._cancel
            room, self._room = self._room, None
        if room is not None:
            room.wake()
        if cancel is not None:
            cancel()
        if self._progress is not None:
            self._progress.close()

    # -- producer side (its own thread and event loop) ----------------------------------

    def _produce(self) -> None:
        anyio.run(self.produce)

    async def produce(self) -> None:
        """Run every item's request, handing the outcomes over as they come."""
        try:
            await self._produce_async()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer in order
            self._finish(_Failed(exc))
        else:
            self._finish(None)

    async def _produce_async(self) -> None:
        try:
            await self._spawn_batches()
        finally:
            # A batch's task cancelled before its first step (anyio's task handle awaits the
            # coroutine only once its task runs) leaves the coroutine never awaited: closed
            # here, it is not reported as such when collected.
            unstarted, self._unstarted = self._unstarted, {}
            for coroutine in unstarted.values():
                coroutine.close()

    async def _spawn_batches(self) -> None:
        run_soon = _run_soon_on_this_loop()
        async with anyio.create_task_group() as group:

            def cancel() -> None:
                try:
                    run_soon(group.cancel_scope.cancel)
                except RuntimeError:
                    pass  # the producer has finished

            with self._lock:
                self._cancel = cancel
                if self._stopping:
                    return
            slots = anyio.Semaphore(self._requests_in_flight)
            index = 0
            while chunk := list(itertools.islice(self._items, self._chunk)):
                # Spread a short input over the workers; a long one goes MAX_BATCH at a time.
                size = min(MAX_BATCH, -(-len(chunk) // self._requests_in_flight)) if self._batched else 1
                for start in range(0, len(chunk), size):
                    if not await self._wait_for_room(index):
                        return
                    await slots.acquire()
                    batch = chunk[start : start + size]
                    self._unstarted[index] = coroutine = self._run_batch(index, batch, slots)
                    group.start_soon(_given, coroutine, name=_BATCH_TASK_NAME)
                    index += len(batch)
            with self._lock:
                self._end = index

    async def _wait_for_room(self, index: int) -> bool:
        """Wait until the consumer has taken enough; False if it stopped."""
        while True:
            waiter: AsyncWaiter[None] = AsyncWaiter()
            with self._lock:
                if self._stopping:
                    return False
                if index - self._next < self._window:
                    return True
                self._room = waiter
            await waiter.wait()

    async def _run_batch(self, start: int, batch: list[tuple[object, ...]], slots: anyio.Semaphore) -> None:
        self._unstarted.pop(start, None)
        try:
            outcomes: list[object]
            try:
                if self._batched:
                    reply = await _call.run_async(
                        self._workers,
                        batch_request(self._fn, batch),
                        policy_timeout=None,
                        capture=False,
                        max_result_size=self._max_result_size,
                    )
                    outcomes = batch_outcomes(reply.value)
                else:
                    request = _call.Request(BY_VALUE, self._fn, batch[0], {})
                    reply = await _call.run_async(
                        self._workers,
                        request,
                        policy_timeout=self._timeout,
                        capture=False,
                        max_result_size=self._max_result_size,
                    )
                    outcomes = [reply.value]
            except Exception as exc:  # noqa: BLE001 - raised in order by the consumer
                outcomes = [_Failed(exc)] * len(batch)
            self._deliver(start, outcomes)
        finally:
            slots.release()

    def _deliver(self, start: int, outcomes: list[object]) -> None:
        if self._progress is not None:
            # Before the consumer can see them: once it has every result it closes the progress.
            self._progress.advance(len(outcomes))
        with self._lock:
            self._results[start] = outcomes
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.wake()

    def _finish(self, failure: _Failed | None) -> None:
        with self._lock:
            if failure is not None and not self._stopping:
                # The producer itself failed (not an item): the consumer raises it next.
                self._results[self._next] = [failure]
            if self._end is None or failure is not None:
                self._end = self._next + (1 if failure is not None and not self._stopping else 0)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.wake()


_BATCH_TASK_NAME = f"{MapRun._run_batch.__module__}.{MapRun._run_batch.__qualname__}"


def _given(coroutine: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None]:
    """What ``start_soon`` calls to get a batch's coroutine, made (and tracked) beforehand."""
    return coroutine


def _failed(failure: object) -> _Failed:
    return _Failed(_serialization.exception_from_failure(cast("_serialization.Failure", failure)))


def batch_request(fn: Callable[..., object], batch: Sequence[tuple[object, ...]]) -> _call.Request:
    """One request that calls ``fn`` with each item's arguments in turn, in one worker."""
    return _call.Request(BATCH, fn, tuple(batch), {})


def batch_outcomes(value: object) -> list[object]:
    """A batch reply's outcome per item: its value, or its error wrapped (see ``unwrap``)."""
    return [item if ok else _failed(item) for ok, item in cast("list[tuple[bool, object]]", value)]


def unwrap(outcome: object) -> object:
    """An item's value, or its error raised."""
    if isinstance(outcome, _Failed):
        raise outcome.error
    return outcome


async def iterate(run: MapRun) -> AsyncIterator[Any]:
    run.start_here()
    try:
        while (batch := await run.next_batch_async()) is not _Stop:
            for outcome in cast("list[object]", batch):
                if isinstance(outcome, _Failed):
                    raise outcome.error
                yield outcome
    finally:
        run.stop()


def collect(run: MapRun) -> list[Any]:
    """All the outcomes as a list (the first failure raised). Where no event loop runs in
    this thread, producer and consumer share one here (no thread to hand over to);
    elsewhere the producer has a thread of its own and this thread waits for it."""
    if event_loop_runs_in_this_thread():
        run.start_thread()
        return _collect_from_thread(run)
    return anyio.run(_collect_here, run)


def _collect_from_thread(run: MapRun) -> list[Any]:
    results: list[Any] = []
    try:
        while (batch := run.next_batch_sync()) is not _Stop:
            failure = _extend(results, cast("list[object]", batch))
            if failure is not None:
                raise failure
        return results
    finally:
        run.stop()


async def _collect_here(run: MapRun) -> list[Any]:
    results: list[Any] = []
    failure: BaseException | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(run.produce)
        try:
            while failure is None and (batch := await run.next_batch_async()) is not _Stop:
                failure = _extend(results, cast("list[object]", batch))
        finally:
            run.stop()
    if failure is not None:  # raised out here, not wrapped in the task group's exception group
        raise failure
    return results


def _extend(results: list[Any], batch: list[object]) -> BaseException | None:
    """Append a batch's values in order; the first failure's error instead, if any."""
    for outcome in batch:
        if isinstance(outcome, _Failed):
            return outcome.error
        results.append(outcome)
    return None


def _run_soon_on_this_loop() -> Callable[[Callable[[], object]], object]:
    """How another thread (or this one) schedules a callback on the running loop."""
    if current_async_library() == "asyncio":
        return asyncio.get_running_loop().call_soon_threadsafe
    import trio

    return trio.lowlevel.current_trio_token().run_sync_soon


def items_of(iterables: tuple[Iterable[object], ...]) -> Iterator[tuple[object, ...]]:
    return zip(*iterables, strict=False)
