"""Moving frames over a SOCK_SEQPACKET Unix socket, with descriptors attached.

Blocking and stdlib-only: the worker and the template use it directly, and the parent
calls it once the socket is known to be readable. One record is one frame.
"""

from __future__ import annotations

import array
import math
import select
import socket

from freshproc import _buffers
from freshproc._errors import ProtocolError
from freshproc._protocol import MAX_FDS, MAX_FRAME, Message, decode, encode, fd_count

_ANCILLARY_SIZE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
# Plain ints: IntFlag arithmetic would cost more than the receive itself.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_TRUNC = int(socket.MSG_TRUNC)
# Received descriptors are close-on-exec from the moment they exist: a program that the
# caller (or a call in a worker) starts meanwhile must not inherit a channel or a segment.
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """The descriptors among ``fds`` that are readable (or hung up) within ``timeout``
    seconds (None: no limit). poll(), not select(): descriptors may exceed 1023."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    milliseconds = None if timeout is None else max(0, math.ceil(timeout * 1000))
    return [fd for fd, _ in poller.poll(milliseconds)]


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of record-preserving sockets (close-on-exec, as Python makes every
    descriptor it creates)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message; ``fds`` must be exactly the descriptors the message announces."""
    if len(fds) != fd_count(message):
        raise ProtocolError(f"{type(message).__name__} needs {fd_count(message)} descriptors, got {len(fds)}")
    frame = encode(message)
    if fds:
        sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(frame)


def recv(sock: socket.socket, extra_flags: int = 0) -> tuple[Message, list[int]] | None:
    """Receive one message and the descriptors that came with it; None at end of file.
    ``extra_flags`` add to recvmsg's (``socket.MSG_DONTWAIT``: BlockingIOError if none is there).

    Every received descriptor is closed before a ProtocolError propagates, so a bad
    frame leaks nothing.
    """
    data, ancillary, flags, _ = sock.recvmsg(MAX_FRAME + 1, _ANCILLARY_SIZE, _MSG_CMSG_CLOEXEC | extra_flags)
    fds = _descriptors(ancillary) if ancillary else []
    try:
        if not data and not fds:
            return None
        if flags & _MSG_CTRUNC:
            raise ProtocolError(
                "frame carried more descriptors than allowed, or this process is out of file descriptors"
            )
        if flags & _MSG_TRUNC or len(data) > MAX_FRAME:
            raise ProtocolError(f"oversized frame (over {MAX_FRAME} bytes)")
        message = decode(data)
        if len(fds) != fd_count(message):
            raise ProtocolError(
                f"{type(message).__name__} announced {fd_count(message)} descriptors, {len(fds)} arrived"
            )
    except BaseException:
        _buffers.close_all(fds)
        raise
    return message, fds


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return fds
