"""freshproc on a local Dask cluster (two Dask worker processes, loopback only, started
once per session): calls never import their target outside the freshproc worker, fresh
calls start clean, recycle picks up edited code, and crashes, timeouts, cancellations,
unpicklable values, a lost Dask worker and a crashing service behave as locally.
Synchronized by pipes and process exits, never sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psutil
import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'freshproc[dask]')")

from distributed import Client, LocalCluster

import freshproc
import freshproc.dask
from freshproc import _api, _call
from freshproc._worker import BY_VALUE
from freshproc.dask import _remote
from freshproc.dask._pool import pickled

pytestmark = pytest.mark.dask

#: The scheduler's HTTP server: ``dashboard_address=None`` still serves it on port 8787
#: (with a warning when that port is taken), so a free port on loopback instead.
LOOPBACK_ANY_PORT = "127.0.0.1:0"

#: A backstop for a process that is being ended (not a wait: the wait is on its exit).
EXIT_DEADLINE = 10.0

#: A backstop for a call that is on its way to its result (not a wait: the wait is on an event).
CALL_DEADLINE = 60.0

TARGETS = '''
import os
import signal
import sys

STATE = []


def remember(value):
    STATE.append(value)
    return list(STATE)


def pid():
    return os.getpid()


def loaded():
    return sorted(sys.modules)


def block(caller, started, go):
    """Tell the test (through its pipe) this process's pid, then wait for its go."""
    fd = os.open(f"/proc/{caller}/fd/{started}", os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode() + b"\\n")
    os.close(fd)
    fd = os.open(f"/proc/{caller}/fd/{go}", os.O_RDONLY)
    os.read(fd, 1)
    os.close(fd)
    return "released"


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


class Blocked:
    """A service whose factory runs ``block``: it tells the test it is building, then waits."""

    def __init__(self, caller, started, go):
        block(caller, started, go)


class Counter:
    def __init__(self, start):
        self.count = start

    def add(self, amount):
        self.count += amount
        return self.count

    def pid(self):
        return os.getpid()

    def crash(self):
        os.kill(os.getpid(), signal.SIGSEGV)

    def loaded(self):
        return sorted(sys.modules)
