"""Targets for the pipelined dispatch tests; they run in workers."""

from __future__ import annotations

import ctypes
import os

from tests import hostile
from tests.handshake import signal_started, wait_go


def record(path: str, tag: str) -> str:
    """Append ``tag`` to ``path`` (one line; O_APPEND keeps lines whole) and return it."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)
    return tag


def touch(path: str) -> None:
    """Create ``path``: the proof that the call ran."""
    with open(path, "w"):
        pass


def wait_then_return(spec: str, value: str) -> str:
    """Hold the worker until the test says go, then return ``value``."""
    signal_started(spec)
    wait_go(spec)
    return value


def wait_then_segfault(spec: str) -> None:
    """Hold the worker until the test says go, then crash it."""
    signal_started(spec)
    wait_go(spec)
    ctypes.string_at(0)


def wait_then_return_unsealed(spec: str, size: int) -> object:
    """Hold the worker until the test says go, then reply with a memfd that is not sealed
    (which the caller refuses: a broken protocol)."""
    signal_started(spec)
    wait_go(spec)
    return hostile.return_in_unsealed_memfd(size)


def hang(spec: str) -> None:
    """Say it started, then wait for a go that never comes."""
    signal_started(spec)
    wait_go(spec)


def pid() -> int:
    return os.getpid()
