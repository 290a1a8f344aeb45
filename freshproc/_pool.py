"""Pool: the public pool class, a thin facade over the worker set and the round trip.

Data flow (message names from ``_protocol``)::

    Pool.call ─▶ _call.round_trip ──CallRequest──▶ worker     (checked out of _workers.WorkerSet)
                                 ◀─CallResult / CallFailure──
    Pool.map  ─▶ _map.MapRun: many round trips on a producer thread, results in order

Which worker serves a call, and when workers are started and retired, is the worker
set's business (``_workers``, over the bookkeeping in ``_ledger``); how one request
travels is ``_call``'s.
"""

from __future__ import annotations

import os
import sys
import warnings
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload

import anyio
import anyio.to_thread

from freshproc import _call, _map, _progress
from freshproc._environments import PoolDescription
from freshproc._ledger import PoolStats
from freshproc._lifecycle import Lifecycle
from freshproc._policy import PoolOptions
from freshproc._reload import ReloadEvent, ReloadSettings
from freshproc._worker import BY_NAME, BY_VALUE
from freshproc._workers import WorkerSet

P = ParamSpec("P")
RetT = TypeVar("RetT")


class _Default:
    """The pool's own policy timeout (as opposed to None: no timeout)."""


_DEFAULT = _Default()


@dataclass(frozen=True, slots=True)
class Captured(Generic[RetT]):
    """A call's value with the output it wrote (see ``Pool.call_captured``)."""

    value: RetT
    stdout: str
    stderr: str


