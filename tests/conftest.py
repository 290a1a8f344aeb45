"""Shared fixtures: both async backends, a leak guard, and helpers for modules on disk."""

from __future__ import annotations

import functools
import os
import signal
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import anyio
import psutil
import pytest

import freshproc
from freshproc import _api


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio; a missing trio fails."""
    return str(request.param)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves worker or template processes behind (after closing the
    default pool, which outlives single calls by design)."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    pool = _api._default_pool
    if pool is not None:
        pool.close()
    leftover = [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
    # Processes that are exiting right now get a moment to finish (waiting on their exit).
    _, alive = psutil.wait_procs(leftover, timeout=5)
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture(autouse=True)
def default_sigint() -> Iterator[None]:
    """Python's own Ctrl-C handling for every test, whatever the process inherited: a
    shell starts its background jobs with SIGINT ignored, and then no KeyboardInterrupt
    would come (the tests of interrupts would hang)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class ModuleFolder:
    """A temporary folder on a pool's path, where tests write and rewrite modules."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, relative: str, source: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        return path

    @property
    def env(self) -> dict[str, str]:
        # No bytecode caches: a module rewritten within the same second must not be
        # served from a stale .pyc.
        return {"PYTHONPATH": str(self.root), "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture
def modules(tmp_path: Path) -> ModuleFolder:
    return ModuleFolder(tmp_path / "modules")


@pytest.fixture
def pool() -> Iterator[freshproc.Pool]:
    with freshproc.Pool(2) as pool:
        yield pool


@pytest.fixture
def fd_guard() -> Callable[[], None]:
    """Call the yielded function after closing the pool under test: it asserts the
    caller's open descriptors are what they were before the test."""
    before = open_fds()

    def check() -> None:
        leaked = open_fds() - before
        assert not leaked, f"descriptors leaked: {sorted(leaked)} -> {[_describe_fd(fd) for fd in leaked]}"

    return check


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


class Invoke(Protocol):
    def __call__(self, pool: freshproc.Pool, module: str, attr: str, /, *args: object) -> Any: ...


@pytest.fixture(params=["blocking", "asyncio", "trio"])
def invoke(request: pytest.FixtureRequest) -> Invoke:
    """Make one call through the blocking API, or through ``await pool.call`` on asyncio
    or trio, so a test proves its point under all three."""
    api = str(request.param)

    def call(pool: freshproc.Pool, module: str, attr: str, /, *args: object) -> Any:
        if api == "blocking":
            return pool.call_sync(module, attr, *args)
        return anyio.run(functools.partial(pool.call, module, attr, *args), backend=api)

    return call
