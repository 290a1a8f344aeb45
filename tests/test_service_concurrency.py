"""``ServiceOptions(max_concurrency=N)``: up to N calls run at once in one service process
(``async def`` methods interleave on the object's event loop, plain methods on N threads);
the default runs them one at a time. Synchronized by barriers inside the object and by
handshakes through pipes, never sleeps."""

from __future__ import annotations

import _socket
import collections
import os
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import freshproc
from freshproc import _hosted, _transport
from tests.handshake import Handshake
from tests.service_targets import Gathering, read_lines

#: A backstop for a test that would otherwise hang on a bug (not a wait).
DEADLINE = 60


def concurrent(n: int, **options: object) -> freshproc.ServiceOptions:
    return freshproc.ServiceOptions(max_concurrency=n, **options)  # type: ignore[arg-type]


async def test_async_methods_interleave_on_the_objects_event_loop() -> None:
    """Four ``async def`` calls are all running at once (each waits until all four have
    arrived), in one process, on one thread: the object's event loop."""
    async with freshproc.service(Gathering, 4, options=concurrent(4)) as svc:
        threads: list[int] = []

        async def gather() -> None:
            threads.append(await svc.call(Gathering.gather_async))

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(gather)
        assert len(threads) == 4
        assert len(set(threads)) == 1
        assert len(svc.pids) == 1


async def test_plain_methods_run_on_as_many_threads() -> None:
    """Four plain calls are all running at once (a barrier of four inside the object), on
    four threads of the one process."""
    async with freshproc.service(Gathering, 4, options=concurrent(4)) as svc:
        threads: list[int] = []

        async def gather() -> None:
            threads.append(await svc.gather())

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(gather)
        assert len(set(threads)) == 4


def test_plain_and_async_methods_run_at_once_blocking() -> None:
    """The same from four threads calling ``call_sync``, for both kinds of method."""
    with freshproc.service(Gathering, 4, options=concurrent(4)) as svc:
        for method, kinds in (("gather", 4), ("gather_async", 1)):
            threads: list[int] = []
            callers = [
                threading.Thread(target=lambda name=method, into=threads: into.append(svc.call_sync(name)))
                for _ in range(4)
            ]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(DEADLINE)
                assert not caller.is_alive()
            assert len(threads) == 4
            assert len(set(threads)) == kinds, method


async def test_by_default_calls_run_one_at_a_time(tmp_path: Path) -> None:
    """Without ``max_concurrency``, calls made at once run one after the other: each one's
    start and end are next to each other in the record, never interleaved."""
    path = tmp_path / "record"
    async with freshproc.service(Gathering, 1) as svc:
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as group:
                for index in range(6):
                    group.start_soon(svc.call, Gathering.record, str(path), index)
    lines = read_lines(path)
    assert len(lines) == 12
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        assert (enter.split()[0], leave.split()[0], enter.split()[1]) == ("enter", "exit", leave.split()[1])