class Pool(Lifecycle):
    """A pool of isolated worker processes.

    Every worker starts as a fork of a clean template process (never of the caller), so
    it holds only Python's start-up modules, freshproc's worker runtime and ``preload``.
    Use it with ``async with`` or ``with``; the module-level functions use a default pool.
    A pool that is dropped without being closed is closed by a finalizer, with a
    ``ResourceWarning`` naming where it was made.

    :param workers: how many workers may run at once (default: the number of CPUs).
    :param fresh: run every call in a worker that has run no earlier call.
    :param max_calls_per_worker: retire a worker after this many calls.
    :param idle_timeout: seconds an idle worker lives before it exits (None: forever).
    :param timeout: policy timeout in seconds: a longer call raises CallTimeoutError and
        its worker (with every process it started) is ended.
    :param preload: modules imported once into the template every worker starts from.
    :param env: environment variables added for the workers; a ``PYTHONPATH`` here also
        goes in front of the workers' ``sys.path``.
    :param inherit_env: whether the workers get the caller's environment variables too
        (``env`` merged into them); with False, ``env`` is all they get.
    :param cwd: the workers' working directory.
    :param python: the interpreter the workers run under: the path of a Python 3.10+
        executable, or of a virtual environment's folder. The workers then have that
        interpreter's ``sys.path`` and site-packages; freshproc need not be installed
        there. Under another Python minor version, calls by name and plain data work;
        anything that would be pickled by value (a lambda) raises FreshprocError.
    :param sys_path: folders put first on the workers' ``sys.path``.
    :param max_memory: recycle a worker whose own memory after a call exceeds this (bytes,
        or a size such as ``"512MB"``). The resident size is checked first; only over the
        limit is the worker's unique memory (USS) read to confirm, so the template's pages
        that every worker shares (a large ``preload``) do not count.
    :param memory_limit: hard address-space cap inside each worker: allocations beyond it
        raise MemoryError in the call, and the worker is replaced afterwards.
    :param capture_output: capture each call's stdout and stderr instead of forwarding them
        to the caller's: failed calls carry it as ``exc.captured_output`` (and a note),
        crashed and timed-out ones too, and ``call_captured``/``run_captured`` return it
        with the value.
    :param grace_period: seconds between SIGTERM and SIGKILL when a call is ended.
    :param max_result_size: the largest pickled result (bytes or a size such as "1GB") a
        worker sends back; a larger one raises SerializationError and the worker carries on.
        For ``map`` it applies to each item's result.
    :param backend: where workers come from (``"local"``: forks of a template process on
        this machine).
    :param pipeline: how many calls one worker may hold at once when every worker is busy
        (the one it runs and those queued behind it, sent ahead so that it never waits for
        the caller between calls); 1 (the default) queues none. 2 is enough to hide that
        round trip (a deeper queue only delays the calls at its back), and helps only where
        the caller has CPU to spare while workers wait for it: on two CPUs, running the
        caller and two workers, it made many small concurrent calls slower, not faster.
        A queued call's arguments are pickled when it is queued (not when it starts). Calls with a timeout, ``map`` batches, and pools with ``fresh``,
        ``max_calls_per_worker`` or ``max_memory`` keep one call per worker whatever this
        says.
    :param reload: hot reload: a call never runs in a worker that loaded a file (a module,
        a package's file, a shared object) changed on disk before the call was made. Such
        workers are retired (idle ones at once, busy ones when their call ends), and the
        template is restarted when a file it loaded (``preload``) changed. False: workers
        keep what they loaded until ``recycle()``.
    :param on_reload: called with a ``ReloadEvent`` after each reload (on the thread of the
        call that noticed it); each reload is also an INFO record on the ``freshproc`` logger.
    :param reload_ignore: path prefixes whose files are not watched (default: the standard
        library and the system's shared libraries; site-packages are always watched then).
        ``()`` watches everything.
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        fresh: bool = False,
        max_calls_per_worker: int | None = None,
        idle_timeout: float | None = 300.0,
        timeout: float | None = None,
        preload: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        max_memory: int | str | None = None,
        memory_limit: int | str | None = None,
        capture_output: bool = False,
        grace_period: float = 1.0,
        max_result_size: int | str | None = None,
        backend: str = "local",
        pipeline: int = 1,
        python: str | os.PathLike[str] | None = None,
        sys_path: Iterable[str | os.PathLike[str]] = (),
        inherit_env: bool = True,
        reload: bool = True,
        on_reload: Callable[[ReloadEvent], object] | None = None,
        reload_ignore: Iterable[str] | None = None,
    ) -> None:
        self._options = PoolOptions.build(
            workers=workers,
            fresh=fresh,
            max_calls_per_worker=max_calls_per_worker,
            idle_timeout=idle_timeout,
            timeout=timeout,
            preload=preload,
            env=env,
            cwd=cwd,
            max_memory=max_memory,
            memory_limit=memory_limit,
            capture_output=capture_output,
            grace_period=grace_period,
            max_result_size=max_result_size,
            backend=backend,
            pipeline=pipeline,
            python=python,
            sys_path=sys_path,
            inherit_env=inherit_env,
        )
        self._workers = WorkerSet(
            self._options, reload=ReloadSettings.build(on_reload, reload_ignore) if reload else None
        )
        caller = sys._getframe(1)
        made_at = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        self._finalizer = weakref.finalize(self, _close_dropped, self._workers, made_at)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def options(self) -> PoolOptions:
        return self._options

    @property
    def closed(self) -> bool:
        return self._workers.closed

    @property
    def started(self) -> bool:
        """Whether the template runs (``start`` ran, or a call started it)."""
        return self._workers.started

    def start(self) -> None:
        """Start the template (blocking); calls do this on demand."""
        self._workers.start()

    async def start_async(self) -> None:
        await self._workers.start_async()

    # What `with` and `async with` start with (see ``_lifecycle``).
    _start_on_enter = start
    _start_on_aenter = start_async

    def close(self) -> None:
        """End every worker and the template, and wait for them. Idempotent.

        Calls still running raise PoolClosedError; calls waiting for a worker too.
        """
        self._finalizer.detach()
        self._workers.close()

    def recycle(self) -> None:
        """Replace every worker before it serves another call: idle ones now, busy ones
        when their call ends. Replacements are started ahead of demand."""
        self._workers.recycle()

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters (see ``PoolStats`` for how they add up)."""
        return self._workers.stats()

    def watched_files(self) -> frozenset[str]:
        """The files the pool's workers and template loaded code from and that hot reload
        watches now (empty with ``reload=False``), for diagnostics."""
        return self._workers.watched_files()

    def worker_pids(self) -> list[int]:
        """The pids of the workers alive now (for diagnostics and tests)."""
        return self._workers.pids()

    @property
    def template_pid(self) -> int | None:
        return self._workers.template_pid

    def describe(self) -> PoolDescription:
        """What the workers run under, as the template reported at start (starting it
        if needed): interpreter, Python version, ``sys.path``, environment variables set
        and removed, cwd, platform facts. For logs and bug reports."""
        return self._workers.describe()

    async def describe_async(self) -> PoolDescription:
        return await anyio.to_thread.run_sync(self._workers.describe)

    # -- calls ------------------------------------------------------------------------

    async def call(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
        """Import ``module`` in a worker, resolve ``attr`` (dotted) and call it with the
        arguments, keywords included.

        Cancelling the call (anyio cancellation) ends its worker and re-raises the native
        cancellation; the pool starts a replacement.
        """
        return (await self._run_async(_call.Request(BY_NAME, (module, attr), args, kwargs))).value

    def call_sync(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
        """Blocking ``call``. KeyboardInterrupt while waiting ends the worker and propagates."""
        return self._run_blocking(_call.Request(BY_NAME, (module, attr), args, kwargs)).value

    @overload
    async def run(self, fn: Callable[P, Coroutine[Any, Any, RetT]], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    @overload
    async def run(self, fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    async def run(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` in a worker; ``fn`` travels by value where it must
        (lambdas, closures, ``__main__``). A coroutine function runs on an event loop in
        the worker, of the same library (asyncio or trio) as the caller's.
        Cancellation ends the worker, as for ``call``."""
        return (await self._run_async(_call.Request(BY_VALUE, fn, args, kwargs))).value

    @overload
    def run_sync(self, fn: Callable[P, Coroutine[Any, Any, RetT]], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    @overload
    def run_sync(self, fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    def run_sync(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Blocking ``run``."""
        return self._run_blocking(_call.Request(BY_VALUE, fn, args, kwargs)).value

    async def call_captured(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Captured[Any]:
        """``call``, returning the value with the output the call wrote."""
        return _captured(await self._run_async(_call.Request(BY_NAME, (module, attr), args, kwargs), capture=True))

    def call_captured_sync(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Captured[Any]:
        """Blocking ``call_captured``."""
        return _captured(self._run_blocking(_call.Request(BY_NAME, (module, attr), args, kwargs), capture=True))

    @overload
    async def run_captured(
        self, fn: Callable[P, Coroutine[Any, Any, RetT]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Captured[RetT]: ...
    @overload
    async def run_captured(self, fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> Captured[RetT]: ...
    async def run_captured(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Captured[Any]:
        """``run``, returning the value with the output the call wrote."""
        return _captured(await self._run_async(_call.Request(BY_VALUE, fn, args, kwargs), capture=True))

    @overload
    def run_captured_sync(
        self, fn: Callable[P, Coroutine[Any, Any, RetT]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Captured[RetT]: ...
    @overload
    def run_captured_sync(self, fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> Captured[RetT]: ...
    def run_captured_sync(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Captured[Any]:
        """Blocking ``run_captured``."""
        return _captured(self._run_blocking(_call.Request(BY_VALUE, fn, args, kwargs), capture=True))

    async def map(
        self,
        fn: Callable[..., Awaitable[RetT] | RetT],
        /,
        *iterables: Iterable[object],
        progress: _progress.ProgressOption = False,
    ) -> AsyncGenerator[RetT, None]:
        """Apply ``fn`` to the items of ``iterables`` in workers, concurrently; yield the
        results in input order, each as soon as it and every earlier one are done. An
        item's error is raised as soon as its turn comes.

        Items travel in batches, so that many small calls cost little more than their
        pickles. A pool that is ``fresh``, has ``max_calls_per_worker`` or a policy
        ``timeout`` sends one call per request, as those policies are per call. Leaving
        the loop early, or cancelling it, cancels the calls still running (their workers
        are ended) and starts no more.

        :param progress: ``True`` shows a progress bar (items done, rate, time left) through
            tqdm when it is installed (``freshproc[progress]``); a callable is called with
            ``(done, total)`` each time items finish, ``total`` being None when the inputs
            have no length. It is called on the thread that runs the map's calls: keep it
            quick; an exception from it is logged and ends the reporting, not the map.
        """
        async for value in _map.iterate(self._map_run(fn, iterables, progress)):
            yield value

    def map_sync(
        self,
        fn: Callable[..., Awaitable[RetT] | RetT],
        /,
        *iterables: Iterable[object],
        progress: _progress.ProgressOption = False,
    ) -> list[RetT]:
        """Blocking ``map``: a list of the results, in input order. Works wherever
        ``call_sync`` does, a thread that runs an event loop included. ``progress`` is
        as for ``map``."""
        _call.warn_if_loop_thread(stacklevel=2)
        return _map.collect(self._map_run(fn, iterables, progress))

    def _map_run(
        self, fn: Callable[..., object], iterables: tuple[Iterable[object], ...], progress: _progress.ProgressOption
    ) -> _map.MapRun:
        if self._workers.closed:
            raise self._workers.closed_error()
        options = self._options
        return _map.MapRun(
            self._workers,
            fn,
            _map.items_of(iterables),
            timeout=options.timeout,
            batched=not options.fresh and options.max_calls_per_worker is None and options.timeout is None,
            max_result_size=options.max_result_size,
            progress=_progress.start(progress, _progress.total_of(iterables), fn),
        )

    async def submit(self, request: _call.Request, *, policy_timeout: float | None) -> object:
        """Run a prepared request (used by ``isolated``) with its own policy timeout."""
        return (await self._run_async(request, policy_timeout=policy_timeout)).value

    def submit_sync(self, request: _call.Request, *, policy_timeout: float | None) -> object:
        return self._run_blocking(request, policy_timeout=policy_timeout).value

    # -- one request ------------------------------------------------------------------

    async def _run_async(
        self, request: _call.Request, *, capture: bool = False, policy_timeout: float | _Default | None = _DEFAULT
    ) -> _call.Reply:
        options = self._options
        return await _call.run_async(
            self._workers,
            request,
            policy_timeout=options.timeout if isinstance(policy_timeout, _Default) else policy_timeout,
            capture=capture or options.capture_output,
            max_result_size=options.max_result_size,
        )

    def _run_blocking(
        self, request: _call.Request, *, capture: bool = False, policy_timeout: float | _Default | None = _DEFAULT
    ) -> _call.Reply:
        options = self._options
        return _call.run_blocking(
            self._workers,
            request,
            timeout=options.timeout if isinstance(policy_timeout, _Default) else policy_timeout,
            capture=capture or options.capture_output,
            max_result_size=options.max_result_size,
        )


def _captured(reply: _call.Reply) -> Captured[Any]:
    output = reply.captured
    assert output is not None
    return Captured(reply.value, output.stdout, output.stderr)


def _close_dropped(workers: WorkerSet, made_at: str) -> None:
    """The finalizer of a pool dropped without ``close()``: end its processes without
    waiting (this may run on any thread, at any allocation), and say so."""
    if workers.closed:
        return
    workers.abandon()
    warnings.warn(f"unclosed freshproc.Pool made at {made_at}", ResourceWarning, stacklevel=2)
