"""The worker's inbox: what the parent queued on its channel, read ahead of each request.

The parent may send a request while the worker runs another (pipelined dispatch). Before
the worker starts a request, and before it sends a reply, it reads everything already on
its channel without blocking: queued requests wait in order, and a ``CancelQueued`` for
one of them removes it, so a call given up before it started never runs. The worker
answers such a call with ``CallSkipped`` at once (ahead of the reply it is about to send,
so the parent learns of it before it turns to that call). An ``OpenChannels`` is acted on
when it is read (``on_open_channels``). Stdlib, protocol and transport only: this runs in
every worker.
"""

from __future__ import annotations

import _socket
import os
import select
from collections import deque

from freshproc import _transport
from freshproc._protocol import (
    CallRequest,
    CallSkipped,
    CancelQueued,
    Message,
    OpenChannels,
    SegmentsCopied,
    Shutdown,
)

TYPE_CHECKING = False  # typing stays out of the worker runtime at run time
if TYPE_CHECKING:
    from collections.abc import Callable

_DONTWAIT = _socket.MSG_DONTWAIT


class Inbox:
    """Requests read ahead, in order, and the replies whose by-address segments the parent
    has yet to copy (oldest first: it copies them, and says so, in reply order)."""

    __slots__ = ("channel", "held", "on_open_channels", "poller", "refusing", "requests")

    def __init__(self, channel: _socket.socket, on_open_channels: Callable[[list[int]], None]) -> None:
        self.channel = channel
        #: Serves the worker ends of a service's further channels (``OpenChannels``).
        self.on_open_channels = on_open_channels
        # A zero-timeout poll says "nothing there" cheaper than a failed receive.
        self.poller = select.poll()
        self.poller.register(channel.fileno(), select.POLLIN)
        self.requests: deque[tuple[CallRequest, list[int]]] = deque()
        self.held: deque[list[object]] = deque()
        #: The worker asked to be replaced: it starts no more calls.
        self.refusing = False

    def next_request(self) -> tuple[CallRequest, list[int]] | Message | None:
        """The next request to run, after reading ahead: a request (with its descriptors),
        another message the worker must act on (``Shutdown``, or anything unexpected), or
        None at end of file. ``ProtocolError``/``OSError`` from the channel propagate."""
        if not self.requests:
            received = _transport.recv(self.channel)
            if received is None:
                return None
            other = self._take(*received)
            if other is not None:
                return other
            if not self.requests:
                return self.next_request()  # it was a cancel, a SegmentsCopied or an OpenChannels
            if not self.requests[-1][0].pipelined:
                return self.requests.popleft()  # a pool that queues nothing: nothing to read
        other = self.read_ahead()
        if other is not None:
            return other
        return self.requests.popleft() if self.requests else self.next_request()

    def read_ahead(self) -> Message | None:
        """Take in what is on the channel now without blocking; return the first message
        that is neither a request, a cancel, a ``SegmentsCopied`` nor an ``OpenChannels`` (it
        ends the worker)."""
        while self.poller.poll(0):
            try:
                received = _transport.recv(self.channel, _DONTWAIT)
            except BlockingIOError:
                return None
            if received is None:
                return Shutdown()  # the parent closed the channel: it wants no more replies
            other = self._take(*received)
            if other is not None:
                return other
        return None

    def refuse(self) -> None:
        """The worker asked to be replaced (its reply said so): every request queued now
        or later is answered ``CallSkipped`` unstarted, and goes to another worker."""
        self.refusing = True
        while self.requests:
            self._skip(self.requests[0][0].call_id)

    def hold(self, keepalive: list[object]) -> None:
        """A reply with by-address segments went out: keep what they point into."""
        self.held.append(keepalive)

    def _take(self, message: Message, fds: list[int]) -> Message | None:
        match message:
            case CallRequest():
                self.requests.append((message, fds))
                if self.refusing:
                    self._skip(message.call_id)
            case CancelQueued(call_id):
                self._skip(call_id)
            case SegmentsCopied():
                if self.held:
                    self.held.popleft()
            case OpenChannels():
                self.on_open_channels(fds)
            case _:
                for fd in fds:
                    os.close(fd)
                return message
        return None

    def _skip(self, call_id: int) -> None:
        for index, (request, fds) in enumerate(self.requests):
            if request.call_id == call_id:
                del self.requests[index]
                for fd in fds:
                    os.close(fd)
                _transport.send(self.channel, CallSkipped(call_id))
                return
        # Not queued: it ran already (or is unknown). Its reply tells the parent so.
