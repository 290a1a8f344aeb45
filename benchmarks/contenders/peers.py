"""The peers: concurrent.futures, loky, pebble, multiprocess and anyio.to_process.

Each peer library is imported only when its pool is opened, so a missing one fails its
own jobs (reported as n/a) and nothing else. "fresh" pools recycle a worker after every
task, the nearest each peer has to freshproc's ``fresh=True``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import anyio
import anyio.to_process

from benchmarks import memory
from benchmarks.contenders.base import Processes
from benchmarks.contenders.pooled import AsyncPoolContender, BlockingPoolContender, gather
from benchmarks.workloads import PoolKind

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")

#: Submit ``fn(arg)``; return what waits for its result.
Submit = Callable[[Callable[[Any], Any], Any], Callable[[], Any]]


class _SubmitPool:
    """A blocking pool from a submit function: ``call`` waits at once, ``call_many``
    submits everything before waiting for anything (or hands it all to ``map_all``)."""

    def __init__(
        self,
        submit: Submit,
        shutdown: Callable[[], None],
        map_all: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]] | None = None,
    ) -> None:
        self._submit = submit
        self._shutdown = shutdown
        self._map_all = map_all

    def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT:
        result: ResultT = self._submit(fn, arg)()
        return result

    def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]:
        if self._map_all is not None:
            return self._map_all(fn, args)
        waits = [self._submit(fn, arg) for arg in args]
        return [wait() for wait in waits]

    def processes(self) -> Processes:
        return memory.descendant_processes()

    def close(self) -> None:
        self._shutdown()


class Executor(BlockingPoolContender):
    """concurrent.futures.ProcessPoolExecutor with a start method; ``submit().result()``.
    Fresh pools use ``max_tasks_per_child=1`` (Python 3.11+)."""

    def __init__(self, method: str) -> None:
        self.method = method

    def open(self, kind: PoolKind) -> _SubmitPool:
        options: dict[str, Any] = {} if kind == "warm" else {"max_tasks_per_child": 1}
        executor = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(self.method), **options)
        return _SubmitPool(lambda fn, arg: executor.submit(fn, arg).result, executor.shutdown)


class Loky(BlockingPoolContender):
    """loky's ``get_reusable_executor(max_workers=2)``; ``submit().result()``. No fresh mode."""

    def open(self, kind: PoolKind) -> _SubmitPool:
        from loky import get_reusable_executor  # optional peer

        if kind != "warm":
            raise ValueError("loky cannot recycle a worker after every task")
        executor = get_reusable_executor(max_workers=2)
        return _SubmitPool(lambda fn, arg: executor.submit(fn, arg).result, executor.shutdown)


class Pebble(BlockingPoolContender):
    """pebble's ``ProcessPool(max_workers=2)`` (default start method); ``schedule().result()``.
    Fresh pools use ``max_tasks=1``."""

    def open(self, kind: PoolKind) -> _SubmitPool:
        from pebble import ProcessPool  # optional peer

        pool: Any = ProcessPool(max_workers=2, max_tasks=0 if kind == "warm" else 1)

        def shutdown() -> None:
            pool.close()
            pool.join()

        return _SubmitPool(lambda fn, arg: pool.schedule(fn, args=(arg,)).result, shutdown)


class Multiprocess(BlockingPoolContender):
    """multiprocess's ``Pool(2)`` (default start method); ``apply_async().get()``, which is
    what ``apply`` does. Fresh pools use ``maxtasksperchild=1``. With ``chunked``, batches
    go through ``Pool.map`` and its default chunking instead."""

    def __init__(self, *, chunked: bool = False) -> None:
        self.chunked = chunked

    def open(self, kind: PoolKind) -> _SubmitPool:
        import multiprocess  # optional peer

        pool = multiprocess.Pool(2, maxtasksperchild=None if kind == "warm" else 1)

        def shutdown() -> None:
            pool.close()
            pool.join()

        map_all = (lambda fn, args: list(pool.map(fn, args))) if self.chunked else None
        return _SubmitPool(lambda fn, arg: pool.apply_async(fn, (arg,)).get, shutdown, map_all)


class _AnyioPool:
    def __init__(self) -> None:
        self._limiter = anyio.CapacityLimiter(2)

    async def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT:
        return await anyio.to_process.run_sync(fn, arg, limiter=self._limiter)

    async def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]:
        return await gather(lambda arg: self.call(fn, arg), args)

    def processes(self) -> Processes:
        return memory.descendant_processes()

    async def aclose(self) -> None:
        """anyio ends its workers when the event loop finishes."""


class AnyioToProcess(AsyncPoolContender):
    """``anyio.to_process.run_sync`` with a limiter of 2. No fresh mode."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    async def open(self, kind: PoolKind) -> _AnyioPool:
        if kind != "warm":
            raise ValueError("anyio.to_process cannot recycle a worker after every task")
        return _AnyioPool()


def build(name: str) -> BlockingPoolContender | AsyncPoolContender:
    match name:
        case "ppe-spawn" | "ppe-forkserver":
            return Executor(name.removeprefix("ppe-"))
        case "loky":
            return Loky()
        case "pebble":
            return Pebble()
        case "multiprocess":
            return Multiprocess()
        case "multiprocess-map":
            return Multiprocess(chunked=True)
        case "anyio-asyncio" | "anyio-trio":
            return AnyioToProcess(name.removeprefix("anyio-"))
    raise ValueError(f"unknown peer {name!r}")
