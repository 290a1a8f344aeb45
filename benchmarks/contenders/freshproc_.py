"""freshproc, used blocking and async (asyncio and trio).

After measuring, each contender asks a worker which freshproc modules it runs: they must
come from the package this job imported (a baseline's, or the current one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import freshproc
from benchmarks import provenance, tasks
from benchmarks.contenders.base import Processes
from benchmarks.contenders.pooled import AsyncPool, AsyncPoolContender, BlockingPool, BlockingPoolContender, gather
from benchmarks.tasks import freshproc_modules
from benchmarks.workloads import PoolKind

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


#: The callers that share a batch in the threaded blocking contender.
THREADS = 16
#: The queue depth of the pipelined contenders (``Pool(pipeline=...)``).
PIPELINE_DEPTH = 2


def _new_pool(kind: PoolKind, pipeline: int = 1, *, reload: bool = True, preload_tasks: bool = False) -> freshproc.Pool:
    preload = ["numpy"] if kind == "fresh_numpy" else []
    if preload_tasks:
        # What the peers' fresh processes have because they fork the caller, which
        # imported the task's module: the template imports it once, no worker has to.
        preload.append(tasks.__name__)
    if pipeline == 1:
        return freshproc.Pool(2, fresh=kind != "warm", preload=preload, reload=reload)
    try:
        return freshproc.Pool(2, fresh=kind != "warm", preload=preload, reload=reload, pipeline=pipeline)  # type: ignore[call-arg, unused-ignore]
    except TypeError:  # a baseline from before pipelining: its plain pool
        return freshproc.Pool(2, fresh=kind != "warm", preload=preload, reload=reload)


def _processes(pool: freshproc.Pool) -> Processes:
    template = pool.template_pid
    return Processes(pool.worker_pids(), [("template", template)] if template is not None else [])


class _Blocking:
    def __init__(self, pool: freshproc.Pool) -> None:
        self._pool = pool

    def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT:
        return self._pool.run_sync(fn, arg)

    def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]:
        return self._pool.map_sync(fn, args)

    def processes(self) -> Processes:
        return _processes(self._pool)

    def close(self) -> None:
        self._pool.close()


class _Threads(_Blocking):
    """Per-call submission from blocking code: ``THREADS`` threads share the batch, each
    calling ``run_sync`` one call after the other."""

    def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]:
        results: list[ResultT | None] = [None] * len(args)

        def caller(start: int) -> None:
            for index in range(start, len(args), THREADS):
                results[index] = self._pool.run_sync(fn, args[index])

        threads = [threading.Thread(target=caller, args=(start,)) for start in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return cast("list[ResultT]", results)


class _Async:
    def __init__(self, pool: freshproc.Pool, *, use_map: bool) -> None:
        self._pool = pool
        self._use_map = use_map

    async def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT:
        return await self._pool.run(fn, arg)

    async def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]:
        """Every call its own task, all started at once; or ``pool.map``."""
        if self._use_map:
            return [result async for result in self._pool.map(fn, args)]
        return await gather(lambda arg: self._pool.run(fn, arg), args)

    def processes(self) -> Processes:
        return _processes(self._pool)

    async def aclose(self) -> None:
        await self._pool.aclose()


class FreshprocBlocking(BlockingPoolContender):
    """``with Pool(2) as pool``: ``run_sync`` one at a time, ``map_sync`` for batches (or,
    ``threads``, 16 threads of ``run_sync``). ``reload=False`` is the reference for what hot
    reload costs."""

    def __init__(
        self, *, threads: bool = False, pipeline: int = 1, reload: bool = True, preload_tasks: bool = False
    ) -> None:
        self.threads = threads
        self.pipeline = pipeline
        self.reload = reload
        self.preload_tasks = preload_tasks

    def open(self, kind: PoolKind) -> _Blocking:
        pool = _new_pool(kind, self.pipeline, reload=self.reload, preload_tasks=self.preload_tasks)
        pool.start()
        return _Threads(pool) if self.threads else _Blocking(pool)

    def inspect(self, pool: BlockingPool) -> None:
        _check_worker(pool.call(freshproc_modules, provenance.PACKAGE))


class FreshprocAsync(AsyncPoolContender):
    """``async with Pool(2) as pool``: ``await pool.run``, a task per call for batches."""

    def __init__(self, backend: str, *, use_map: bool = False, pipeline: int = 1) -> None:
        self.backend = backend
        self.use_map = use_map
        self.pipeline = pipeline

    async def open(self, kind: PoolKind) -> _Async:
        pool = _new_pool(kind, self.pipeline)
        await pool.start_async()
        return _Async(pool, use_map=self.use_map)

    async def inspect(self, pool: AsyncPool) -> None:
        _check_worker(await pool.call(freshproc_modules, provenance.PACKAGE))


def _check_worker(modules: dict[str, str | None]) -> None:
    provenance.check(modules, provenance.imported_package(), "worker")


def build(name: str) -> BlockingPoolContender | AsyncPoolContender:
    pipeline = PIPELINE_DEPTH if name.endswith("-pipelined") else 1
    name = name.removesuffix("-pipelined")
    if name == "freshproc-blocking":
        return FreshprocBlocking()
    if name == "freshproc-threads":
        return FreshprocBlocking(threads=True, pipeline=pipeline)
    if name == "freshproc-blocking-no-reload":
        return FreshprocBlocking(reload=False)
    if name == "freshproc-blocking-preloaded":
        return FreshprocBlocking(preload_tasks=True)
    if name == "freshproc-asyncio-map":
        return FreshprocAsync("asyncio", use_map=True)
    return FreshprocAsync(name.removeprefix("freshproc-"), pipeline=pipeline)
