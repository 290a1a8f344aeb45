"""Worker channels kept registered with the asyncio loop that waits on them.

Adding and removing a reader for every call costs two selector updates and an extra loop
iteration: a channel stays registered with the loop instead, and each call only parks a
future where the reader finds it. The hazards, each handled here:

- A channel must never be closed while a loop has it registered (a recycled descriptor
  number would then wake, or confuse, that loop): ``close`` removes the reader on the
  loop's own thread (``call_soon_threadsafe`` from any other) and closes it there.
- A worker used from another loop: the channel is registered there, and removed from the
  first loop on that loop's thread.
- A reader that fires when no call waits while the channel holds something removes
  itself after a few such wakes in a row, so a readable channel cannot spin the loop (a
  worker that ended while idle). It lets the first go by: with pipelined dispatch, the
  reply of the call next in line often comes before that call's task is back to wait for
  it. A
  wake goes to the future parked on that channel object (not on a descriptor number);
  a readiness found before the last reply was read may still run after a new wait began,
  so the channel is polled before the wait returns, and the caller checks the reply's
  call id as it reads it.

Only asyncio: trio's ``wait_readable`` is cheap already, and blocking callers poll.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading

#: Wakes in a row with something on the channel and no call waiting, before the reader
#: is removed (see the module docstring).
UNCLAIMED_WAKES = 5


class _Registration:
    __slots__ = ("fd", "future", "loop", "poller", "unclaimed")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.future: asyncio.Future[None] | None = None
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)
        self.unclaimed = 0


_lock = threading.Lock()
_registrations: dict[socket.socket, _Registration] = {}


async def wait_readable(channel: socket.socket) -> None:
    """Wait until ``channel`` is readable, on the running loop."""
    loop = asyncio.get_running_loop()
    while True:
        registration = _registrations.get(channel)
        if registration is None or registration.loop is not loop:
            registration = _register(channel, loop)
        future = loop.create_future()
        registration.future = future
        try:
            await future
        finally:
            if registration.future is future:
                registration.future = None
        # The loop may run a readiness found before the last reply was read, after a new
        # wait began: a wake is a hint, the channel says whether it holds something.
        if registration.poller.poll(0):
            return


def _register(channel: socket.socket, loop: asyncio.AbstractEventLoop) -> _Registration:
    registration = _Registration(loop, channel.fileno())
    with _lock:
        previous = _registrations.get(channel)
        _registrations[channel] = registration
    if previous is not None:
        _remove_elsewhere(previous)
    loop.add_reader(registration.fd, _ready, channel, registration)
    return registration


def _ready(channel: socket.socket, registration: _Registration) -> None:
    future = registration.future
    if future is None:
        if not registration.poller.poll(0):
            return  # a readiness found before the last reply was read: nothing there now
        registration.unclaimed += 1
        if registration.unclaimed < UNCLAIMED_WAKES:
            return  # the call next in line is on its way to read it
        # Still nobody (the worker ended while idle, say): stop watching (level-triggered,
        # it would fire every iteration).
        with _lock:
            if _registrations.get(channel) is registration:
                del _registrations[channel]
        registration.loop.remove_reader(registration.fd)
        return
    registration.unclaimed = 0
    if not future.done():
        future.set_result(None)


def _remove_elsewhere(registration: _Registration, channel: socket.socket | None = None) -> None:
    """Remove ``registration``'s reader on its loop's thread (then close ``channel``).

    A loop that runs elsewhere does it at its next iteration. One that runs nowhere (it
    returned from ``run_until_complete``; ``asyncio.run`` is closing it, say) may never
    run its callbacks again: its reader is removed here, as no thread selects on it."""
    loop = registration.loop

    def remove() -> None:
        loop.remove_reader(registration.fd)
        if channel is not None:
            channel.close()

    if not loop.is_closed():
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop or not loop.is_running():
            remove()
            return
        try:
            loop.call_soon_threadsafe(remove)
            return
        except RuntimeError:
            pass  # it closed meanwhile: its selector is gone, nothing to remove
    if channel is not None:
        channel.close()


def close(channel: socket.socket) -> None:
    """Close a worker's channel, after its reader (if any) is removed from its loop."""
    with _lock:
        registration = _registrations.pop(channel, None)
    if registration is None:
        channel.close()
    else:
        _remove_elsewhere(registration, channel)
