"""Out-of-band segments: anonymous shared memory (memfd) handed over as descriptors.

A segment is written once by the sender and mapped by the receiver, so a large buffer is
copied once (into the segment) and then read in place. memfds have no name and live only
as long as a descriptor or a mapping refers to them: a crash, a timeout or a cancellation
cannot leave one behind, and nothing ever appears in /dev/shm.
"""

from __future__ import annotations

import mmap
import os

# Linux caps a single write() at just under 2 GiB.
_MAX_WRITE = 1 << 30


def write_segment(data: memoryview) -> int:
    """Copy ``data`` into a new memfd and return its descriptor (the caller closes it)."""
    fd = os.memfd_create("freshproc", os.MFD_CLOEXEC)
    try:
        view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        offset, total = 0, view.nbytes
        while offset < total:
            offset += os.write(fd, view[offset : offset + _MAX_WRITE])
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_segment(fd: int, size: int) -> memoryview:
    """Map a received segment; the mapping outlives ``fd``, which the caller closes.

    The mapping is private copy-on-write, so the receiver may mutate what it gets
    (a numpy array arrives writable) without the sender seeing it.
    """
    if size == 0:
        return memoryview(bytearray())
    actual = os.fstat(fd).st_size
    if actual < size:
        raise ValueError(f"segment holds {actual} bytes, frame says {size}")
    mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return memoryview(mapping)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
