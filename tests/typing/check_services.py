"""Static checks of the service API's types: mypy checks this file, pytest never runs it."""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

import freshproc


class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def bump(self, by: int) -> int:
        self.value += by
        return self.value

    async def fetch(self, key: str) -> bytes:
        return key.encode()


async def check_async() -> None:
    svc = freshproc.service(Counter, 1)
    assert_type(svc, freshproc.Service[Counter])
    assert_type(await svc.call(Counter.bump, 2), int)
    assert_type(await svc.call(Counter.fetch, "k"), bytes)
    assert_type(await svc.call("bump", 2), Any)
    assert_type(freshproc.service("mod", "Counter"), freshproc.Service[Any])
    assert_type(freshproc.service(Counter, 1, options=freshproc.ServiceOptions(replicas=2)), freshproc.Service[Counter])
    async with svc as entered:
        assert_type(entered, freshproc.Service[Counter])
    await svc.call(Counter.bump, "x")  # type: ignore[call-overload]


def check_sync() -> None:
    svc = freshproc.service(Counter, 1)
    assert_type(svc.call_sync(Counter.bump, 2), int)
    assert_type(svc.call_sync(Counter.fetch, "k"), bytes)
    assert_type(svc.restarts, int)
    assert_type(svc.pids, list[int])
    svc.call_sync(Counter.bump, "x")  # type: ignore[call-overload]
    svc.call_sync(Counter.bump)  # type: ignore[call-overload]
    with svc as entered:
        assert_type(entered, freshproc.Service[Counter])
    freshproc.ServiceOptions(restart="sometimes")  # type: ignore[arg-type]
