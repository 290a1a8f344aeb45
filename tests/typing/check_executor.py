"""Static checks of Executor's and progress's types: mypy checks this file, pytest never runs it."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Generator

from typing_extensions import assert_type

import freshproc


def add(a: int, b: int) -> int:
    return a + b


def report(done: int, total: int | None) -> None:
    pass


def check_executor(executor: freshproc.Executor, pool: freshproc.Pool) -> None:
    as_base: concurrent.futures.Executor = executor
    assert_type(as_base, concurrent.futures.Executor)
    assert_type(executor.submit(add, 1, 2), concurrent.futures.Future[int])
    assert_type(executor.map(add, [1], [2], timeout=1.0, chunksize=2), Generator[int, None, None])
    assert_type(executor.map(add, [1], [2], progress=True), Generator[int, None, None])
    assert_type(executor.map(add, [1], [2], progress=report), Generator[int, None, None])
    assert_type(pool.map_sync(add, [1], [2], progress=report), list[int])
    executor.submit(add, 1, "2")  # type: ignore[arg-type]
    executor.map(add, [1], progress="yes")  # type: ignore[arg-type]
    freshproc.Executor(max_workers="2")  # type: ignore[arg-type]
    assert_type(executor.pool, freshproc.Pool)
