"""Wire safety: nothing a peer sends can make its receiver allocate without bound, die of
SIGBUS, or lose a worker to a pickling quirk. Three layers: serialization on bytes, the
worker loop in a forked child, and real pools whose workers are turned hostile by their
own target (``tests.hostile``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import freshproc
from freshproc import _buffers, _serialization, _transport, _worker
from freshproc._errors import ProtocolError
from freshproc._protocol import CallRequest, Payload, Segment
from tests.conftest import Invoke

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


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
