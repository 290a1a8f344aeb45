"""A handshake between a test and a call running in a worker, without sleeps.

Workers are forked from the template, not from the test, so they inherit none of its
descriptors: the worker opens the test's pipe ends through /proc/<test pid>/fd.
"""

from __future__ import annotations

import os


class Handshake:
    """The worker writes one byte when it has started and waits for one byte to go on."""

    def __init__(self) -> None:
        self._started_read, self._started_write = os.pipe()
        self._go_read, self._go_write = os.pipe()
        self._fds: tuple[int, ...] = (self._started_read, self._started_write, self._go_read, self._go_write)
        self.spec = f"{os.getpid()}:{self._started_write}:{self._go_read}"

    def wait_started(self) -> None:
        assert os.read(self._started_read, 1) == b"s"

    def release(self) -> None:
        os.write(self._go_write, b"g")

    def close(self) -> None:
        """Close the pipes, once: a second close could hit descriptor numbers reused since."""
        fds, self._fds = self._fds, ()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()


def signal_started(spec: str) -> None:
    """Worker side: tell the test the call has started."""
    caller, started, _ = (int(part) for part in spec.split(":"))
    fd = os.open(f"/proc/{caller}/fd/{started}", os.O_WRONLY)
    os.write(fd, b"s")
    os.close(fd)


def wait_go(spec: str) -> None:
    """Worker side: block until the test releases the call."""
    caller, _, go = (int(part) for part in spec.split(":"))
    fd = os.open(f"/proc/{caller}/fd/{go}", os.O_RDONLY)
    os.read(fd, 1)
    os.close(fd)
