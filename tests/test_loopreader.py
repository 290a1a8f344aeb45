"""Worker channels kept registered with the asyncio loop that waits on them (``_loopreader``):
each hazard of keeping them registered, on socket pairs and on a real pool."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

import freshproc
from freshproc import _loopreader


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the caller's end, the worker's end) of a channel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield ours, theirs
    theirs.close()
    _loopreader.close(ours)


def _watched(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    selector = loop._selector  # type: ignore[attr-defined]
    return sock.fileno() in selector.get_map()


async def _iterations(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_a_channel_stays_registered_between_waits(channel: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = channel

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for message in (b"one", b"two"):
            theirs.send(message)
            await asyncio.wait_for(_loopreader.wait_readable(ours), 10)
            assert ours.recv(16) == message
            assert _watched(loop, ours)  # no remove_reader/add_reader per wait
        number = ours.fileno()
        _loopreader.close(ours)
        assert ours.fileno() == -1
        assert number not in loop._selector.get_map()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_something_nobody_waits_for_is_left_a_moment_then_unwatched(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    """A reply that comes before the call next in line waits for it (pipelined dispatch)
    keeps the reader; one that nobody claims (a worker that ended while idle) removes it,
    so a channel that stays readable cannot spin the loop."""
    ours, theirs = channel

    async def main() -> None:
        loop = asyncio.get_running_loop()
        theirs.send(b"first")
        await asyncio.wait_for(_loopreader.wait_readable(ours), 10)
        assert ours.recv(16) == b"first"
        theirs.send(b"early")  # nobody waits yet
        await _iterations(2)
        assert _watched(loop, ours)
        await asyncio.wait_for(_loopreader.wait_readable(ours), 10)  # claimed in time
        assert ours.recv(16) == b"early"
        assert _watched(loop, ours)
        theirs.close()  # end of file, and nobody waits
        await _iterations(_loopreader.UNCLAIMED_WAKES + 2)
        assert not _watched(loop, ours)
        # A later wait registers it again, and sees the end of file.
        await asyncio.wait_for(_loopreader.wait_readable(ours), 10)
        assert ours.recv(16) == b""

    asyncio.run(main())


def test_a_channel_moves_to_the_loop_that_waits_on_it(channel: tuple[socket.socket, socket.socket]) -> None:
    """Used from a second loop (the first one closed, as ``asyncio.run`` does), the channel
    is registered there; closing it leaves neither loop watching it."""
    ours, theirs = channel
    loops: list[asyncio.AbstractEventLoop] = []

    async def wait_once(message: bytes) -> None:
        loops.append(asyncio.get_running_loop())
        theirs.send(message)
        await asyncio.wait_for(_loopreader.wait_readable(ours), 10)
        assert ours.recv(16) == message

    asyncio.run(wait_once(b"first"))
    asyncio.run(wait_once(b"second"))
    assert loops[0] is not loops[1]

    # A third loop, running in another thread while the channel is closed from this one:
    # it is unregistered on that loop's own thread before its descriptor is closed.
    registered = threading.Event()
    third: list[asyncio.AbstractEventLoop] = []
    after_close: list[asyncio.Event] = []
    outcome: list[tuple[int, bool, bool]] = []

    def run_third() -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            third.append(loop)
            after_close.append(asyncio.Event())
            await wait_once(b"third")
            number = ours.fileno()
            registered.set()
            await after_close[0].wait()
            outcome.append((number, ours.fileno() == -1, number in loop._selector.get_map()))  # type: ignore[attr-defined]

        asyncio.run(main())

    thread = threading.Thread(target=run_third)
    thread.start()
    assert registered.wait(10)
    _loopreader.close(ours)  # from this thread: the removal is queued on the third loop
    third[0].call_soon_threadsafe(after_close[0].set)  # runs after it
    thread.join(10)
    assert len(loops) == 3
    assert outcome == [(outcome[0][0], True, False)]


def test_a_channel_of_a_loop_that_runs_nowhere_is_closed_at_once(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    """A loop back from ``run_until_complete`` (``asyncio.run`` closing it, say) may never
    run a callback again: the channel is unregistered and closed right away, not left to
    a callback that a closing loop would drop (and the socket to the garbage collector)."""
    ours, theirs = channel
    loop = asyncio.new_event_loop()
    try:
        theirs.send(b"one")
        loop.run_until_complete(asyncio.wait_for(_loopreader.wait_readable(ours), 10))
        number = ours.fileno()
        assert number in loop._selector.get_map()  # type: ignore[attr-defined]
        _loopreader.close(ours)
        assert ours.fileno() == -1
        assert number not in loop._selector.get_map()  # type: ignore[attr-defined]
    finally:
        loop.close()


def test_a_recycled_descriptor_number_wakes_only_its_own_channel() -> None:
    """A channel closed while registered, and a new one that gets its descriptor number:
    the new one's waits go by its own registration, never the old one's."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        old, old_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_peer.send(b"old")
        await asyncio.wait_for(_loopreader.wait_readable(old), 10)
        number = old.fileno()
        _loopreader.close(old)
        old_peer.close()
        new, new_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            assert number in (new.fileno(), new_peer.fileno())  # the number is reused
            waiter = asyncio.ensure_future(_loopreader.wait_readable(new))
            await _iterations(3)
            assert not waiter.done()  # nothing on the new channel yet
            new_peer.send(b"new")
            await asyncio.wait_for(waiter, 10)
            assert new.recv(16) == b"new"
            assert _watched(loop, new)
        finally:
            _loopreader.close(new)
            new_peer.close()

    asyncio.run(main())


def test_a_pool_serves_one_loop_after_another_and_closes_from_another_thread() -> None:
    """The same pool, called from two ``asyncio.run`` loops in turn, then closed from a
    thread while the last loop still runs: every call gets its value, and no loop is
    left watching a closed channel."""
    with freshproc.Pool(1) as pool:

        async def call(value: int) -> int:
            return int(await pool.call("operator", "add", value, 1))

        assert asyncio.run(call(1)) == 2
        assert asyncio.run(call(2)) == 3

        loop_ready, closed = threading.Event(), threading.Event()
        seen: list[bool] = []

        def last_loop() -> None:
            async def main() -> None:
                assert await call(3) == 4
                loop = asyncio.get_running_loop()
                channels = [worker.channel for worker in pool._workers._ledger.workers.values()]
                loop_ready.set()
                # The close's removals were queued on this loop before this wait's result.
                await asyncio.to_thread(closed.wait, 10)
                seen.extend(channel.fileno() == -1 for channel in channels)
                assert not any(fd in loop._selector.get_map() for fd in (c.fileno() for c in channels) if fd >= 0)  # type: ignore[attr-defined]

            asyncio.run(main())

        thread = threading.Thread(target=last_loop)
        thread.start()
        assert loop_ready.wait(30)
        pool.recycle()  # the idle worker goes: its channel is closed from this thread
        closed.set()
        thread.join(30)
        assert seen
        assert all(seen)
        assert pool.call_sync("operator", "add", 4, 1) == 5
