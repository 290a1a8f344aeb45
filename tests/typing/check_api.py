"""Static checks of the public API's types: mypy checks this file, pytest never runs it."""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

import freshproc


def add(a: int, b: int) -> int:
    return a + b


def scaled(a: int, *, scale: int = 1) -> int:
    return a * scale


async def fetch(url: str) -> bytes:
    return url.encode()


@freshproc.isolated
def blocking(x: int, *, label: str = "") -> str:
    return f"{label}{x}"


@freshproc.isolated(timeout=5.0)
async def awaitable(x: int) -> float:
    return x / 2


async def check_async(pool: freshproc.Pool) -> None:
    assert_type(await freshproc.run(add, 1, 2), int)
    assert_type(await freshproc.run(fetch, "u"), bytes)
    assert_type(await pool.run(add, 1, 2), int)
    assert_type(await freshproc.call("math", "sqrt", 4.0), Any)
    assert_type(await blocking.aio(1, label="x"), str)
    assert_type(await awaitable(3), float)
    assert_type(await pool.run_captured(add, 1, 2), freshproc.Captured[int])
    assert_type(await freshproc.run(scaled, 1, scale=2), int)
    assert_type(await pool.run(scaled, 1, scale=2), int)
    await freshproc.run(add, 1)  # type: ignore[call-overload]
    await freshproc.run(add, 1, "2")  # type: ignore[call-overload]
    await pool.run(scaled, 1, scale="2")  # type: ignore[arg-type]
    await pool.run(scaled, 1, factor=2)  # type: ignore[arg-type, call-arg]
    async with freshproc.Pool() as entered:
        assert_type(entered, freshproc.Pool)


def check_sync(pool: freshproc.Pool) -> None:
    assert_type(freshproc.run_sync(add, 1, 2), int)
    assert_type(pool.run_sync(add, 1, 2), int)
    assert_type(pool.run_sync(scaled, 1, scale=3), int)
    assert_type(freshproc.run_sync(scaled, 1, scale=3), int)
    assert_type(pool.run_captured_sync(scaled, 1, scale=3), freshproc.Captured[int])
    assert_type(pool.call_captured_sync("os", "getpid"), freshproc.Captured[Any])
    pool.run_sync(scaled, 1, scale="3")  # type: ignore[arg-type]
    assert_type(blocking(1), str)
    assert_type(pool.map_sync(add, [1], [2]), list[int])
    assert_type(pool.stats(), freshproc.PoolStats)
    blocking("not an int")  # type: ignore[arg-type]
    blocking(1, label=2)  # type: ignore[arg-type]
    with freshproc.Pool() as entered:
        assert_type(entered, freshproc.Pool)
