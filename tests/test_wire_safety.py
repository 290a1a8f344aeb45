"""Wire safety: nothing a peer sends can make its receiver allocate without bound, die of
SIGBUS, or lose a worker to a pickling quirk. Three layers: serialization on bytes, the
worker loop in a forked child, and real pools whose workers are turned hostile by their
own target (``tests.hostile``)."""

from __future__ import annotations

import fcntl
import io
import mmap
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import freshproc
from freshproc import _buffers, _capture, _serialization, _transport, _worker
from freshproc._errors import ProtocolError
from freshproc._protocol import CallRequest, Payload, Segment
from tests import hostile
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
    with pytest.raises(ProtocolError, match="100 bytes, over the 99 bytes"):
        _serialization.from_wire(Payload(b"p" * 100), [], os.getpid(), max_bytes=99)
    assert _serialization.from_wire(Payload(b"p" * 100), [], os.getpid(), max_bytes=100) == (b"p" * 100, [])


def test_descriptors_must_match_memfd_segments() -> None:
    """A descriptor no segment accounts for is refused (and closed)."""
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
    """The allowance is one limit per call plus one for captured output, with a little
    room for framing; no limit, no allowance."""
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
    """The constants the worker runtime uses through libc are the fcntl module's."""
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


def _sealed_sparse(size: int) -> int:
    fd = os.memfd_create("test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
    return fd


@pytest.mark.parametrize(
    ("make_fd", "size", "words"),
    [
        pytest.param(lambda: _unsealed(b"x" * 100), 100, "not sealed", id="unsealable"),
        pytest.param(lambda: _unsealed(b"x" * 100, allow_sealing=True), 100, "not sealed", id="unsealed"),
        pytest.param(lambda: _buffers.write_segment(memoryview(b"x" * 100)), 50, "holds 100 bytes", id="larger"),
        pytest.param(lambda: _buffers.write_segment(memoryview(b"x" * 100)), 200, "holds 100 bytes", id="smaller"),
        pytest.param(lambda: os.pipe()[0], 100, "not a sealable memfd", id="pipe"),
        pytest.param(lambda: _sealed_sparse(1 << 30), 1 << 30, "sparse: 1073741824 bytes announced, 0", id="sparse"),
    ],
)
def test_unsealed_or_wrongly_sized_memfds_are_refused(make_fd: Callable[[], int], size: int, words: str) -> None:
    """Only a sealed memfd holding exactly the announced bytes, all written, is mapped;
    anything else is a ProtocolError and its descriptor is closed."""
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


# -- 3. failures and captured output are bounded -----------------------------------------


def test_a_huge_exception_message_is_truncated_under_max_result_size(invoke: Invoke) -> None:
    """A 40 MiB message under max_result_size="1MB" arrives cut to a fraction of the
    limit, saying how much went; so does the traceback text."""
    with freshproc.Pool(1, max_result_size="1MB") as pool, pytest.raises(freshproc.RemoteError) as info:
        invoke(pool, "tests.hostile", "raise_huge_message", 40 * MiB)
    error = info.value
    assert error.type_name == "ValueError"
    assert error.message.startswith("mmmm")
    assert error.message.endswith("... [truncated 39.8 MiB]")
    assert len(error.message) <= 250_000 + 100
    assert len(error.remote_traceback) <= 250_000 + 100
    assert "[truncated" in error.remote_traceback
    assert error.remote_traceback.rstrip().endswith("m")  # the end of the traceback is kept


def test_failure_text_has_a_generous_default_bound(invoke: Invoke) -> None:
    """Without max_result_size a failure record still stays within 16 MiB."""
    with freshproc.Pool(1) as pool, pytest.raises(freshproc.RemoteError) as info:
        invoke(pool, "tests.hostile", "raise_huge_message", 40 * MiB)
    assert len(info.value.message) <= _serialization.DEFAULT_FAILURE_LIMIT // 4 + 100
    assert "[truncated" in info.value.message


def test_bounded_text_cuts_utf8_safely() -> None:
    """Cuts fall on UTF-8 boundaries, in bytes, and the marker says how much went."""
    assert _serialization.bounded_text("short", 100) == "short"
    cut = _serialization.bounded_text("é" * 1000, 101)
    assert cut == "é" * 50 + "... [truncated 1.9 KiB]"
    kept_end = _serialization.bounded_text("a" * 500 + "b" * 500, 100, keep_end=True)
    assert kept_end == "a" * 50 + "\n... [truncated 900 bytes]\n" + "b" * 50
    assert _serialization.truncation_marker(40 * MiB) == "... [truncated 40.0 MiB]"


def test_captured_output_is_truncated_under_max_result_size() -> None:
    """Captured stdout counts against the same limit, cut in the middle with a marker;
    without a limit it stays whole."""
    with freshproc.Pool(1, max_result_size="1MB", capture_output=True) as pool:
        captured = pool.run_captured_sync(hostile.print_then_return, 5 * MiB)
        with pytest.raises(ValueError, match="after printing") as info:
            pool.call_sync("tests.hostile", "print_then_raise_huge", 5 * MiB)
    assert captured.value == 5 * MiB
    assert len(captured.stdout) <= 1_000_000 + 100
    assert "[truncated 4.0 MiB]" in captured.stdout
    stdout, _ = info.value.captured_output  # type: ignore[attr-defined]
    assert len(stdout) <= 1_000_000 + 100
    assert "[truncated" in stdout
    with freshproc.Pool(1, capture_output=True) as pool:
        whole = pool.run_captured_sync(hostile.print_then_return, 5 * MiB)
    assert whole.stdout == "o" * 5 * MiB


def test_output_budget_is_shared_between_the_streams() -> None:
    """stdout and stderr share one budget; a small stream leaves the rest to the other."""
    assert _capture._share((10, 20), None) == (10, 20)
    assert _capture._share((10, 20), 100) == (10, 20)
    assert _capture._share((10, 500), 100) == (10, 90)
    assert _capture._share((500, 10), 100) == (90, 10)
    assert _capture._share((500, 500), 100) == (50, 50)


def test_the_caller_refuses_a_failure_record_over_the_limit(invoke: Invoke) -> None:
    """A worker that sends a 40 MiB failure record under max_result_size="1MB" gets a
    ProtocolError before the caller copies it."""
    with freshproc.Pool(1, max_result_size="1MB") as pool:
        with pytest.raises(ProtocolError, match="its limit allows"):
            invoke(pool, "tests.hostile", "fail_with_oversized_record", 40 * MiB)
        assert invoke(pool, "tests.hostile", "sized", 2) == b"rr"


# -- 4. an exception carrying a large buffer keeps its type ------------------------------


def test_an_exception_carrying_a_large_array_keeps_its_type(invoke: Invoke) -> None:
    """Its buffer (2.4 MB, over the out-of-band threshold) is pickled in band, so the
    exception itself travels: same type, same array."""
    numpy = pytest.importorskip("numpy")
    with freshproc.Pool(1) as pool, pytest.raises(ValueError, match="bad") as info:
        invoke(pool, "tests.hostile", "raise_with_array", 300_000)
    assert type(info.value) is ValueError
    assert numpy.array_equal(info.value.args[1], numpy.arange(300_000, dtype=numpy.float64))


def test_the_pickled_exception_is_bounded_by_the_limit() -> None:
    """Under a limit, an exception whose pickle would take more than half of it travels
    as a RemoteError (type name, message, traceback) instead."""
    error = ValueError("bad", bytearray(100_000))
    failure = _serialization.failure_from_exception(error, max_bytes=100_000)
    assert failure[4] is None
    rebuilt = _serialization.exception_from_failure(failure)
    assert isinstance(rebuilt, freshproc.RemoteError)
    assert _serialization.failure_from_exception(error, max_bytes=300_000)[4] is not None


# -- 5. a BaseException while pickling the reply -----------------------------------------


@pytest.mark.parametrize("error", ["KeyboardInterrupt", "SystemExit"])
def test_base_exception_in_a_results_reduce_is_a_serialization_error(invoke: Invoke, error: str) -> None:
    """The worker reports it as the result's SerializationError and keeps serving."""
    with freshproc.Pool(1) as pool:
        worker = invoke(pool, "tests.hostile", "pid")
        with pytest.raises(freshproc.SerializationError, match=f"ReduceRaises: {error}") as info:
            invoke(pool, "tests.hostile", "return_reduce_raising", error)
        assert info.value.direction == "result"
        assert info.value.stage == "dump"
        assert invoke(pool, "tests.hostile", "pid") == worker
        assert pool.stats().workers_crashed == 0


@pytest.mark.parametrize("error", ["KeyboardInterrupt", "SystemExit"])
def test_base_exception_in_an_exceptions_reduce_keeps_the_worker(invoke: Invoke, error: str) -> None:
    """An exception whose ``__reduce__`` raises (KeyboardInterrupt and SystemExit
    included) does not end the worker: it is rebuilt in the caller from its args and
    ``__dict__`` (its module is imported here), and the worker keeps serving."""
    with freshproc.Pool(1) as pool:
        worker = invoke(pool, "tests.hostile", "pid")
        with pytest.raises(hostile.ExceptionReduceRaises, match=f"reduce raises {error}"):
            invoke(pool, "tests.hostile", "raise_reduce_raising", error)
        assert invoke(pool, "tests.hostile", "pid") == worker
        assert pool.stats().workers_crashed == 0


def test_execute_turns_system_exit_while_pickling_into_a_failure() -> None:
    """The worker loop in-process: the reply is a CallFailure, nothing propagates."""
    outgoing = _serialization.dumps_to_wire(
        (_worker.BY_NAME, ("tests.hostile", "return_reduce_raising"), ("SystemExit",), {}, False, "asyncio"),
        "arguments",
        direct=False,
    )
    reply, reply_outgoing = _worker._execute(5, outgoing.payload, outgoing.fds)
    data, _ = _serialization.from_wire(reply_outgoing.payload, reply_outgoing.fds, os.getpid())
    (kind, type_name, message, *_), _ = _serialization.loads_failure(data)
    assert type(reply).__name__ == "CallFailure"
    assert (kind, type_name) == ("result", "ReduceRaises")
    assert message == "SystemExit: raised while pickling"


# -- 6. open files are refused -----------------------------------------------------------


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.txt"
    path.write_text("contents\n")
    return path


@pytest.mark.parametrize("mode", ["r", "rb", "r+b"])
def test_an_open_file_returned_is_refused(invoke: Invoke, text_file: Path, mode: str) -> None:
    """cloudpickle would read a text file whole and send a StringIO: refused instead,
    naming the file."""
    refused = pytest.raises(freshproc.SerializationError, match=f"open file, {str(text_file)!r}")
    with freshproc.Pool(1) as pool, refused as info:
        invoke(pool, "tests.hostile", "open_file", str(text_file), mode)
    assert info.value.direction == "result"


@pytest.mark.parametrize("by_value", [False, True], ids=["by-name", "by-value"])
def test_an_open_file_passed_is_refused(text_file: Path, by_value: bool) -> None:
    """As an argument, through the C pickler (by name) or cloudpickle (a lambda target),
    the file is refused in the caller before anything is sent."""
    refused = pytest.raises(freshproc.SerializationError, match=f"open file, {str(text_file)!r}")
    with freshproc.Pool(1) as pool, text_file.open() as handle:
        send: Callable[[], object] = (
            (lambda: pool.run_sync(lambda file: file.read(), handle))
            if by_value
            else (lambda: pool.call_sync("tests.faults", "echo", handle))
        )
        with refused as info:
            send()
    assert info.value.direction == "arguments"
    assert info.value.stage == "dump"


def test_in_memory_streams_still_travel_by_value() -> None:
    """BytesIO and StringIO are values, not files: the fallback still pickles them."""
    data, _ = _serialization.dumps((lambda: 0, io.BytesIO(b"bytes"), io.StringIO("text")))
    _, binary, text = pickle.loads(data)
    assert binary.getvalue() == b"bytes"
    assert text.getvalue() == "text"


def _reduce_to_name(file: io.TextIOWrapper) -> tuple[object, ...]:
    return (str, (f"registered:{file.name}",))


def test_a_reducer_registered_in_copyreg_is_honoured(text_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's reducer wins over the refusal, and over cloudpickle's own file reducer."""
    import copyreg

    monkeypatch.setitem(copyreg.dispatch_table, io.TextIOWrapper, _reduce_to_name)
    with freshproc.Pool(1) as pool, text_file.open() as handle:
        received: object = pool.run_sync(lambda file: file, handle)
    assert received == f"registered:{text_file}"


# -- 7. the first import of cloudpickle is thread-safe -----------------------------------

_RACE = textwrap.dedent(
    """
    import sys, threading
    sys.setswitchinterval(1e-6)
    from freshproc import _serialization
    assert "cloudpickle" not in sys.modules
    barrier = threading.Barrier(8)
    errors = []

    def first_by_value_call():
        barrier.wait()
        try:
            _serialization.dumps(lambda x: x + 1)
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=first_by_value_call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(errors)
    sys.exit(1 if errors else 0)
    """
)


@pytest.mark.parametrize("attempt", range(6))
def test_eight_threads_importing_cloudpickle_at_once(attempt: int) -> None:
    """Fresh interpreters, so that cloudpickle is not imported yet: 8 threads released at
    once each pickle a lambda; none may see a partly initialized cloudpickle."""
    run = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=50, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


# -- 8. map's max_result_size is per result ----------------------------------------------


async def test_map_limit_applies_to_each_result_async() -> None:
    """300 results of 1 KB under "100KB" all arrive: one worker gets them in batches of
    150, whose replies hold 150 KB."""
    async with freshproc.Pool(1, max_result_size="100KB") as pool:
        results = [value async for value in pool.map(hostile.sized, [1000] * 300)]
    assert results == [b"r" * 1000] * 300


def test_map_limit_applies_to_each_result_blocking() -> None:
    """The blocking map too."""
    with freshproc.Pool(1, max_result_size="100KB") as pool:
        assert pool.map_sync(hostile.sized, [1000] * 300) == [b"r" * 1000] * 300


async def test_map_oversized_item_fails_alone() -> None:
    """One result over the limit is that item's SerializationError, raised in its turn."""
    sizes = [1000] * 10 + [200_000] + [1000] * 10
    received: list[bytes] = []

    async def consume(pool: freshproc.Pool) -> None:
        async for value in pool.map(hostile.sized, sizes):
            received.append(value)  # noqa: PERF401 - what arrived before the failure counts

    async with freshproc.Pool(2, max_result_size="100KB") as pool:
        with pytest.raises(freshproc.SerializationError, match="over the limit of 100000") as info:
            await consume(pool)
    assert received == [b"r" * 1000] * 10
    assert info.value.direction == "result"


def test_run_batch_checks_each_item_only_with_a_limit() -> None:
    """In the worker loop: an oversized item becomes its own "result" failure; without
    a limit nothing is checked (and nothing pickled twice)."""
    items = tuple((size,) for size in (10, 500, 10))
    outcomes, recycle = _worker._run_batch(hostile.sized, items, max_result_size=100)
    assert not recycle
    assert [ok for ok, _ in outcomes] == [True, False, True]
    failure: Any = outcomes[1][1]
    assert failure[:2] == ("result", "bytes")
    assert "over the limit of 100" in failure[2]
    unlimited, _ = _worker._run_batch(hostile.sized, items)
    assert [ok for ok, _ in unlimited] == [True, True, True]
