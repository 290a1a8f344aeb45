"""The worker loop against a hand-driven channel: it answers well-formed requests and exits,
without executing anything, on frames it cannot trust."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from freshproc import _serialization, _transport, _worker
from freshproc._protocol import HEADER, MAGIC, VERSION, CallFailure, CallRequest, CallResult, Shutdown

pytestmark = pytest.mark.timeout(30)


class ForkedWorker:
    """``_worker.serve`` in a forked child, driven over a real socket pair."""

    def __init__(self) -> None:
        self.channel, child_end = _transport.channel_pair()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            self.channel.close()
            _worker.serve(child_end)
        child_end.close()

    def exit_code(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


@pytest.fixture
def worker() -> Iterator[ForkedWorker]:
    forked = ForkedWorker()
    yield forked
    forked.channel.close()
    try:
        os.kill(forked.pid, 9)
        os.waitpid(forked.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _marker_path(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "executed")


def touch(path: str) -> str:
    with open(path, "w") as file:
        file.write("ran")
    return "touched"


def test_well_formed_request_gets_its_result_and_shutdown_ends_it(worker: ForkedWorker, tmp_path: object) -> None:
    outgoing = _serialization.dumps_to_wire(
        (_worker.BY_VALUE, touch, (_marker_path(tmp_path),), {}, False, "asyncio"), "arguments", direct=False
    )
    _transport.send(worker.channel, CallRequest(7, outgoing.payload), outgoing.fds)
    outgoing.close()
    received = _transport.recv(worker.channel)
    assert received is not None
    message, reply_fds = received
    assert isinstance(message, CallResult)
    assert message.call_id == 7
    assert _serialization.loads_from_wire(message.payload, reply_fds, "result", worker.pid) == "touched"
    _transport.send(worker.channel, Shutdown())
    assert worker.exit_code() == 0


@pytest.mark.parametrize(
    "frame",
    [
        b"garbage that is not a frame",
        MAGIC + bytes([VERSION + 1, 1]) + b"\x00\x00\x00\x00",
        HEADER.pack(MAGIC, VERSION, 1, 50) + b"short",
    ],
    ids=["garbage", "wrong-version", "truncated"],
)
def test_untrusted_frames_end_the_worker_without_executing_anything(
    worker: ForkedWorker, frame: bytes, tmp_path: object
) -> None:
    worker.channel.send(frame)
    assert worker.exit_code() == _worker.EXIT_PROTOCOL_ERROR
    assert not os.path.exists(_marker_path(tmp_path))


def test_a_request_whose_payload_lies_is_refused(worker: ForkedWorker) -> None:
    """A call frame announcing descriptors that never came is a protocol error."""
    from freshproc._protocol import Payload, Segment, encode

    worker.channel.send(encode(CallRequest(1, Payload(None, (Segment(100),)))))
    assert worker.exit_code() == _worker.EXIT_PROTOCOL_ERROR


def test_end_of_file_ends_the_worker(worker: ForkedWorker) -> None:
    worker.channel.shutdown(socket.SHUT_RDWR)
    assert worker.exit_code() == 0


def test_arguments_that_cannot_be_unpickled_come_back_as_serialization_failure(worker: ForkedWorker) -> None:
    outgoing = _serialization.to_wire(b"\x80\x05not a pickle", [], direct=False)
    _transport.send(worker.channel, CallRequest(3, outgoing.payload), outgoing.fds)
    received = _transport.recv(worker.channel)
    assert received is not None
    message, reply_fds = received
    assert isinstance(message, CallFailure)
    data, _ = _serialization.from_wire(message.payload, reply_fds, worker.pid)
    (kind, *_), _captured = _serialization.loads_failure(data)
    assert kind == "arguments"
