"""Serialization on bytes: the fast path, the by-value fallback, out-of-band segments and
how worker failures are described and rebuilt."""

from __future__ import annotations

import os
import pickle

import pytest

import freshproc
from freshproc import _serialization
from freshproc._errors import RemoteTraceback


@pytest.fixture(params=[False, True], ids=["memfd", "by-address"])
def direct(request: pytest.FixtureRequest) -> bool:
    """Segments travel in memfds, or by address (copied from this very process)."""
    return bool(request.param)


def _round_trip(obj: object, *, direct: bool = False) -> object:
    outgoing = _serialization.dumps_to_wire(obj, "arguments", direct=direct)
    received = _serialization.loads_from_wire(outgoing.payload, outgoing.fds, "arguments", os.getpid())
    del outgoing  # the keepalive may go once the receiver has copied
    return received


def test_plain_data_uses_the_c_pickler() -> None:
    """Plain data needs no cloudpickle: the stream is what pickle itself produces."""
    data, buffers = _serialization.dumps({"a": [1, 2.5, "x"]})
    assert data == pickle.dumps({"a": [1, 2.5, "x"]}, protocol=5)
    assert buffers == []


def test_lambdas_and_closures_travel_by_value() -> None:
    offset = 10
    closure = _round_trip(lambda x: x + offset)
    assert callable(closure)
    assert closure(1) == 11


def main_function() -> int:
    return 42


def test_objects_named_after_main_go_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A function whose module is __main__ is pickled by cloudpickle (a worker has no
    such __main__), detected from the fast path's output."""
    monkeypatch.setattr(main_function, "__module__", "__main__")
    import __main__

    monkeypatch.setattr(__main__, "main_function", main_function, raising=False)
    data, _ = _serialization.dumps(main_function)
    assert b"cloudpickle" in data


def test_large_buffers_travel_out_of_band_and_small_ones_inline(direct: bool) -> None:
    big = bytearray(os.urandom(_serialization.OUT_OF_BAND_THRESHOLD))
    small = bytearray(b"tiny")
    outgoing = _serialization.dumps_to_wire(
        [pickle.PickleBuffer(big), pickle.PickleBuffer(small)], "arguments", direct=direct
    )
    assert len(outgoing.fds) == (0 if direct else 1)
    assert [segment.size for segment in outgoing.payload.segments] == [len(big)]
    assert (outgoing.payload.segments[0].address is not None) == direct
    loaded = _serialization.loads_from_wire(outgoing.payload, outgoing.fds, "arguments", os.getpid())
    assert isinstance(loaded, list)
    assert bytes(loaded[0]) == bytes(big)
    assert bytes(loaded[1]) == b"tiny"


def test_numpy_arrays_arrive_writable_and_equal(direct: bool) -> None:
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(1_000_000, dtype=numpy.float64)
    copy = _round_trip(array, direct=direct)
    assert isinstance(copy, numpy.ndarray)
    assert numpy.array_equal(copy, array)
    copy[0] = -1.0  # private mapping: writable, and the sender's array is untouched
    assert array[0] == 0.0


def test_large_pickles_leave_the_frame(direct: bool) -> None:
    outgoing = _serialization.dumps_to_wire("x" * 200_000, "result", direct=direct)
    assert outgoing.payload.inline is None
    received = _serialization.loads_from_wire(outgoing.payload, outgoing.fds, "result", os.getpid())
    assert received == "x" * 200_000


def test_read_only_buffers_fall_back_to_memfd() -> None:
    frozen = memoryview(bytes(_serialization.OUT_OF_BAND_THRESHOLD))
    outgoing = _serialization.dumps_to_wire(pickle.PickleBuffer(frozen), "arguments", direct=True)
    assert outgoing.payload.segments[0].address is None
    assert len(outgoing.fds) == 1
    outgoing.close()


def test_copying_from_a_process_that_is_gone_is_a_clear_error() -> None:
    outgoing = _serialization.dumps_to_wire(bytearray(_serialization.OUT_OF_BAND_THRESHOLD), "result", direct=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits at once
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(freshproc.SerializationError, match="cannot receive"):
        _serialization.loads_from_wire(outgoing.payload, outgoing.fds, "result", pid)


def test_unpicklable_arguments_name_the_type() -> None:
    import threading

    with pytest.raises(freshproc.SerializationError, match="lock") as info:
        _serialization.dumps_to_wire(threading.Lock(), "arguments", direct=False)
    assert info.value.direction == "arguments"
    assert info.value.stage == "dump"


def test_result_size_limit() -> None:
    with pytest.raises(freshproc.SerializationError, match="over the limit"):
        _serialization.dumps_to_wire(b"x" * 1000, "result", direct=False, max_size=100)


class Unrebuildable(Exception):
    # Pickles, but neither its args nor a bare cls.__new__(cls) can make one again.
    def __new__(cls, a: int, b: int) -> Unrebuildable:
        return super().__new__(cls, a)

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)


def test_failure_keeps_type_and_remote_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        failure = _serialization.failure_from_exception(exc)
    rebuilt = _serialization.exception_from_failure(failure)
    assert type(rebuilt) is KeyError
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    assert "test_failure_keeps_type_and_remote_traceback" in str(rebuilt.__cause__)


def test_unrebuildable_exception_becomes_remote_error() -> None:
    try:
        raise Unrebuildable(1, 2)
    except Unrebuildable as exc:
        failure = _serialization.failure_from_exception(exc)
    rebuilt = _serialization.exception_from_failure(failure)
    assert isinstance(rebuilt, freshproc.RemoteError)
    assert rebuilt.type_name.endswith("Unrebuildable")
    assert "Traceback" in rebuilt.remote_traceback


def test_system_exit_does_not_end_the_caller() -> None:
    try:
        raise SystemExit(3)
    except SystemExit as exc:
        failure = _serialization.failure_from_exception(exc)
    rebuilt = _serialization.exception_from_failure(failure)
    assert isinstance(rebuilt, freshproc.RemoteError)
    assert rebuilt.type_name == "SystemExit"
