"""On a local Dask cluster (workloads K1-K3): freshproc's DaskPool, blocking and async,
against plain ``client.submit``, ``client.submit`` of scattered data, and ``client.submit``
of a function that runs the call in a ``ProcessPoolExecutor(max_tasks_per_child=1)`` kept
in each Dask worker (Dask's nearest way to a fresh process per call).

Each job starts its own ``LocalCluster`` (2 worker processes of 1 thread, loopback, no
dashboard) before the timing, and closes it after.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar, cast

import dask.config
from distributed import Client, LocalCluster

import freshproc.dask
from benchmarks.contenders.base import Contender, Processes
from benchmarks.contenders.pooled import AsyncPool, AsyncPoolContender, BlockingPool, BlockingPoolContender, gather
from benchmarks.workloads import PoolKind

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")

#: The scheduler's HTTP server: ``dashboard_address=None`` still serves it on port 8787
#: (with a warning when that port is taken), so a free port on loopback instead.
LOOPBACK_ANY_PORT = "127.0.0.1:0"
#: One executor per Dask worker process, made on its first task (see ``in_fresh_process``).
_executors: dict[str, ProcessPoolExecutor] = {}


def _cluster() -> LocalCluster:
    # Dask's worker processes are daemonic by default, and a daemonic process may not start
    # multiprocessing children: the ProcessPoolExecutor contender needs this (freshproc does
    # not: its template is a subprocess, not a multiprocessing child).
    dask.config.set({"distributed.worker.daemon": False})
    return LocalCluster(
        host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True, dashboard_address=LOOPBACK_ANY_PORT
    )


def in_fresh_process(fn: Callable[[Any], object], arg: object) -> object:
    """(In a Dask worker.) Run ``fn(arg)`` in a process that ran no earlier call."""
    executor = _executors.get("fresh")
    if executor is None:
        # (max_tasks_per_child is Python 3.11+: this contender is n/a before.)
        fresh_only: dict[str, Any] = {"max_tasks_per_child": 1}
        executor = _executors["fresh"] = ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("forkserver"), **fresh_only
        )
    return executor.submit(fn, arg).result()


class _DaskPoolBlocking:
    def __init__(self, kind: PoolKind) -> None:
        self._cluster = _cluster()
        self._pool = freshproc.dask.DaskPool(self._cluster, workers=1, fresh=kind != "warm")
        self._pool.start()

    def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT:
        return self._pool.run_sync(fn, arg)

    def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]:
        return self._pool.map_sync(fn, args)

    def processes(self) -> Processes:
        return Processes([])

    def close(self) -> None:
        self._pool.close()
        self._cluster.close()


class _DaskPoolAsync:
    def __init__(self, kind: PoolKind) -> None:
        self._cluster = _cluster()
        self._pool = freshproc.dask.DaskPool(self._cluster, workers=1, fresh=kind != "warm")

    async def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT:
        return await self._pool.run(fn, arg)

    async def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]:
        return await gather(lambda arg: self._pool.run(fn, arg), args)

    def processes(self) -> Processes:
        return Processes([])

    async def aclose(self) -> None:
        await self._pool.aclose()
        self._cluster.close()


class _Submit:
    """Plain ``client.submit``: ``scatter`` sends the argument as Dask data first;
    ``fresh`` runs the call through ``in_fresh_process``."""

    def __init__(self, *, scatter: bool = False, fresh: bool = False) -> None:
        self._cluster = _cluster()
        self._client = Client(self._cluster)
        self._scatter = scatter
        self._fresh = fresh

    def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT:
        data: Any = self._client.scatter(arg) if self._scatter else arg
        if self._fresh:
            future = self._client.submit(in_fresh_process, fn, data, pure=False)
        else:
            future = self._client.submit(fn, data, pure=False)
        return cast("ResultT", future.result())

    def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]:
        return [self.call(fn, arg) for arg in args]

    def processes(self) -> Processes:
        return Processes([])

    def close(self) -> None:
        self._client.close()
        self._cluster.close()


class DaskPoolBlockingContender(BlockingPoolContender):
    def open(self, kind: PoolKind) -> BlockingPool:
        return _DaskPoolBlocking(kind)


class DaskPoolAsyncContender(AsyncPoolContender):
    backend = "asyncio"

    async def open(self, kind: PoolKind) -> AsyncPool:
        return _DaskPoolAsync(kind)


class SubmitContender(BlockingPoolContender):
    def __init__(self, *, scatter: bool = False, fresh: bool = False) -> None:
        self._scatter = scatter
        self._fresh = fresh

    def open(self, kind: PoolKind) -> BlockingPool:
        return _Submit(scatter=self._scatter, fresh=self._fresh)


def build(name: str) -> Contender:
    if name == "freshproc-dask-blocking":
        return DaskPoolBlockingContender()
    if name == "freshproc-dask-asyncio":
        return DaskPoolAsyncContender()
    if name == "dask-submit":
        return SubmitContender()
    if name == "dask-submit-scatter":
        return SubmitContender(scatter=True)
    if name == "dask-submit-ppe":
        return SubmitContender(fresh=True)
    raise KeyError(name)
