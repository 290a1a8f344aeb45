"""Contenders that are pools: the timing loops, run over a pool's ``call``/``call_many``.

The steps exist twice, blocking and async, because an async pool must be timed from inside
its event loop; both are the same: open, warm up, time, check the result, close.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import anyio

from benchmarks import memory
from benchmarks.contenders.base import Contender, Measurement, Processes
from benchmarks.timing import repeat, repeat_async
from benchmarks.workloads import MIB, Plan, PoolKind, Workload, task_call

ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")
#: What ``task_call`` returns: the function, its argument, a check of the result.
TaskCall = tuple[Callable[[Any], object], object, Callable[[object], bool]]


class BlockingPool(Protocol):
    def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT: ...
    def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]: ...
    def processes(self) -> Processes: ...
    def close(self) -> None: ...


class AsyncPool(Protocol):
    async def call(self, fn: Callable[[ArgT], ResultT], arg: ArgT) -> ResultT: ...
    async def call_many(self, fn: Callable[[ArgT], ResultT], args: Sequence[ArgT]) -> list[ResultT]: ...
    def processes(self) -> Processes: ...
    async def aclose(self) -> None: ...


class BlockingPoolContender(Contender):
    @abstractmethod
    def open(self, kind: PoolKind) -> BlockingPool:
        """A pool of 2 workers of the given kind, ready for calls."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        call = task_call(workload.task, plan)
        start = time.perf_counter()
        pool = self.open(workload.pool)
        try:
            measurement = self._measure_open(pool, workload, plan, call, start)
            self.inspect(pool)
            return measurement
        finally:
            pool.close()

    def inspect(self, pool: BlockingPool) -> None:
        """Checks on ``pool`` after it was measured (untimed); none by default."""

    @staticmethod
    def _measure_open(pool: BlockingPool, workload: Workload, plan: Plan, call: TaskCall, start: float) -> Measurement:
        fn, arg, check = call
        if workload.kind == "open":
            _verify(check, pool.call(fn, arg))
            return Measurement([time.perf_counter() - start])
        if workload.kind == "batch":
            _verify_all(check, pool.call_many(fn, [arg] * plan.warmup))
            args = [arg] * plan.calls
            samples, results = repeat(lambda: pool.call_many(fn, args), plan.repeats, plan)
            _verify_all(check, results)
            return Measurement(samples)
        for _ in range(plan.warmup):
            _verify(check, pool.call(fn, arg))
        if workload.kind == "memory":
            return _memory(pool.processes())
        samples, result = repeat(lambda: pool.call(fn, arg), plan.calls, plan)
        _verify(check, result)
        return Measurement(samples)


class AsyncPoolContender(Contender):
    backend: str

    @abstractmethod
    async def open(self, kind: PoolKind) -> AsyncPool:
        """A pool of 2 workers of the given kind, ready for calls."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        return anyio.run(self._measure, workload, plan, backend=self.backend)

    async def _measure(self, workload: Workload, plan: Plan) -> Measurement:
        call = task_call(workload.task, plan)
        start = time.perf_counter()
        pool = await self.open(workload.pool)
        try:
            measurement = await self._measure_open(pool, workload, plan, call, start)
            await self.inspect(pool)
            return measurement
        finally:
            with anyio.CancelScope(shield=True):
                await pool.aclose()

    async def inspect(self, pool: AsyncPool) -> None:
        """Checks on ``pool`` after it was measured (untimed); none by default."""

    @staticmethod
    async def _measure_open(
        pool: AsyncPool, workload: Workload, plan: Plan, call: TaskCall, start: float
    ) -> Measurement:
        fn, arg, check = call
        if workload.kind == "open":
            _verify(check, await pool.call(fn, arg))
            return Measurement([time.perf_counter() - start])
        if workload.kind == "batch":
            _verify_all(check, await pool.call_many(fn, [arg] * plan.warmup))
            args = [arg] * plan.calls
            samples, results = await repeat_async(lambda: pool.call_many(fn, args), plan.repeats, plan)
            _verify_all(check, results)
            return Measurement(samples)
        for _ in range(plan.warmup):
            _verify(check, await pool.call(fn, arg))
        if workload.kind == "memory":
            return _memory(pool.processes())
        samples, result = await repeat_async(lambda: pool.call(fn, arg), plan.calls, plan)
        _verify(check, result)
        return Measurement(samples)


async def gather(call: Callable[[ArgT], Awaitable[ResultT]], args: Sequence[ArgT]) -> list[ResultT]:
    """Start ``call(arg)`` for every argument at once, each its own task; the results in order."""
    results: dict[int, ResultT] = {}

    async def one(index: int, arg: ArgT) -> None:
        results[index] = await call(arg)

    async with anyio.create_task_group() as group:
        for index, arg in enumerate(args):
            group.start_soon(one, index, arg)
    return [results[index] for index in range(len(args))]


def _memory(processes: Processes) -> Measurement:
    if not processes.workers:
        raise RuntimeError("no worker process found")
    samples = [float(memory.pss(pid)) for pid in processes.workers]
    extras: dict[str, float] = {}
    if processes.helpers:
        names = ", ".join(sorted(name for name, _ in processes.helpers))
        extras[f"PSS of helper processes ({names}), MiB in total"] = (
            sum(memory.pss(pid) for _, pid in processes.helpers) / MIB
        )
    return Measurement(samples, [f"{len(processes.workers)} worker(s) alive"], extras)


def _verify(check: Callable[[object], bool], result: object) -> None:
    if not check(result):
        raise AssertionError(f"wrong result: {result!r:.80}")


def _verify_all(check: Callable[[object], bool], results: Sequence[Any]) -> None:
    for result in results:
        _verify(check, result)
