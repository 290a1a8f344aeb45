"""Wire safety: nothing a peer sends can make its receiver allocate without bound, die of
SIGBUS, or lose a worker to a pickling quirk. Three layers: serialization on bytes, the
worker loop in a forked child, and real pools whose workers are turned hostile by their
own target (``tests.hostile``)."""

from __future__ import annotations

import fcntl
import mmap
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

import freshproc
from freshproc import _buffers, _serialization, _transport, _worker
from freshproc._errors import ProtocolError
from freshproc._protocol import CallRequest, Payload, Segment
from tests.conftest import Invoke

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


# -- 1. sizes named by a worker are not trusted ------------------------------------------


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param(Segment(-1, 4096), id="negative"),
        pytest.param(Segment(2**63 - 16, 4096), id="near-2**63"),
        pytest.param(Segment(2**63 - 16), id="near-2**63-memfd"),
        pytest.param(Segment(4096, 2**64 - 100), id="address-overflows"),
        pytest.param(Segment(0, 4096), id="empty-by-address"),
    ],
)
def test_malformed_sizes_are_protocol_errors(segment: Segment) -> None:
    """A size no buffer can have is a ProtocolError, never a raw OverflowError or an
    attempt to map it; any descriptor that came along is closed."""
    fds = [_buffers.write_segment(memoryview(b"x"))] if segment.address is None else []
    with pytest.raises(ProtocolError, match=f"process {os.getpid()}"):
        _serialization.from_wire(Payload(None, (segment,)), fds, os.getpid())
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


def test_sizes_over_the_limit_are_refused_before_anything_is_copied() -> None:
    """``max_bytes`` bounds inline pickle plus segments; the check comes before any copy
    (the address below is unreadable: reaching the copy would be an OSError)."""
    payload = Payload(b"p" * 100, (Segment(1000, 4096),))
    with pytest.raises(ProtocolError, match="1100 bytes, over the 1099 bytes"):
        _serialization.from_wire(payload, [], os.getpid(), max_bytes=1099)


def test_descriptors_must_match_memfd_segments() -> None:
    fd = _buffers.write_segment(memoryview(b"x"))
    with pytest.raises(ProtocolError, match="1 descriptors for 0 memfd segments"):
        _serialization.from_wire(Payload(b"inline"), [fd], os.getpid())


def test_without_a_limit_by_address_sizes_are_bounded_by_the_senders_memory() -> None:
    """A sender cannot name by address more than it holds (resident or swapped out)
    plus a margin: 1 TiB from this process is refused before any copy."""
    resident = _buffers.resident_bytes(os.getpid())
    assert resident is not None
    assert resident > 0
    assert _buffers.resident_bytes(2**22 + 1) is None  # beyond any pid_max: no such process
    with pytest.raises(ProtocolError, match="more than it holds"):
        _serialization.from_wire(Payload(None, (Segment(1 << 40, 4096),)), [], os.getpid())


def test_reply_limit_allows_a_result_per_call_and_the_output() -> None:
    assert _serialization.reply_limit(None, 5) is None
    one = _serialization.reply_limit(1000, 1)
    assert one is not None
    assert 2000 <= one < 2000 + 64 * 1024
    batch = _serialization.reply_limit(1000, 300)
    assert batch is not None
    assert batch >= 301 * 1000


def test_a_worker_naming_a_sparse_gigabyte_is_refused_under_max_result_size(invoke: Invoke) -> None:
    """The worker skips its own check and names 1 GiB it never touched by address: the
    caller refuses it from the sizes alone (no 1 GiB copy), and the pool carries on."""
    caller = psutil.Process()
    with freshproc.Pool(1, max_result_size="1MB") as pool:
        before = caller.memory_info().rss
        with pytest.raises(ProtocolError, match=r"over the \d+ bytes its limit allows"):
            invoke(pool, "tests.hostile", "name_sparse_region", 1 << 30)
        assert caller.memory_info().rss - before < 256 * MiB
        assert invoke(pool, "tests.hostile", "sized", 10) == b"r" * 10


def test_a_worker_naming_a_sparse_gigabyte_is_refused_without_a_limit(invoke: Invoke) -> None:
    """Without max_result_size the bound is the worker's own memory: it does not hold the
    gigabyte it names."""
    with freshproc.Pool(1) as pool:
        with pytest.raises(ProtocolError, match="more than it holds"):
            invoke(pool, "tests.hostile", "name_sparse_region", 1 << 30)
        assert invoke(pool, "tests.hostile", "sized", 10) == b"r" * 10


def test_a_worker_naming_an_absurd_size_is_a_protocol_error(invoke: Invoke) -> None:
    """A size near 2**63 used to escape as a raw OverflowError from mmap."""
    with freshproc.Pool(1) as pool:
        with pytest.raises(ProtocolError, match="not a size a buffer can have"):
            invoke(pool, "tests.hostile", "name_size", 2**63 - 16)
        assert invoke(pool, "tests.hostile", "sized", 3) == b"rrr"


