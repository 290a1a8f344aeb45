"""Which async library runs the current task: asked in this one place (sniffio, as anyio
does), never guessed from ``asyncio.get_running_loop()``, which under trio's guest mode
on an asyncio host names the host's loop to a trio task."""

from __future__ import annotations

import asyncio
from typing import Literal

import sniffio

AsyncLibrary = Literal["asyncio", "trio"]


def current_async_library() -> AsyncLibrary:
    """``"asyncio"`` or ``"trio"``; RuntimeError outside either."""
    try:
        name = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        raise RuntimeError("freshproc's async API needs a running asyncio or trio event loop") from None
    if name == "asyncio":
        return "asyncio"
    if name == "trio":
        return "trio"
    raise RuntimeError(f"freshproc supports asyncio and trio, not {name}")


def event_loop_runs_in_this_thread() -> bool:
    """Whether this thread is running an event loop (a blocking call here stalls it)."""
    return sniffio.thread_local.name is not None or asyncio._get_running_loop() is not None
