"""Targets that run inside a worker and turn it against its caller, for the wire-safety
tests: they rewrite the worker runtime's own functions (in that worker only) so that its
next reply names sizes it does not have, sends memfds it can still change, or carries
more than its limit. Each is deterministic: none waits on a clock."""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import sys
from typing import Any

from freshproc import _buffers, _serialization, _transport, _worker
from freshproc._protocol import Payload, Segment

#: What the worker saw when it tried to truncate a memfd it had sent (see below).
_truncation_outcome: list[str] = []
_kept: list[object] = []  # what crafted segments point into: alive as long as the worker


def _send_next_result_as(payload: Payload) -> None:
    """Make the worker's next reply carry ``payload`` instead of its real result."""
    real = _serialization.dumps_to_wire

    def crafted(
        obj: object, direction: Any, *, direct: bool, max_size: int | None = None, cross_version: str | None = None
    ) -> Any:
        _serialization.dumps_to_wire = real
        outgoing = real(None, direction, direct=direct)
        outgoing.payload = payload
        return outgoing

    _serialization.dumps_to_wire = crafted


def name_sparse_region(size: int) -> None:
    """Reply with a pickle said to be ``size`` bytes at the address of a sparse mapping
    of that size: memory the worker never touched, and does not hold."""
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    _kept.append(region)
    address = _buffers.address_of(memoryview(region))
    assert address is not None
    _send_next_result_as(Payload(None, (Segment(size, address),)))


def name_size(size: int) -> None:
    """Reply with one by-address segment of ``size`` bytes (at a real address)."""
    region = bytearray(4096)
    _kept.append(region)
    address = _buffers.address_of(memoryview(region))
    assert address is not None
    _send_next_result_as(Payload(None, (Segment(size, address),)))


def _unsealed_segment(data: memoryview) -> int:
    """``_buffers.write_segment`` as it was: a memfd its sender may still shrink."""
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    os.write(fd, data.cast("B"))
    return fd


def return_in_unsealed_memfd(size: int) -> pickle.PickleBuffer:
    """Returns ``size`` bytes out of band in a memfd that is not sealed."""
    _worker.settings.direct_copy = False
    _buffers.write_segment = _unsealed_segment
    return pickle.PickleBuffer(bytearray(size))


def return_then_truncate(size: int) -> pickle.PickleBuffer:
    """Returns ``size`` bytes in a memfd, keeps a duplicate of its descriptor, and right
    after the reply is sent tries to truncate it under the caller's mapping (which would
    end the caller with SIGBUS when it touches the result). ``truncation_outcome`` says
    what happened."""
    _worker.settings.direct_copy = False
    write_segment, send = _buffers.write_segment, _transport.send
    kept: list[int] = []

    def keep_duplicate(data: memoryview) -> int:
        fd = write_segment(data)
        kept.append(os.dup(fd))
        return fd

    def send_then_truncate(*args: Any, **kwargs: Any) -> None:
        send(*args, **kwargs)
        _buffers.write_segment, _transport.send = write_segment, send
        for fd in kept:
            try:
                os.ftruncate(fd, 0)
            except OSError as exc:
                _truncation_outcome.append(errno.errorcode[exc.errno or 0])
            else:
                _truncation_outcome.append("truncated")
            os.close(fd)

    _buffers.write_segment = keep_duplicate
    _transport.send = send_then_truncate
    return pickle.PickleBuffer(bytearray(size))


def truncation_outcome() -> list[str]:
    return _truncation_outcome


def raise_huge_message(size: int) -> None:
    raise ValueError("m" * size)


def print_then_raise_huge(size: int) -> None:
    sys.stdout.write("o" * size)
    raise ValueError("after printing")


def print_then_return(size: int) -> int:
    sys.stdout.write("o" * size)
    return size


def fail_with_oversized_record(size: int) -> None:
    """Fails, and replaces its failure record by ``size`` bytes, past any limit."""
    real = _serialization.dumps_failure

    def oversized(failure: Any, captured: Any) -> bytes:
        _serialization.dumps_failure = real
        return pickle.dumps(((*failure[:2], "x" * size, *failure[3:]), captured), protocol=5)

    _serialization.dumps_failure = oversized
    raise ValueError("small")


class ReduceRaises:
    """Pickling it raises ``error`` (a BaseException type such as KeyboardInterrupt)."""

    def __init__(self, error: type[BaseException]) -> None:
        self.error = error

    def __reduce__(self) -> tuple[object, ...]:
        raise self.error("raised while pickling")


class ExceptionReduceRaises(Exception):
    """An exception that cannot be pickled: its ``__reduce__`` raises ``error``."""

    def __init__(self, error: type[BaseException]) -> None:
        super().__init__(f"reduce raises {error.__name__}")
        self.error = error

    def __reduce__(self) -> tuple[object, ...]:
        raise self.error("raised while pickling")


def return_reduce_raising(error_name: str) -> ReduceRaises:
    return ReduceRaises(_base_exception(error_name))


def raise_reduce_raising(error_name: str) -> None:
    raise ExceptionReduceRaises(_base_exception(error_name))


def _base_exception(name: str) -> type[BaseException]:
    error = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}[name]
    return error


def raise_with_array(size: int) -> None:
    import numpy

    raise ValueError("bad", numpy.arange(size, dtype=numpy.float64))


def open_file(path: str, mode: str) -> object:
    return open(path, mode)  # returned on purpose: the caller must refuse it


def sized(size: int) -> bytes:
    return b"r" * size


def pid() -> int:
    return os.getpid()
