"""A pipe through which a call running in a worker reports its worker's pid, so the
campaign can kill or cancel exactly that call once it has started (no sleeps).

Workers are forked from the template, not from the caller, so they inherit none of its
descriptors: the worker opens the caller's write end through /proc/<caller pid>/fd.
This module is imported on both sides; the worker side needs only the stdlib.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

_PID_BYTES = 8


class PidPipe:
    """Caller side. A pid of 0 is the caller interrupting its own reader."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self.spec = f"{os.getpid()}:{self._write}"

    async def read_pid(self) -> int:
        """Wait (cancellably) until the worker reports its pid."""
        import anyio  # only the caller side needs it: workers import this module too

        await anyio.wait_readable(self._read)
        return self._take()

    def read_pid_blocking(self) -> int:
        """Block until the worker reports its pid, or ``interrupt`` is called (0)."""
        return self._take()

    def interrupt(self) -> None:
        """Wake a blocked ``read_pid_blocking`` that waits for a call that never started."""
        os.write(self._write, bytes(_PID_BYTES))

    def _take(self) -> int:
        data = os.read(self._read, _PID_BYTES)  # writes of 8 bytes to a pipe are atomic
        if len(data) != _PID_BYTES:
            raise RuntimeError(f"short read from the pid pipe: {data!r}")
        return int.from_bytes(data, "big")

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._read = self._write = -1

    def __enter__(self) -> PidPipe:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def report_pid(spec: str) -> None:
    """Worker side: tell the caller this worker's pid (which also says the call started)."""
    caller, write_end = (int(part) for part in spec.split(":"))
    fd = os.open(f"/proc/{caller}/fd/{write_end}", os.O_WRONLY)
    try:
        os.write(fd, os.getpid().to_bytes(_PID_BYTES, "big"))
    finally:
        os.close(fd)


def report_pid_then_hang(spec: str) -> None:
    """Worker side: report the pid, then wait forever (until killed or cancelled)."""
    report_pid(spec)
    threading.Event().wait()
