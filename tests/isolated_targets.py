"""Decorated functions living in an importable module (they travel by name)."""

from __future__ import annotations

import os

import freshproc


@freshproc.isolated
def worker_pid_plus(offset: int) -> int:
    return os.getpid() + offset


@freshproc.isolated
async def async_worker_pid() -> int:
    import anyio  # a checkpoint on whichever library the caller uses (and so the worker)

    await anyio.lowlevel.checkpoint()
    return os.getpid()


@freshproc.isolated(fresh=True)
def fresh_pid() -> int:
    return os.getpid()
