"""The timing loops: repeat an operation and keep how long each run took."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from benchmarks.workloads import Plan

ResultT = TypeVar("ResultT")


def _done(samples: list[float], count: int, plan: Plan, now: float, deadline: float) -> bool:
    return len(samples) >= count or (len(samples) >= plan.min_samples and now >= deadline)


def repeat(operation: Callable[[], ResultT], count: int, plan: Plan) -> tuple[list[float], ResultT]:
    """Time ``operation`` up to ``count`` times, or fewer (at least ``plan.min_samples``)
    once ``plan.budget`` seconds have passed. Returns the durations and the last result."""
    samples: list[float] = []
    deadline = time.perf_counter() + plan.budget
    while True:
        start = time.perf_counter()
        result = operation()
        end = time.perf_counter()
        samples.append(end - start)
        if _done(samples, count, plan, end, deadline):
            return samples, result


async def repeat_async(
    operation: Callable[[], Awaitable[ResultT]], count: int, plan: Plan
) -> tuple[list[float], ResultT]:
    """``repeat`` for an awaitable operation, timed from inside the event loop."""
    samples: list[float] = []
    deadline = time.perf_counter() + plan.budget
    while True:
        start = time.perf_counter()
        result = await operation()
        end = time.perf_counter()
        samples.append(end - start)
        if _done(samples, count, plan, end, deadline):
            return samples, result
