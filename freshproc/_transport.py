"""Moving frames over a SOCK_SEQPACKET Unix socket, with descriptors attached.

Blocking and stdlib-only: the worker and the template use it directly, and the parent
calls it once the socket is known to be readable. One record is one frame.

It uses ``_socket``, the C module under ``socket``: every template imports this before its
first fork, and ``socket`` (its enums, ``selectors``) costs a few milliseconds more. Its
plain-int constants also spare the receive IntFlag arithmetic. The caller's
``socket.socket`` objects are ``_socket.socket`` objects too.
"""

from __future__ import annotations

import _socket
import _thread
import select
import struct

from freshproc import _buffers
from freshproc._errors import ProtocolError
from freshproc._protocol import MAX_FDS, MAX_FRAME, Message, decode, encode, fd_count

_FD_SIZE = struct.calcsize("i")  # a descriptor in SCM_RIGHTS data is a C int
_ANCILLARY_SIZE = _socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
# Received descriptors are close-on-exec from the moment they exist: a program that the
# caller (or a call in a worker) starts meanwhile must not inherit a channel or a segment.
_RECEIVE_FLAGS = _socket.MSG_CMSG_CLOEXEC


class _ReceiveBuffer(_thread._local):
    """Where a thread receives its frames: made once per thread and reused.

    ``recvmsg(MAX_FRAME + 1)`` would allocate a bytes object that size for every frame,
    above glibc's initial mmap threshold (128 KiB): unless something earlier in the
    process happened to raise that threshold, each receive then cost an mmap, page faults
    and an munmap. Measured in a warm worker: two page faults per call, and the warm
    call 20-40 % slower. A small frame touches only the first page of this buffer."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(MAX_FRAME + 1))


_receive_buffer = _ReceiveBuffer()


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """The descriptors among ``fds`` that are readable (or hung up) within ``timeout``
    seconds (None: no limit). poll(), not select(): descriptors may exceed 1023."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    milliseconds = None if timeout is None else max(0, _ceil(timeout * 1000))
    return [fd for fd, _ in poller.poll(milliseconds)]


def _ceil(value: float) -> int:
    whole = int(value)
    return whole + 1 if whole < value else whole


def channel_pair() -> tuple[_socket.socket, _socket.socket]:
    """A connected pair of record-preserving sockets (close-on-exec, as Python makes every
    descriptor it creates)."""
    return _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)


def send(sock: _socket.socket, message: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message; ``fds`` must be exactly the descriptors the message announces."""
    if len(fds) != fd_count(message):
        raise ProtocolError(f"{type(message).__name__} needs {fd_count(message)} descriptors, got {len(fds)}")
    frame = encode(message)
    if fds:
        rights = struct.pack(f"{len(fds)}i", *fds)
        sock.sendmsg([frame], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    else:
        sock.send(frame)


def recv(sock: _socket.socket, extra_flags: int = 0) -> tuple[Message, list[int]] | None:
    """Receive one message and the descriptors that came with it; None at end of file.
    ``extra_flags`` add to recvmsg's (``MSG_DONTWAIT``: BlockingIOError if none is there).

    Every received descriptor is closed before a ProtocolError propagates, so a bad
    frame leaks nothing.
    """
    view = _receive_buffer.view
    size, ancillary, flags, _ = sock.recvmsg_into([view], _ANCILLARY_SIZE, _RECEIVE_FLAGS | extra_flags)
    fds = _descriptors(ancillary) if ancillary else []
    try:
        if not size and not fds:
            return None
        data = bytes(view[:size])  # the buffer takes the thread's next frame: keep a copy
        if flags & _socket.MSG_CTRUNC:
            raise ProtocolError(
                "frame carried more descriptors than allowed, or this process is out of file descriptors"
            )
        if flags & _socket.MSG_TRUNC or len(data) > MAX_FRAME:
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
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // _FD_SIZE}i", data[: len(data) - len(data) % _FD_SIZE]))
    return fds