'''


# Module scope: started once (every test here shares it), and gone before the other test
# files run, so that its threads and event loops do not run beside their tests.
@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        host="127.0.0.1", n_workers=2, threads_per_worker=2, processes=True, dashboard_address=LOOPBACK_ANY_PORT
    ) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as connected:
        yield connected


@pytest.fixture(scope="session")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the target module, on no process's path but the freshproc workers'."""
    folder = tmp_path_factory.mktemp("dask_targets")
    (folder / "dask_targets.py").write_text(TARGETS)
    return folder


@pytest.fixture
def env(targets: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(targets), "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Overrides the suite's guard: Dask's nannies restart a worker that a test killed
    (a new process, by design), so only freshproc's own new processes must all be gone."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield
    pool = _api._default_pool
    if pool is not None:
        pool.close()
    leftover = [
        child
        for child in psutil.Process().children(recursive=True)
        if child.pid not in before and _name(child).startswith("freshproc-")
    ]
    _, alive = psutil.wait_procs(leftover, timeout=5)
    assert not alive, f"processes left behind: {[(p.pid, _name(p)) for p in alive]}"


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return ""


class Blocker:
    """The test's side of ``dask_targets.block``: pipes the target opens through /proc."""

    def __init__(self) -> None:
        self.started_read, self.started_write = os.pipe()
        self.go_read, self.go_write = os.pipe()
        self.args = (os.getpid(), self.started_write, self.go_read)

    def wait_started(self) -> int:
        """The pid of the freshproc worker running the call, once it has started."""
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(self.started_read, 64)
            assert chunk, "the call never started"
            line += chunk
        return int(line)

    def release(self) -> None:
        os.write(self.go_write, b"g")

    def close(self) -> None:
        for fd in (self.started_read, self.started_write, self.go_read, self.go_write):
            os.close(fd)


@pytest.fixture
def blocker() -> Iterator[Blocker]:
    pipes = Blocker()
    yield pipes
    pipes.close()


def wait_gone(pid: int) -> None:
    """Wait for process ``pid`` (not our child) to exit, on a pidfd; fail past the deadline."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], EXIT_DEADLINE)
        assert ready, f"process {pid} is still alive"
    finally:
        os.close(fd)


# -- isolation and freshness ----------------------------------------------------------


def test_the_core_does_not_import_dask() -> None:
    """``import freshproc`` loads neither dask nor distributed (only freshproc.dask does)."""
    code = "import sys, freshproc; print(sorted({'dask', 'distributed'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_call_imports_its_target_only_in_the_freshproc_worker(
    cluster: LocalCluster, client: Client, env: dict[str, str]
) -> None:
    """A call by name runs, while neither the caller nor any Dask worker process has
    imported the target's module; the freshproc worker has, and holds no distributed."""
    with freshproc.dask.DaskPool(cluster, env=env) as pool:
        assert pool.call_sync("dask_targets", "remember", 1) == [1]
        loaded = pool.call_sync("dask_targets", "loaded")
    assert "dask_targets" in loaded
    assert "distributed" not in loaded
    assert "dask_targets" not in sys.modules
    in_dask_workers = client.run(lambda: "dask_targets" in sys.modules)
    assert len(in_dask_workers) == 2
    assert not any(in_dask_workers.values())


def test_fresh_calls_start_clean(cluster: LocalCluster, env: dict[str, str]) -> None:
    """With ``fresh=True`` every call runs in a new process with the module's initial state."""
    with freshproc.dask.DaskPool(cluster, env=env, fresh=True) as pool:
        results = [pool.call_sync("dask_targets", "remember", index) for index in range(6)]
        pids = {pool.call_sync("dask_targets", "pid") for _ in range(4)}
        modules = pool.call_sync("dask_targets", "loaded")
    assert results == [[index] for index in range(6)]
    assert len(pids) == 4
    _assert_only_the_runtime(modules)


def _assert_only_the_runtime(modules: list[str]) -> None:
    """The relay is in the process (preloaded into its template), freshproc's package
    and what it imports (anyio, the pool) are not: the relay loaded without them."""
    assert "freshproc._relay" in modules
    assert not {"freshproc", "freshproc._pool", "anyio"} & set(modules)


def test_run_sends_a_closure_by_value(cluster: LocalCluster) -> None:
    """A closure (which no worker could import) travels by value and runs remotely."""
    offset = 40

    def add(value: int) -> int:
        return value + offset

    with freshproc.dask.DaskPool(cluster) as pool:
        assert pool.run_sync(add, 2) == 42
        assert pool.map_sync(add, range(5)) == [40, 41, 42, 43, 44]


def test_recycle_picks_up_edited_code(cluster: LocalCluster, targets: Path, env: dict[str, str]) -> None:
    """After ``recycle()`` every remote pool runs the module as it is on disk now."""
    name = f"edited_{uuid.uuid4().hex}"
    module = targets / f"{name}.py"
    module.write_text("VERSION = 1\ndef version():\n    return VERSION\n")
    with freshproc.dask.DaskPool(cluster, env=env, workers=1, reload=False) as pool:
        assert pool.call_sync(name, "version") == 1
        module.write_text("VERSION = 2\ndef version():\n    return VERSION\n")
        pool.recycle()
        assert {pool.call_sync(name, "version") for _ in range(4)} == {2}
        stats = pool.stats()
    assert len(stats) == 2
    assert sum(each.calls_ok for each in stats.values()) == 5


def test_hot_reload_runs_the_code_on_disk_on_every_dask_worker(
    cluster: LocalCluster, targets: Path, env: dict[str, str]
) -> None:
    """With the pools' default ``reload=True``, each call after an edit runs the new code,
    whichever Dask worker it lands on: the remote pool checks for changes before dispatch."""
    name = f"reloaded_{uuid.uuid4().hex}"
    module = targets / f"{name}.py"
    module.write_text("def version():\n    return 0\n")
    with freshproc.dask.DaskPool(cluster, env=env, workers=1) as pool:
        assert pool.call_sync(name, "version") == 0
        for version in range(1, 21):
            module.write_text(f"def version():\n    return {version}\n")
            assert pool.call_sync(name, "version") == version


async def test_async_calls_on_asyncio_and_trio(cluster: LocalCluster, env: dict[str, str]) -> None:
    """``call``, ``run`` and ``map`` are awaited from asyncio and trio alike."""
    async with freshproc.dask.DaskPool(cluster, env=env) as pool:
        assert "dask_targets" in await pool.call("dask_targets", "loaded")
        assert await pool.run(divmod, 7, 2) == (3, 1)
        assert [value async for value in pool.map(abs, [-1, -2, -3])] == [1, 2, 3]


def test_large_arrays_travel_both_ways(cluster: LocalCluster) -> None:
    """A 64 MiB numpy array goes out and comes back whole, writable."""
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(8 << 20, dtype=numpy.float64)
    with freshproc.dask.DaskPool(cluster) as pool:
        doubled = pool.run_sync(numpy.multiply, array, 2.0)
    assert doubled.shape == array.shape
    assert doubled[-1] == array[-1] * 2
    assert doubled.flags.writeable


# -- failures, as locally --------------------------------------------------------------


def test_a_segfault_raises_worker_crashed_naming_the_dask_worker(
    cluster: LocalCluster, client: Client, env: dict[str, str]
) -> None:
    """A crash of the remote freshproc worker is a WorkerCrashedError naming the Dask
    worker and the target; the Dask worker survives and its pool serves the next call."""
    addresses = set(client.run(os.getpid))
    with freshproc.dask.DaskPool(cluster, env=env) as pool:
        with pytest.raises(freshproc.WorkerCrashedError, match=r"dask_targets:segfault") as raised:
            pool.call_sync("dask_targets", "segfault")
        assert raised.value.signal == signal.SIGSEGV
        assert any(address in str(raised.value) for address in addresses)
        assert pool.call_sync("dask_targets", "remember", 1) == [1]
    assert set(client.run(os.getpid)) == addresses


def test_a_user_exception_keeps_its_type_and_remote_traceback(cluster: LocalCluster) -> None:
    with freshproc.dask.DaskPool(cluster) as pool, pytest.raises(ZeroDivisionError) as raised:
        pool.run_sync(divmod, 1, 0)
    assert isinstance(raised.value.__cause__, freshproc.RemoteTraceback)


def test_the_policy_timeout_ends_the_remote_worker(
    cluster: LocalCluster, env: dict[str, str], blocker: Blocker
) -> None:
    """The pool's ``timeout`` runs out on the Dask worker: CallTimeoutError, and the
    freshproc worker that ran the call is gone."""
    with freshproc.dask.DaskPool(cluster, env=env, timeout=1.0) as pool:
        pids: list[int] = []
        reader = threading.Thread(target=lambda: pids.append(blocker.wait_started()))
        reader.start()
        with pytest.raises(freshproc.CallTimeoutError, match="dask_targets:block"):
            pool.call_sync("dask_targets", "block", *blocker.args)
        reader.join()
        wait_gone(pids[0])
        assert pool.call_sync("dask_targets", "remember", 2) == [2]


async def test_cancellation_ends_the_remote_worker(
    cluster: LocalCluster, env: dict[str, str], blocker: Blocker
) -> None:
    """Cancelling an awaited call (anyio) releases its Dask task, and the freshproc
    worker running it on the Dask worker is ended; the pool carries on."""
    async with freshproc.dask.DaskPool(cluster, env=env) as pool:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.call, "dask_targets", "block", *blocker.args)
                pid = await anyio.to_thread.run_sync(blocker.wait_started)
                scope.cancel()
        assert scope.cancelled_caught
        await anyio.to_thread.run_sync(wait_gone, pid)
        assert await pool.call("dask_targets", "remember", 3) == [3]


def test_unpicklable_argument_and_result(cluster: LocalCluster) -> None:
    """An argument that does not pickle fails in the caller, before anything is sent; a
    result that does not pickle fails in the freshproc worker; both SerializationError."""
    with freshproc.dask.DaskPool(cluster) as pool:
        with pytest.raises(freshproc.SerializationError, match="argument 0") as sent:
            pool.run_sync(repr, threading.Lock())
        assert (sent.value.direction, sent.value.stage) == ("arguments", "dump")
        with pytest.raises(freshproc.SerializationError) as returned:
            pool.run_sync(threading.Lock)
        assert returned.value.direction == "result"
        assert pool.run_sync(abs, -4) == 4


def test_a_dask_worker_lost_mid_call_raises_worker_crashed_with_its_address(
    cluster: LocalCluster, client: Client, env: dict[str, str], blocker: Blocker
) -> None:
    """Killing the Dask worker that runs a call gives WorkerCrashedError naming it; the
    call is not run again elsewhere (Dask would retry it)."""
    by_pid = {pid: address for address, pid in client.run(os.getpid).items()}
    with freshproc.dask.DaskPool(cluster, env=env) as pool:
        errors: list[BaseException] = []
        started = threading.Event()

        def call() -> None:
            try:
                pool.call_sync("dask_targets", "block", *blocker.args)
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)
                if not started.is_set():
                    os.write(blocker.started_write, b"0\n")  # the test must not wait for a start

        caller = threading.Thread(target=call)
        caller.start()
        worker_pid = blocker.wait_started()
        started.set()
        assert not errors, errors
        template = psutil.Process(worker_pid).parent()
        assert template is not None
        dask_worker = template.parent()  # the template's parent: the Dask worker process
        assert dask_worker is not None
        address = by_pid[dask_worker.pid]
        dask_worker.kill()
        caller.join(60)
        assert not caller.is_alive()
        assert isinstance(errors[0], freshproc.WorkerCrashedError), errors
        assert address in str(errors[0])
        # Not replayed: the call would have announced itself again through the pipe.
        assert select.select([blocker.started_read], [], [], 0)[0] == []
    client.wait_for_workers(2)


# -- services -----------------------------------------------------------------------------


def test_a_service_restarts_after_a_remote_crash(cluster: LocalCluster, client: Client, env: dict[str, str]) -> None:
    """A service pinned to a Dask worker keeps state; a crash raises WorkerCrashedError
    naming that worker, and the next call runs on a new process with fresh state."""
    address = next(iter(client.run(os.getpid)))  # asked now: a worker killed earlier is gone
    options = freshproc.ServiceOptions(env=env)
    where = freshproc.dask.pinned(cluster, address)
    with freshproc.dask.service(where, "dask_targets", "Counter", 10, options=options) as svc:
        assert svc.worker == address
        assert svc.call_sync("add", 1) == 11
        assert svc.call_sync("add", 1) == 12
        before = svc.call_sync("pid")
        with pytest.raises(freshproc.WorkerCrashedError, match=address):
            svc.call_sync("crash")
        assert svc.call_sync("add", 1) == 11
        assert svc.call_sync("pid") != before
        assert svc.restarts == 1
        _assert_only_the_runtime(svc.call_sync("loaded"))
    assert "dask_targets" not in sys.modules


async def test_a_service_is_awaited_on_asyncio_and_trio(cluster: LocalCluster, env: dict[str, str]) -> None:
    options = freshproc.ServiceOptions(env=env)
    async with freshproc.dask.service(cluster, "dask_targets", "Counter", 0, options=options) as svc:
        assert await svc.call("add", 5) == 5
        assert await svc.add(2) == 7


async def test_calls_made_before_a_service_started_share_one_open(
    cluster: LocalCluster, client: Client, env: dict[str, str]
) -> None:
    """Calls to a service not started yet start it; made at once, they wait for one open
    (one object, one service on the Dask workers), not one each."""
    options = freshproc.ServiceOptions(env=env)
    svc = freshproc.dask.service(cluster, "dask_targets", "Counter", 0, options=options)
    try:
        results: list[int] = []

        async def add_one() -> None:
            results.append(await svc.add(1))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(add_one)
        assert sorted(results) == [1, 2, 3]
        found = await anyio.to_thread.run_sync(client.run, _remote.services_here)
        held = [name for services in found.values() for name in services["held"]]
        assert len(held) == 1
    finally:
        await svc.aclose()


def test_a_service_factory_that_raises_fails_at_start(cluster: LocalCluster, env: dict[str, str]) -> None:
    options = freshproc.ServiceOptions(env=env)
    with (
        pytest.raises(TypeError, match="Counter"),
        freshproc.dask.service(cluster, "dask_targets", "Counter", options=options),
    ):
        pass


def test_options_are_checked_in_the_caller(cluster: LocalCluster) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        freshproc.dask.DaskPool(cluster, no_such_option=1)
    with pytest.raises(ValueError, match="max_memory"):
        freshproc.dask.DaskPool(cluster, max_memory="lots")


def test_calls_after_close_raise_pool_closed(cluster: LocalCluster) -> None:
    pool = freshproc.dask.DaskPool(cluster)
    assert pool.run_sync(abs, -1) == 1
    pool.close()
    with pytest.raises(freshproc.PoolClosedError):
        pool.run_sync(abs, -1)


def test_a_service_whose_dask_worker_is_lost_raises_worker_crashed(
    cluster: LocalCluster, client: Client, env: dict[str, str]
) -> None:
    """Calls to a service whose Dask worker died raise WorkerCrashedError (they do not
    wait for that worker to come back); closing it then does not hang."""
    address, pid = next(iter(client.run(os.getpid).items()))
    options = freshproc.ServiceOptions(env=env)
    with freshproc.dask.service(
        freshproc.dask.pinned(cluster, address), "dask_targets", "Counter", 0, options=options
    ) as svc:
        assert svc.call_sync("add", 1) == 1
        psutil.Process(pid).kill()
        wait_gone(pid)
        with pytest.raises(freshproc.WorkerCrashedError):
            svc.call_sync("add", 1)
    client.wait_for_workers(2)


def test_a_service_pinned_to_an_unknown_worker_fails_at_start(cluster: LocalCluster) -> None:
    with (
        pytest.raises(ValueError, match="no Dask worker"),
        freshproc.dask.service(freshproc.dask.pinned(cluster, "tcp://127.0.0.1:1"), abs, -1),
    ):
        pass


async def test_leaving_map_early_cancels_the_calls_in_flight(cluster: LocalCluster, env: dict[str, str]) -> None:
    """Breaking out of ``map`` cancels the calls still in flight, and the pool carries on."""
    async with freshproc.dask.DaskPool(cluster, env=env) as pool:
        async with contextlib.aclosing(pool.map(abs, range(-50, 0))) as results:
            async for value in results:
                assert value == 50
                break
        assert await pool.run(abs, -7) == 7


async def test_a_call_cancelled_while_its_result_is_fetched_leaves_later_calls_working(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling a call whose result Dask's client is about to fetch does not break the
    calls after it. The client fetches the results awaited at one moment in one shared
    request, and keeps it as the request to join until it begins: cancelling the await
    that made it used to cancel it, and every later result of that client then raised
    CancelledError (how leaving ``map`` early could break the pool, as a call of the map
    was cancelled just as its result came). Here the request is held back until the call
    is cancelled, so that moment comes on every run."""
    async with freshproc.dask.DaskPool(cluster) as pool:
        client = pool._connection.client
        fetching = threading.Event()
        go = asyncio.Event()  # awaited on the client's loop only
        fetch = client._gather_remote

        async def held_back(*args: Any) -> Any:
            fetching.set()
            await go.wait()
            return await fetch(*args)

        monkeypatch.setattr(client, "_gather_remote", held_back)
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.run, abs, -1)
                assert await anyio.to_thread.run_sync(fetching.wait, CALL_DEADLINE)
                scope.cancel()
        assert scope.cancelled_caught
        # The call's cancellation was handed to the client's loop before this, from this
        # same thread: the loop runs it first, while the fetch is still held back.
        assert client.loop is not None
        client.loop.add_callback(go.set)
        assert await pool.run(abs, -7) == 7
        assert await pool.run(abs, -8) == 8


# -- a service whose start is cancelled ----------------------------------------------------


def freshproc_processes() -> set[int]:
    """The freshproc processes (templates, workers) under this test process: the Dask
    workers' included, since the local cluster's workers are its descendants."""
    return {child.pid for child in psutil.Process().children(recursive=True) if _name(child).startswith("freshproc-")}


def assert_nothing_of_the_service_stays(client: Client, before: set[int], service_pid: int) -> None:
    """The process that ran the factory ended, as did every freshproc process that was
    not there before; and no Dask worker holds, opens or remembers a service."""
    wait_gone(service_pid)
    _, alive = psutil.wait_procs([psutil.Process(pid) for pid in freshproc_processes() - before], EXIT_DEADLINE)
    assert not alive, f"freshproc processes left behind: {alive}"
    assert client.run(_remote.services_here) == dict.fromkeys(client.run(os.getpid), _remote.NO_SERVICES)


async def test_a_service_cancelled_while_it_starts_leaves_nothing_on_its_dask_worker(
    cluster: LocalCluster, client: Client, env: dict[str, str], blocker: Blocker
) -> None:
    """Cancelling a service's start while its factory runs on the Dask worker: what that
    open builds does not stay, though its factory returns only after the cancellation."""
    before = freshproc_processes()
    options = freshproc.ServiceOptions(env=env)
    svc = freshproc.dask.service(cluster, "dask_targets", "Blocked", *blocker.args, options=options)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(svc.start)
            pid = await anyio.to_thread.run_sync(blocker.wait_started)
            scope.cancel()
    assert scope.cancelled_caught
    blocker.release()  # the factory returns now, after its start was given up
    await svc.aclose()
    await anyio.to_thread.run_sync(assert_nothing_of_the_service_stays, client, before, pid)


def test_a_service_start_interrupted_while_it_starts_leaves_nothing_on_its_dask_worker(
    cluster: LocalCluster, client: Client, env: dict[str, str], blocker: Blocker
) -> None:
    """The same for a blocking start that is interrupted (Ctrl-C), whose factory never
    returns: closing does not wait for it, the build is cancelled on the Dask worker."""
    before = freshproc_processes()
    options = freshproc.ServiceOptions(env=env)
    svc = freshproc.dask.service(cluster, "dask_targets", "Blocked", *blocker.args, options=options)
    main = threading.get_ident()
    pids: list[int] = []

    def interrupt() -> None:
        pids.append(blocker.wait_started())
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    with pytest.raises(KeyboardInterrupt):
        svc.start_sync()
    thread.join()
    svc.close()
    assert_nothing_of_the_service_stays(client, before, pids[0])


def test_a_close_that_comes_before_its_open_keeps_it_from_building(client: Client) -> None:
    """The order the Dask worker may see a given-up start in: the close first (it came by
    another way than the task), then the open, which builds nothing; and an open that
    lands on another Dask worker than the one chosen (gone) refuses to build there."""
    address = next(iter(client.run(os.getpid)))
    request = _call.Request(BY_VALUE, abs, (-1,), {})
    data, buffers = pickled(tuple(request), request)
    name = f"freshproc-service-{uuid.uuid4().hex}"
    client.run(_remote.close_service, name, workers=[address])
    assert client.run(_remote.services_here, workers=[address])[address]["closed before their open"] == [name]

    def open_on(chosen: str) -> Any:
        key = f"{_remote.KEY_PREFIX}open-{uuid.uuid4().hex}"
        arguments = (name, key, chosen, data, buffers, freshproc.ServiceOptions())
        return client.submit(_remote.open_service, *arguments, key=key, pure=False, workers=[address]).result()

    assert open_on(address) == ("cancelled",)
    outcome = open_on("tcp://127.0.0.1:1")
    assert outcome[0] == "error"
    assert isinstance(outcome[1], freshproc.WorkerCrashedError)
    assert "tcp://127.0.0.1:1 is gone" in str(outcome[1])
    assert client.run(_remote.services_here) == dict.fromkeys(client.run(os.getpid), _remote.NO_SERVICES)