def test_calls_from_one_caller_run_in_the_order_made(tmp_path: Path) -> None:
    """Calls made one after the other run in that order, with or without concurrency."""
    for options in (freshproc.ServiceOptions(), concurrent(3)):
        path = tmp_path / f"record-{options.max_concurrency}"
        with freshproc.service(Gathering, 1, options=options) as svc:
            for index in range(5):
                svc.call_sync("record", str(path), index)
        assert [line for line in read_lines(path) if line.startswith("enter")] == [f"enter {i}" for i in range(5)]


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (65, ValueError), (True, TypeError), (2.0, TypeError)],
)
def test_nonsense_max_concurrency_is_refused(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_concurrency"):
        freshproc.ServiceOptions(max_concurrency=value)  # type: ignore[arg-type]


def test_capture_output_needs_one_call_at_a_time() -> None:
    """Capturing redirects the process's own output for one call: not with several."""
    with pytest.raises(ValueError, match="capture_output"):
        freshproc.ServiceOptions(max_concurrency=2, capture_output=True)


async def test_cancelling_one_call_ends_the_others_on_its_process() -> None:
    """Two calls run at once; cancelling one ends the process: the other raises
    WorkerCrashedError, the restart is counted once, and the next call runs on a new
    process."""
    held = [Handshake(), Handshake()]
    async with freshproc.service(Gathering, 1, options=concurrent(2)) as svc:
        pid = await svc.getpid()
        scope = anyio.CancelScope()
        outcomes: list[object] = []

        async def victim() -> None:
            with scope:
                outcomes.append(await svc.hold_async(held[0].spec))

        async def bystander() -> None:
            with pytest.raises(freshproc.WorkerCrashedError) as crashed:
                await svc.hold(held[1].spec)
            outcomes.append(crashed.value.pid)

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as group:
                group.start_soon(victim)
                group.start_soon(bystander)
                for handshake in held:
                    await anyio.to_thread.run_sync(handshake.wait_started)
                scope.cancel()
        assert scope.cancelled_caught
        assert outcomes == [pid]
        assert await svc.getpid() != pid
        assert svc.restarts == 1
        assert svc.stats().calls_cancelled == 1
    for handshake in held:
        handshake.close()


def test_a_crash_ends_the_calls_running_beside_it_blocking() -> None:
    """A segfault in one call ends the process; the call running beside it raises
    WorkerCrashedError too; one restart; the next call runs on a new process."""
    handshake = Handshake()
    errors: list[BaseException] = []
    with freshproc.service(Gathering, 1, options=concurrent(2)) as svc:
        pid = svc.call_sync("getpid")

        def bystander() -> None:
            try:
                svc.call_sync("hold", handshake.spec)
            except freshproc.WorkerCrashedError as exc:
                errors.append(exc)

        thread = threading.Thread(target=bystander)
        thread.start()
        handshake.wait_started()
        with pytest.raises(freshproc.WorkerCrashedError) as crashed:
            svc.call_sync("segfault")
        thread.join(DEADLINE)
        assert not thread.is_alive()
        assert [error.pid for error in errors] == [crashed.value.pid] == [pid]  # type: ignore[attr-defined]
        assert svc.call_sync("getpid") != pid
        assert svc.restarts == 1
    handshake.close()


async def test_replicas_times_concurrency_spread_over_the_least_busy() -> None:
    """Two replicas of two slots each: four calls held at once run two in each process
    (each call goes to the process with the most free slots)."""
    async with freshproc.service(Gathering, 2, options=concurrent(2, replicas=2)) as svc:
        handshakes = [Handshake() for _ in range(4)]
        pids: list[int] = []

        async def hold(handshake: Handshake) -> None:
            pids.append(await svc.hold(handshake.spec))

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as group:
                for handshake in handshakes:
                    group.start_soon(hold, handshake)
                for handshake in handshakes:
                    await anyio.to_thread.run_sync(handshake.wait_started)
                for handshake in handshakes:
                    handshake.release()
        assert sorted(collections.Counter(pids).values()) == [2, 2]
        assert sorted(set(pids)) == sorted(svc.pids)
        for handshake in handshakes:
            handshake.close()


def test_restart_replaces_every_channel() -> None:
    """After ``restart()`` the new process again runs calls at once (its channels are new)."""
    with freshproc.service(Gathering, 3, options=concurrent(3)) as svc:
        old = svc.call_sync("getpid")
        svc.restart_sync()
        assert svc.call_sync("getpid") != old
        threads: list[int] = []
        callers = [threading.Thread(target=lambda: threads.append(svc.call_sync("gather"))) for _ in range(3)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(DEADLINE)
        assert len(set(threads)) == 3
        assert os.getpid() not in svc.pids


def test_a_forked_caller_refuses_the_service_and_holds_none_of_its_channels() -> None:
    """A process forked from the caller closes its copies of the slots' channels and its
    calls raise PoolClosedError saying the service belongs to the parent."""
    with freshproc.service(Gathering, 1, options=concurrent(3)) as svc:
        svc.call_sync("getpid")
        sockets_before = _socket_fds()
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read_end)
            verdict = "no error"
            try:
                svc.call_sync("getpid")
            except freshproc.PoolClosedError as exc:
                verdict = "refused" if "forked" in str(exc) else repr(exc)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                verdict = repr(exc)
            kept = len(_socket_fds() & sockets_before)
            os.write(write_end, f"{verdict} {kept}".encode())
            os._exit(0)
        os.close(write_end)
        report = os.read(read_end, 1000).decode()
        os.close(read_end)
        os.waitpid(child, 0)
        assert report == "refused 0", report
        assert svc.call_sync("ping") == "pong"


def _socket_fds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.add(int(name))
        except OSError:
            continue
    return found


def test_closing_while_calls_run_ends_them_and_leaks_nothing(fd_guard: Callable[[], None]) -> None:
    """Closing a service while a call runs in it (beside a free slot) ends that call with
    ServiceClosedError; no descriptor is left open."""
    handshake = Handshake()
    errors: list[BaseException] = []
    svc = freshproc.service(Gathering, 1, options=concurrent(2))
    svc.start_sync()

    def held() -> None:
        try:
            svc.call_sync("hold", handshake.spec)
        except freshproc.ServiceClosedError as exc:
            errors.append(exc)

    thread = threading.Thread(target=held)
    thread.start()
    handshake.wait_started()
    svc.close()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert [type(error) for error in errors] == [freshproc.ServiceClosedError]
    handshake.close()
    fd_guard()


def test_a_process_closes_each_extra_channel_once_served_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the service's process, the thread serving an extra channel closes it when the
    caller's end goes (rather than leaving an unclosed socket to the garbage collector,
    which warns as the thread ends)."""
    monkeypatch.setattr(_hosted.state, "concurrent", _hosted.state.concurrent)
    pairs = [_transport.channel_pair() for _ in range(3)]
    served: list[_socket.socket] = []

    def serve_to_end(channel: _socket.socket) -> None:
        served.append(channel)
        while channel.recv(16):
            pass

    before = set(threading.enumerate())
    _hosted.serve_channels([theirs for _, theirs in pairs], serve_to_end)
    threads = [
        thread for thread in threading.enumerate() if thread not in before and thread.name == "freshproc-channel"
    ]
    for ours, _ in pairs:
        ours.send(b"call")
        ours.close()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive()
    assert len(threads) == len(served) == 3
    assert [channel.fileno() for _, channel in pairs] == [-1, -1, -1]
