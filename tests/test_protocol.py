"""The wire protocol on bytes: round trips, and every malformed frame rejected."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshproc._errors import ProtocolError
from freshproc._protocol import (
    HEADER,
    MAGIC,
    MAX_FRAME,
    VERSION,
    CallFailure,
    CallRequest,
    CallResult,
    FilesLoaded,
    Message,
    OpenChannels,
    Payload,
    Segment,
    SegmentsCopied,
    Shutdown,
    SpawnWorkers,
    TemplateFailed,
    TemplateReady,
    TerminateWorker,
    WorkerExited,
    WorkerSpawned,
    decode,
    encode,
    fd_count,
)

MESSAGES: list[Message] = [
    CallRequest(1, Payload(b"pickle")),
    CallRequest(2**64 - 1, Payload(None, (Segment(10), Segment(20, 0x7F0000001000)))),
    CallResult(3, Payload(b"", ()), recycle=False),
    CallResult(4, Payload(b"x", (Segment(5),)), recycle=True),
    CallFailure(5, Payload(b"failure")),
    Shutdown(),
    SpawnWorkers(3),
    TerminateWorker(1234, 0.5),
    TemplateReady(99),
    TemplateReady(98, direct_copy=True),
    TemplateFailed("Traceback ... ünïcode"),
    WorkerSpawned(4321),
    WorkerExited(10, 0, None),
    WorkerExited(11, None, 9),
    SegmentsCopied(),
    FilesLoaded(1_700_000_000_000_000_000, ("/srv/app/plugin.py", "/srv/app/ext.cpython-311.so")),
    FilesLoaded(0, ()),
    FilesLoaded(5, ("/odd/\udcff-name.py",)),
    OpenChannels(3),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_every_message_round_trips(message: Message) -> None:
    """encode then decode gives back an equal message of the same kind (messages are
    tuples: an empty Shutdown would equal an empty SegmentsCopied)."""
    decoded = decode(encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


def test_descriptor_counts_follow_the_payload() -> None:
    """A frame announces exactly the descriptors that must travel with it."""
    assert fd_count(CallRequest(1, Payload(None, (Segment(1), Segment(2), Segment(3))))) == 3
    assert fd_count(CallRequest(1, Payload(None, (Segment(1), Segment(2, 4096))))) == 1
    assert fd_count(CallResult(1, Payload(b"x"))) == 0
    assert fd_count(WorkerSpawned(1)) == 1
    assert fd_count(Shutdown()) == 0
    assert fd_count(OpenChannels(5)) == 5


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (b"", "truncated"),
        (b"FP\x01", "truncated"),
        (b"XX" + bytes([VERSION, 4]) + struct.pack("!I", 0), "magic"),
        (MAGIC + bytes([VERSION + 1, 4]) + struct.pack("!I", 0), "version"),
        (MAGIC + bytes([VERSION, 200]) + struct.pack("!I", 0), "unknown frame kind"),
        (MAGIC + bytes([VERSION, 4]) + struct.pack("!I", 5) + b"abc", "header says"),
        (MAGIC + bytes([VERSION, 4]) + struct.pack("!I", 1) + b"a", "empty body"),
        (MAGIC + bytes([VERSION, 5]) + struct.pack("!I", 2) + b"ab", "expected 4"),
        (MAGIC + bytes([VERSION, 1]) + struct.pack("!I", 3) + b"abc", "malformed"),
        (b"FP" + bytes([VERSION, 4]) + struct.pack("!I", MAX_FRAME) + bytes(MAX_FRAME), "oversized"),
    ],
)
def test_malformed_frames_are_protocol_errors(frame: bytes, complaint: str) -> None:
    """Each kind of damage is named in the error."""
    with pytest.raises(ProtocolError, match=complaint):
        decode(frame)


def test_call_flags_and_segment_tables_are_checked() -> None:
    """A call frame that lies about its segments or flags is rejected."""
    good = encode(CallRequest(7, Payload(b"data", (Segment(1), Segment(2)))))
    body = bytearray(good[HEADER.size :])
    body[8] = 0xFF  # unknown flag bits
    with pytest.raises(ProtocolError, match="flags"):
        decode(HEADER.pack(MAGIC, VERSION, 1, len(body)) + bytes(body))
    short = good[: HEADER.size + 11 + 4]  # segment table cut short
    bad_entry = bytearray(good)
    bad_entry[HEADER.size + 11] = 7  # an unknown segment kind
    with pytest.raises(ProtocolError, match="segment entry"):
        decode(bytes(bad_entry))
    with pytest.raises(ProtocolError):
        decode(HEADER.pack(MAGIC, VERSION, 1, len(short) - HEADER.size) + short[HEADER.size :])
    recycle_request = encode(CallResult(7, Payload(b"x"), recycle=True))
    with pytest.raises(ProtocolError, match="recycle"):
        decode(recycle_request[:3] + bytes([1]) + recycle_request[4:])


def test_negative_or_nan_grace_is_rejected() -> None:
    for grace in (-1.0, float("nan")):
        frame = HEADER.pack(MAGIC, VERSION, 6, 12) + struct.pack("!id", 5, grace)
        with pytest.raises(ProtocolError, match="grace"):
            decode(frame)


def test_encoding_refuses_oversized_frames() -> None:
    with pytest.raises(ProtocolError, match="exceeds"):
        encode(CallRequest(1, Payload(bytes(MAX_FRAME))))


@given(st.binary(max_size=256))
def test_decoder_never_fails_other_than_protocol_error(data: bytes) -> None:
    """Fuzz: arbitrary bytes decode to a message or raise ProtocolError, nothing else."""
    try:
        decode(data)
    except ProtocolError:
        pass


@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_frames_decode_or_fail_cleanly(message: Message, data: st.DataObject) -> None:
    """Fuzz: a valid frame with random bytes flipped, cut or appended never escapes as
    anything but a message or a ProtocolError."""
    frame = bytearray(encode(message))
    for _ in range(data.draw(st.integers(0, 4))):
        index = data.draw(st.integers(0, len(frame) - 1))
        frame[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    mutated = bytes(frame[:cut]) + data.draw(st.binary(max_size=16))
    try:
        decode(mutated)
    except ProtocolError:
        pass
