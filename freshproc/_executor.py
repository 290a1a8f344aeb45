"""``freshproc.Executor``: a ``concurrent.futures.Executor`` over a freshproc ``Pool``.

Each executor owns a pool and one thread running an asyncio event loop. ``submit`` queues
a work item and wakes the loop; the loop starts at most ``max_workers`` items at once, each
as a task that awaits the pool's own async API (``Pool.run``, or ``Pool.submit`` with one
batch request per ``map`` chunk), so every call takes the pool's round trip and nothing
here touches a worker. A future is RUNNING from the moment its task starts::

    submit ─▶ queue ─▶ loop thread: task ─▶ await pool.run(fn, ...) ─▶ future.set_result
    future.cancel() on a RUNNING future ─▶ task.cancel() ─▶ the pool ends the worker

Cancelling a running call is what ``ProcessPoolExecutor`` cannot do: the future is marked
cancelled at once (``cancel()`` returns True, waiters and callbacks see it as cancelled)
and its task is cancelled on the loop, which the pool turns into ending the worker.

Shutting down stops new work; the loop ends once nothing is queued or running, and its
thread closes the pool. At interpreter exit, executors still open are shut down the way
the standard library's are (hooked before ``atexit``, so before the pools' own clean-up):
queued and running calls finish first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, RUNNING
from typing import Any, ParamSpec, TypeVar, cast

from freshproc import _map, _progress
from freshproc._errors import FreshprocError
from freshproc._pool import Pool

P = ParamSpec("P")
RetT = TypeVar("RetT")


class _Future(concurrent.futures.Future[RetT]):
    """A future whose ``cancel()`` also stops a call that is running."""

    def __init__(self) -> None:
        super().__init__()
        #: Cancels the running call's task (set before the future becomes RUNNING).
        self._stop_call: Callable[[], None] | None = None

    def cancel(self) -> bool:
        """Cancel the call: a queued one never starts; a running one has its worker ended.
        True unless the call has already finished."""
        if self._cancel_running() or super().cancel():
            return True
        return self._cancel_running()  # it may have started between the two checks

    def _cancel_running(self) -> bool:
        with self._condition:
            if self._state != RUNNING:
                return False
            # What set_running_or_notify_cancel does for a future cancelled while queued.
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
            stop, self._stop_call = self._stop_call, None
        self._invoke_callbacks()  # type: ignore[attr-defined]
        if stop is not None:
            stop()
        return True

    def settle(self, value: object = None, error: BaseException | None = None) -> None:
        """Set the outcome, unless the future was cancelled while its call ran."""
        self._stop_call = None
        try:
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(cast("RetT", value))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled: the outcome has nobody to go to


class _Work:
    """One queued call: its future and the coroutine function that makes the call."""

    __slots__ = ("future", "job", "task")

    def __init__(self, future: _Future[Any], job: Callable[[], Awaitable[object]]) -> None:
        self.future = future
        self.job: Callable[[], Awaitable[object]] | None = job
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        job, self.job = self.job, None  # the function and arguments go with the call
        assert job is not None
        try:
            value = await job()
        except asyncio.CancelledError:
            self.future.cancel()  # already cancelled, unless the loop itself is going away
        except BaseException as exc:  # noqa: BLE001 - the future carries it to the caller
            self.future.settle(error=exc)
        else:
            self.future.settle(value)

    def cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel()


class _Runner:
    """The executor's loop thread and its queue, apart from the ``Executor`` object so
    that a dropped executor can be shut down by a finalizer."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._limit = pool.options.workers
        self._lock = threading.Lock()
        self._queue: deque[_Work] = deque()
        self._shutdown = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Loop thread only:
        self._running = 0
        self._idle = asyncio.Event()  # set when shut down with nothing queued or running

    def submit(self, work: _Work) -> None:
        _register_exit_hook()
        with self._lock:
            if _interpreter_exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(work)
            if self._loop is None:
                self._start_thread()
            assert self._loop is not None
            # The loop cannot have ended: it ends only once shut down with an empty queue.
            self._loop.call_soon_threadsafe(self._start_ready)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            self._shutdown = True
            cancelled = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
            loop, thread = self._loop, self._thread
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._end_if_idle)
                except RuntimeError:
                    pass  # closed meanwhile: it has ended already
        for work in cancelled:
            work.future.cancel()
        if thread is None:
            self.pool.close()
        elif wait and thread is not threading.current_thread():
            thread.join()

    # -- on the loop thread -------------------------------------------------------------

    def _start_thread(self) -> None:
        _runners.add(self)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="freshproc-executor", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._idle.wait())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            self.pool.close()

    def _start_ready(self) -> None:
        """Start queued calls while fewer than ``max_workers`` run."""
        loop = self._loop
        assert loop is not None
        while self._running < self._limit:
            with self._lock:
                if not self._queue:
                    break
                work = self._queue.popleft()
            work.future._stop_call = functools.partial(_call_soon, loop, work.cancel_task)
            if not work.future.set_running_or_notify_cancel():
                work.future._stop_call = None  # cancelled while queued: it never runs
                continue
            self._running += 1
            work.task = loop.create_task(work.run())
            work.task.add_done_callback(self._finished)
        self._end_if_idle()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running -= 1
        self._start_ready()

    def _end_if_idle(self) -> None:
        if not self._shutdown:  # set before shutdown() schedules this call: no lock needed to skip
            return
        with self._lock:
            if self._shutdown and not self._queue and self._running == 0:
                self._idle.set()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass  # the loop has closed: no call is running on it


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run in freshproc workers: accepted
    wherever a ``ProcessPoolExecutor`` is (``loop.run_in_executor``, libraries that take
    an executor).

    Functions travel by value where they must, so lambdas and closures work. Cancelling
    the future of a running call (``future.cancel()``, or cancelling the asyncio future
    of ``run_in_executor``) returns True and ends the worker that runs it. A worker that
    dies fails only its call's future, with ``WorkerCrashedError``; the executor carries
    on (there is no ``BrokenProcessPool``).

    Done callbacks run on the executor's own thread (or on the thread adding them to a
    finished future): keep them short, and do not wait there for other futures.

    :param max_workers: how many calls run at once (default: the number of CPUs).
    :param pool_options: any other ``Pool`` option, passed through: ``timeout=`` (a
        longer call's future raises ``CallTimeoutError``), ``fresh=True``, ``preload``,
        ``env``, ``max_memory``, ...
    :raises ValueError: ``max_workers`` is not greater than 0.
    """

    def __init__(self, max_workers: int | None = None, **pool_options: Any) -> None:
        # Pool options are taken as they come (Any): the Pool checks them, and options
        # added to Pool need no change here.
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(f"max_workers must be an int or None, got {max_workers!r}")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if "workers" in pool_options:
            raise TypeError("Executor takes max_workers=, not workers=")
        self._pool = Pool(max_workers, **pool_options)
        self._runner = _Runner(self._pool)
        self._finalizer = weakref.finalize(self, self._runner.shutdown, False, False)

    @property
    def pool(self) -> Pool:
        """The pool the calls run in (for ``stats()`` and ``worker_pids()``)."""
        return self._pool

    def submit(self, fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> concurrent.futures.Future[RetT]:
        """Schedule ``fn(*args, **kwargs)``; a coroutine function runs on an event loop in
        the worker, and the future holds what it returns.

        :raises RuntimeError: the executor was shut down (or the interpreter is exiting).
        """
        return self._submit(functools.partial(self._pool.run, fn, *args, **kwargs))

    def _submit(self, job: Callable[[], Awaitable[object]]) -> _Future[Any]:
        if not self._pool.started:
            # Start the template now, in the caller's thread: at interpreter exit (where
            # pending futures still run) Python 3.12 and later refuse to start processes.
            try:
                self._pool.start()
            except (FreshprocError, OSError):
                pass  # the call meets the same error and fails its future with it
        future: _Future[Any] = _Future()
        self._runner.submit(_Work(future, job))
        return future

    def map(
        self,
        fn: Callable[..., RetT],
        *iterables: Iterable[object],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: _progress.ProgressOption = False,
    ) -> Generator[RetT, None, None]:
        """``fn`` over the items of ``iterables``, as the built-in ``map`` but concurrently.

        All items are submitted now; the results come in order. ``timeout`` (seconds from
        this call) makes ``next()`` raise ``TimeoutError`` for a result not ready by then.
        ``chunksize`` items travel in one request and run one after another in one worker
        (each item's error is still its own); a pool that is ``fresh``, has
        ``max_calls_per_worker`` or a policy ``timeout`` sends one call per request
        whatever ``chunksize`` says, as those policies are per call. Leaving the iteration
        early (an error, the timeout, closing it) cancels the calls not yet taken, ending
        the workers of those that are running.

        :param progress: as for ``Pool.map``: ``True`` for a tqdm bar, or a callable
            given ``(done, total)``.
        :raises ValueError: ``chunksize`` is less than 1.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else timeout + time.monotonic()
        items = list(zip(*iterables, strict=False))
        options = self._pool.options
        per_call = options.fresh or options.max_calls_per_worker is not None or options.timeout is not None
        size = 1 if per_call else chunksize
        tracker = _progress.start(progress, len(items), fn)
        submitted: list[tuple[concurrent.futures.Future[Any], bool]] = []
        try:
            for start in range(0, len(items), size):
                if size == 1:
                    future = self._submit(functools.partial(self._pool.run, fn, *items[start]))
                else:
                    chunk = items[start : start + size]
                    future = self._submit(functools.partial(self._run_batch, _map.batch_request(fn, chunk)))
                if tracker is not None:
                    future.add_done_callback(functools.partial(_advance, tracker, min(size, len(items) - start)))
                submitted.append((future, size > 1))
        except BaseException:
            for earlier, _ in submitted:
                earlier.cancel()
            if tracker is not None:
                tracker.close()
            raise
        return _results(submitted, deadline, tracker)

    async def _run_batch(self, request: Any) -> list[object]:
        return _map.batch_outcomes(await self._pool.submit(request, policy_timeout=None))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more calls; with ``cancel_futures``, cancel the queued ones (running
        calls go on). With ``wait``, return once every call has finished and the pool is
        closed; without, that happens on the executor's thread. Idempotent."""
        self._runner.shutdown(wait, cancel_futures)


def _advance(tracker: _progress.Progress, items: int, future: concurrent.futures.Future[Any]) -> None:
    """A done callback: ``items`` more finished (a cancelled call never finished)."""
    if not future.cancelled():
        tracker.advance(items)


def _results(
    submitted: list[tuple[concurrent.futures.Future[Any], bool]],
    deadline: float | None,
    tracker: _progress.Progress | None,
) -> Generator[Any, None, None]:
    """Yield the map's results in order. Holds no reference to the executor (dropping it
    shuts it down without waiting, and the results still come) nor to results already
    yielded."""
    try:
        submitted.reverse()
        while submitted:
            batched = submitted[-1][1]
            # Popped straight into the call: no local keeps a future (and its result) alive.
            if batched:
                outcomes = _result_or_cancel(submitted.pop()[0], deadline)
                outcomes.reverse()
                while outcomes:
                    yield _map.unwrap(outcomes.pop())
            else:
                yield _result_or_cancel(submitted.pop()[0], deadline)
    finally:
        for future, _ in submitted:
            future.cancel()
        if tracker is not None:
            tracker.close()


def _result_or_cancel(future: concurrent.futures.Future[Any], deadline: float | None) -> Any:
    try:
        return future.result(None if deadline is None else deadline - time.monotonic())
    finally:
        future.cancel()  # a no-op once done; ends the call if it timed out


# -- interpreter exit -----------------------------------------------------------------------

_runners: weakref.WeakSet[_Runner] = weakref.WeakSet()
_interpreter_exiting = False
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _register_exit_hook() -> None:
    """Shut executors down when the main thread ends, before ``atexit`` handlers run (as
    ``concurrent.futures`` does with the same hook): queued and running calls finish."""
    global _exit_hook_registered, _interpreter_exiting
    with _exit_hook_lock:
        if _exit_hook_registered:
            return
        register = cast("Callable[[Callable[[], None]], None]", threading._register_atexit)  # type: ignore[attr-defined]
        try:
            register(_shut_down_at_exit)
        except RuntimeError:  # the first executor call comes while the interpreter exits
            _interpreter_exiting = True
        else:
            _exit_hook_registered = True


def _shut_down_at_exit() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True
    for runner in list(_runners):
        runner.shutdown(wait=True, cancel_futures=False)
