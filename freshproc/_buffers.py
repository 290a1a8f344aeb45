"""Out-of-band segments: bytes that travel beside a frame, never in it.

Two ways, each one copy in all. By address: the receiver copies straight out of the
sender's memory (``read_remote``). By memfd, where that is not allowed: the sender copies
into anonymous shared memory handed over as a descriptor, and the receiver maps it. Neither
has a name: a crash, a timeout or a cancellation cannot leave one behind, and nothing ever
appears in /dev/shm.

Neither side trusts the other's memfds: a sender seals each one before it goes (it can
then neither shrink, grow nor rewrite it), and a receiver maps only a sealed memfd of
exactly the announced size. An unsealed one could be truncated under the receiver's
mapping, and touching the missing pages would kill the receiver with SIGBUS.
"""

from __future__ import annotations

import ctypes
import mmap
import os

from freshproc._errors import ProtocolError

TYPE_CHECKING = False  # typing stays out of the worker runtime at run time
if TYPE_CHECKING:
    from collections.abc import Callable

# Linux caps a single write() at just under 2 GiB.
_MAX_WRITE = 1 << 30

# memfd seals, from <linux/fcntl.h>. fcntl() is reached through libc (ctypes is loaded
# anyway for process_vm_readv) so the worker runtime does not import the fcntl module.
_F_ADD_SEALS = 1033
_F_GET_SEALS = 1034
_F_SEAL_SEAL = 0x1
_F_SEAL_SHRINK = 0x2
_F_SEAL_GROW = 0x4
_F_SEAL_WRITE = 0x8
#: What a sender seals; a receiver requires all but F_SEAL_SEAL (which only stops more seals).
_SEALS = _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_WRITE | _F_SEAL_SEAL
_REQUIRED_SEALS = _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_WRITE

_libc: ctypes.CDLL | None = None
_fcntl_function: Callable[[int, int, int], int] | None = None


def _library() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _fcntl(fd: int, command: int, argument: int = 0) -> int:
    global _fcntl_function
    if _fcntl_function is None:
        function = _library().fcntl
        function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        function.restype = ctypes.c_int
        _fcntl_function = function
    result = _fcntl_function(fd, command, argument)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return result


def write_segment(data: memoryview) -> int:
    """Copy ``data`` into a new sealed memfd and return its descriptor (the caller closes
    it). Written with write(), never through a shared mapping: F_SEAL_WRITE is refused
    while a writable shared mapping exists."""
    fd = os.memfd_create("freshproc", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        offset, total = 0, view.nbytes
        while offset < total:
            offset += os.write(fd, view[offset : offset + _MAX_WRITE])
        _fcntl(fd, _F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_segment(fd: int, size: int) -> memoryview:
    """Map a received segment; the mapping outlives ``fd``, which the caller closes.

    The mapping is private copy-on-write, so the receiver may mutate what it gets
    (a numpy array arrives writable) without the sender seeing it.

    :raises ProtocolError: ``fd`` is not a memfd sealed against shrinking, growing and
        writing, or it does not hold exactly ``size`` bytes, all of them written.
    """
    try:
        seals = _fcntl(fd, _F_GET_SEALS)
    except OSError as exc:  # EINVAL: not a memfd (or one made without MFD_ALLOW_SEALING)
        raise ProtocolError(f"a segment's descriptor is not a sealable memfd ({exc.strerror})") from None
    if seals & _REQUIRED_SEALS != _REQUIRED_SEALS:
        raise ProtocolError(
            f"a segment's memfd is not sealed (seals {seals:#x}, {_REQUIRED_SEALS:#x} required): "
            "its sender could still shrink or rewrite it"
        )
    status = os.fstat(fd)
    if status.st_size != size:
        raise ProtocolError(f"a segment's memfd holds {status.st_size} bytes, its frame says {size}")
    # A memfd truncated up to a size its sender never wrote is a hole: mapping it costs the
    # sender nothing and the receiver whatever it copies out. A written one has every page.
    allocated = status.st_blocks * 512
    if allocated < size:
        raise ProtocolError(f"a segment's memfd is sparse: {size} bytes announced, {allocated} written")
    if size == 0:
        return memoryview(bytearray())
    mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    return memoryview(mapping)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# -- direct copy between processes ------------------------------------------------------
#
# A receiver copies a segment straight out of the sender's memory with process_vm_readv
# into fresh anonymous memory (huge pages advised), one copy in all, and faster than
# filling a memfd, whose shared pages the kernel allocates one by one. It needs
# permission to read the other process (same user, no ptrace restriction, the syscall
# not filtered), which the template checks once at start; otherwise memfds are used.

_HUGE_PAGE = 2 << 20


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


_process_vm_readv: Callable[..., int] | None = None


def _readv() -> Callable[..., int]:
    global _process_vm_readv
    if _process_vm_readv is None:
        function = _library().process_vm_readv
        function.argtypes = (
            ctypes.c_int,
            ctypes.POINTER(_IoVec),
            ctypes.c_ulong,
            ctypes.POINTER(_IoVec),
            ctypes.c_ulong,
            ctypes.c_ulong,
        )
        function.restype = ctypes.c_ssize_t
        _process_vm_readv = function
    return _process_vm_readv


def address_of(data: bytes | memoryview) -> int | None:
    """Where ``data`` lives in this process, or None if it cannot be shared by address
    (a read-only or empty buffer: those go by memfd). The caller keeps ``data`` alive."""
    if isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value if data else None
    if data.readonly or data.nbytes == 0 or not data.contiguous:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(data))


def read_remote(pid: int, address: int, size: int) -> memoryview:
    """Copy ``size`` bytes at ``address`` in process ``pid`` into new private memory."""
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if size >= _HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        mapping.madvise(mmap.MADV_HUGEPAGE)
    view = memoryview(mapping)
    base = ctypes.addressof(ctypes.c_char.from_buffer(view))
    readv = _readv()
    done = 0
    while done < size:
        local = _IoVec(base + done, size - done)
        remote = _IoVec(address + done, size - done)
        copied = readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if copied <= 0:
            error = ctypes.get_errno()
            raise OSError(error, f"cannot read {size} bytes from process {pid}: {os.strerror(error)}")
        done += copied
    return view


def resident_bytes(pid: int) -> int | None:
    """Process ``pid``'s resident plus swapped-out memory in bytes (VmRSS + VmSwap), or
    None if it cannot be read (the process is gone: copying from it fails anyway)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as file:
            status = file.read()
    except OSError:
        return None
    total = 0
    for line in status.splitlines():
        if line.startswith((b"VmRSS:", b"VmSwap:")):
            total += int(line.split()[1]) * 1024  # in kB
    return total


def direct_copy_works(pid: int, address: int, expected: bytes) -> bool:
    """Whether this process may read process ``pid``'s memory (checked on a probe)."""
    try:
        return bytes(read_remote(pid, address, len(expected))) == expected
    except (OSError, AttributeError):
        return False