def test_honest_large_results_pass_the_checks() -> None:
    """A writable mmap result within the limit travels in a sealed memfd and is accepted:
    the checks refuse lies, not large results."""
    region = mmap.mmap(-1, MiB)
    region[:5] = b"hello"
    outgoing = _serialization.dumps_to_wire(pickle.PickleBuffer(region), "result", direct=False)
    received = _serialization.loads_from_wire(
        outgoing.payload, outgoing.fds, "result", os.getpid(), max_bytes=_serialization.reply_limit(MiB)
    )
    assert bytes(memoryview(received)[:5]) == b"hello"  # type: ignore[arg-type]


# -- 2. memfds are sealed ----------------------------------------------------------------


def test_seal_constants_match_the_kernel_headers() -> None:
    assert _buffers._F_ADD_SEALS == fcntl.F_ADD_SEALS
    assert _buffers._F_GET_SEALS == fcntl.F_GET_SEALS
    assert _buffers._SEALS == fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def test_written_segments_are_sealed_and_cannot_be_truncated() -> None:
    """What either side sends in a memfd can no longer shrink, grow or change."""
    fd = _buffers.write_segment(memoryview(b"sealed" * 1000))
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals == fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"changed", 0)
        assert bytes(_buffers.map_segment(fd, 6000)) == b"sealed" * 1000
    finally:
        os.close(fd)


def _unsealed(data: bytes, *, allow_sealing: bool = False) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if allow_sealing else 0))
    os.write(fd, data)
    return fd


@pytest.mark.parametrize(
    ("make_fd", "size", "words"),
    [
        pytest.param(lambda: _unsealed(b"x" * 100), 100, "not sealed", id="unsealable"),
        pytest.param(lambda: _unsealed(b"x" * 100, allow_sealing=True), 100, "not sealed", id="unsealed"),
        pytest.param(lambda: _buffers.write_segment(memoryview(b"x" * 100)), 50, "holds 100 bytes", id="larger"),
        pytest.param(lambda: _buffers.write_segment(memoryview(b"x" * 100)), 200, "holds 100 bytes", id="smaller"),
        pytest.param(lambda: os.pipe()[0], 100, "not a sealable memfd", id="pipe"),
    ],
)
def test_unsealed_or_wrongly_sized_memfds_are_refused(make_fd: Callable[[], int], size: int, words: str) -> None:
    fd = make_fd()
    with pytest.raises(ProtocolError, match=words):
        _serialization.from_wire(Payload(b"inline", (Segment(size),)), [fd], os.getpid())
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_a_worker_sending_an_unsealed_memfd_is_refused(invoke: Invoke) -> None:
    """A result in a memfd its worker could still truncate is a ProtocolError; the
    caller survives and the pool carries on."""
    with freshproc.Pool(1) as pool:
        with pytest.raises(ProtocolError, match="not sealed"):
            invoke(pool, "tests.hostile", "return_in_unsealed_memfd", MiB)
        assert invoke(pool, "tests.hostile", "sized", 1) == b"r"


def test_a_worker_cannot_truncate_a_memfd_it_sent(invoke: Invoke) -> None:
    """The worker keeps a duplicate of the memfd its result went in and truncates it once
    the reply is sent: the seal makes that fail with EPERM, so the caller's mapping stays
    whole (truncated, touching it would kill the caller with SIGBUS)."""
    with freshproc.Pool(1) as pool:
        result = invoke(pool, "tests.hostile", "return_then_truncate", MiB)
        assert invoke(pool, "tests.hostile", "truncation_outcome") == ["EPERM"]
        assert isinstance(result, memoryview)
        assert result.nbytes == MiB
        assert bytes(result[-4096:]) == bytes(4096)  # every page is still there


def test_the_worker_refuses_arguments_in_an_unsealed_memfd(tmp_path: Path) -> None:
    """Caller to worker too: a request whose pickle comes in an unsealed memfd ends the
    worker before anything runs."""
    marker = tmp_path / "ran"
    request: tuple[object, ...] = (_worker.BY_VALUE, _touch, (str(marker),), {}, False)
    data, _ = _serialization.dumps(request)
    channel, child_end = _transport.channel_pair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        channel.close()
        _worker.serve(child_end)
    child_end.close()
    try:
        fd = _unsealed(data, allow_sealing=True)
        _transport.send(channel, CallRequest(1, Payload(None, (Segment(len(data)),))), [fd])
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == _worker.EXIT_PROTOCOL_ERROR
        assert not marker.exists()
    finally:
        channel.close()


def _touch(path: str) -> None:
    Path(path).write_text("ran")
