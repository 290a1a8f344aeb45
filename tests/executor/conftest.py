"""Fixtures for the Executor tests: an executor that is shut down after the test, and
handshakes for calls that must block until the test lets them go."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import freshproc
from tests.executor.targets import Gates

#: Workers per test executor: the CPython tests' five would only load the machine.
WORKERS = 2


@pytest.fixture
def gates() -> Iterator[Gates]:
    gates = Gates()
    yield gates
    gates.close()


@pytest.fixture
def executor(gates: Gates) -> Iterator[freshproc.Executor]:
    """An executor with ``WORKERS`` workers; blocked calls are released before it is shut
    down (and the handshakes closed only after that)."""
    executor = freshproc.Executor(max_workers=WORKERS)
    try:
        yield executor
    finally:
        gates.release_all()
        executor.shutdown(wait=True)
