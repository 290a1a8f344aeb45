"""Contenders that keep an object in another process (workloads S1-S3).

freshproc services (blocking, asyncio, trio), freshproc's pool.call_sync as a reference for
S1, and the peers: a ``multiprocessing.managers.BaseManager`` proxy, Pyro5 and RPyC. Each
peer's server is started by the job itself, listens on a Unix socket in a temporary folder
and is ended when the job's measurement ends. The object is ``tasks.Echo``; its method
``echo`` returns its argument.

S1 calls from this thread, one at a time. S3 shares each batch among ``CONCURRENCY``
callers (threads, or tasks for async) over ``REPLICAS`` processes that hold the object:
the service's ``replicas``, or as many peer servers, each thread using one of them (its
own connection, made in that thread). S2 (restart) is for services only.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import statistics
import tempfile
import threading
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from multiprocessing.connection import Connection
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Any

import anyio

import freshproc
from benchmarks import provenance, tasks
from benchmarks.contenders.base import Contender, Measurement
from benchmarks.timing import repeat, repeat_async
from benchmarks.workloads import CONCURRENCY, REPLICAS, Plan, Workload

#: A caller of ``Echo.echo`` on one connection.
Caller = Callable[[int], object]
#: Makes the caller thread ``index`` uses (called in that thread).
Connect = Callable[[int], Caller]
#: Seconds a server may take to start, and a crew to finish a batch, before the job fails.
STARTUP_TIMEOUT = 30.0
BATCH_TIMEOUT = 120.0


class BlockingHost(Contender):
    """An object in other processes called blocking: S1 from this thread, S3 from threads."""

    #: How the threads of S3 reach the object (for the report's notes).
    threads_note = "each thread its own connection"

    @abstractmethod
    def open(self, replicas: int) -> AbstractContextManager[Connect]:
        """Start ``replicas`` processes that hold the object; yield a ``Connect``."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        if workload.key == "S1":
            with self.open(1) as connect:
                call = connect(0)
                for _ in range(plan.warmup):
                    _expect(call(1))
                samples, last = repeat(lambda: call(1), plan.calls, plan)
                _expect(last)
            return Measurement(samples)
        if workload.key == "S3":
            with self.open(REPLICAS) as connect, Crew(CONCURRENCY, connect) as crew:
                for result in crew.run(plan.warmup):
                    _expect(result)
                samples, results = repeat(lambda: crew.run(plan.calls), plan.repeats, plan)
                for result in results:
                    _expect(result)
            return Measurement(samples, [f"{CONCURRENCY} threads, {self.threads_note}"])
        raise ValueError(f"{type(self).__name__} has no {workload.key}")


class Crew:
    """``count`` threads that share each batch of calls, each calling one after the other
    with its own caller (made in the thread, so thread-bound connections work)."""

    def __init__(self, count: int, connect: Connect) -> None:
        self._count = count
        self._connect = connect
        self._go = threading.Barrier(count + 1)
        self._done = threading.Barrier(count + 1)
        self._shares = [0] * count
        self._results: list[object] = [None] * count
        self._errors: list[BaseException] = []
        self._stop = False
        self._threads = [
            threading.Thread(target=self._work, args=(index,), name=f"bench-caller-{index}", daemon=True)
            for index in range(count)
        ]

    def __enter__(self) -> Crew:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop = True
        self._go.wait(BATCH_TIMEOUT)
        for thread in self._threads:
            thread.join(BATCH_TIMEOUT)

    def _work(self, index: int) -> None:
        call: Caller | None = None
        try:
            call = self._connect(index)
        except Exception as exc:  # noqa: BLE001 - reported by run()
            self._errors.append(exc)
        while True:
            self._go.wait(BATCH_TIMEOUT)
            if self._stop:
                return
            try:
                if call is not None:
                    for _ in range(self._shares[index]):
                        self._results[index] = call(1)
            except Exception as exc:  # noqa: BLE001 - reported by run()
                self._errors.append(exc)
            finally:
                self._done.wait(BATCH_TIMEOUT)

    def run(self, calls: int) -> list[object]:
        """Make ``calls`` calls, shared among the threads; the last result of each thread."""
        base, extra = divmod(calls, self._count)
        self._shares[:] = [base + (index < extra) for index in range(self._count)]
        self._results[:] = [None] * self._count
        self._go.wait(BATCH_TIMEOUT)
        self._done.wait(BATCH_TIMEOUT)
        if self._errors:
            raise self._errors[0]
        return [result for result, share in zip(self._results, self._shares, strict=True) if share]


# -- freshproc --------------------------------------------------------------------------------


def _service(replicas: int, **options: Any) -> freshproc.Service[tasks.Echo]:
    return freshproc.service(tasks.Echo, options=freshproc.ServiceOptions(replicas=replicas, **options))


def _check_worker(modules: dict[str, str | None]) -> None:
    provenance.check(modules, provenance.imported_package(), "worker")


#: S2's policy: restart at once and without limit, so that only the mechanism is timed.
RESTART_POLICY: dict[str, Any] = {"backoff": (0.0, 0.0), "max_restarts": 1_000_000}


class ServiceBlocking(BlockingHost):
    """``with freshproc.service(Echo, options=ServiceOptions(replicas=n))``: ``svc.call_sync``;
    with ``max_concurrency`` above 1, each process runs that many calls at once."""

    threads_note = "one service object shared by all"

    def __init__(self, max_concurrency: int = 1) -> None:
        self.max_concurrency = max_concurrency
        if max_concurrency > 1:
            self.threads_note += f", max_concurrency={max_concurrency}"

    @contextmanager
    def open(self, replicas: int) -> Iterator[Connect]:
        options = {"max_concurrency": self.max_concurrency} if self.max_concurrency > 1 else {}
        with _service(replicas, **options) as svc:
            yield lambda index: functools.partial(svc.call_sync, "echo")
            _check_worker(svc.call_sync("freshproc_modules", provenance.PACKAGE))

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        if workload.kind != "restart":
            return super().measure(workload, plan)
        crashed_calls: list[int] = []
        with _service(1, **RESTART_POLICY) as svc:
            _expect(svc.call_sync("echo", 1))

            def restart() -> int:
                pid = svc.pid
                assert pid is not None
                crashed = 0
                os.kill(pid, signal.SIGKILL)
                while True:
                    try:
                        _expect(svc.call_sync("echo", 1))
                    except freshproc.WorkerCrashedError:
                        crashed += 1
                        continue
                    crashed_calls.append(crashed)
                    if svc.pid == pid:
                        raise AssertionError("the killed process answered")
                    return pid

            for _ in range(plan.warmup):
                restart()
            samples, _ = repeat(restart, plan.calls, plan)
            _check_worker(svc.call_sync("freshproc_modules", provenance.PACKAGE))
            return _restart_measurement(samples, crashed_calls, svc.restarts)


class PoolCallSync(BlockingHost):
    """The reference for S1: ``with Pool(2) as pool``, ``pool.call_sync("benchmarks.tasks", "echo", 1)``."""

    @contextmanager
    def open(self, replicas: int) -> Iterator[Connect]:
        with freshproc.Pool(2) as pool:
            yield lambda index: functools.partial(pool.call_sync, "benchmarks.tasks", "echo")
            _check_worker(pool.call_sync("benchmarks.tasks", "freshproc_modules", provenance.PACKAGE))


class ServiceAsync(Contender):
    """``async with freshproc.service(...)``: ``await svc.call``; S3 from ``CONCURRENCY`` tasks."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        return anyio.run(self._measure, workload, plan, backend=self.backend)

    async def _measure(self, workload: Workload, plan: Plan) -> Measurement:
        if workload.key == "S1":
            async with _service(1) as svc:
                for _ in range(plan.warmup):
                    _expect(await svc.call("echo", 1))
                samples, last = await repeat_async(lambda: svc.call("echo", 1), plan.calls, plan)
                _expect(last)
                _check_worker(await svc.call("freshproc_modules", provenance.PACKAGE))
            return Measurement(samples)
        if workload.key == "S3":
            async with _service(REPLICAS) as svc:
                call = functools.partial(svc.call, "echo")
                for result in await _tasks(call, plan.warmup):
                    _expect(result)
                samples, results = await repeat_async(lambda: _tasks(call, plan.calls), plan.repeats, plan)
                for result in results:
                    _expect(result)
                _check_worker(await svc.call("freshproc_modules", provenance.PACKAGE))
            return Measurement(samples, [f"{CONCURRENCY} tasks"])
        if workload.kind == "restart":
            return await self._restart(plan)
        raise ValueError(f"{type(self).__name__} has no {workload.key}")

    async def _restart(self, plan: Plan) -> Measurement:
        crashed_calls: list[int] = []
        async with _service(1, **RESTART_POLICY) as svc:
            _expect(await svc.call("echo", 1))

            async def restart() -> int:
                pid = svc.pid
                assert pid is not None
                crashed = 0
                os.kill(pid, signal.SIGKILL)
                while True:
                    try:
                        _expect(await svc.call("echo", 1))
                    except freshproc.WorkerCrashedError:
                        crashed += 1
                        continue
                    crashed_calls.append(crashed)
                    if svc.pid == pid:
                        raise AssertionError("the killed process answered")
                    return pid

            for _ in range(plan.warmup):
                await restart()
            samples, _ = await repeat_async(restart, plan.calls, plan)
            _check_worker(await svc.call("freshproc_modules", provenance.PACKAGE))
            return _restart_measurement(samples, crashed_calls, svc.restarts)


async def _tasks(call: Callable[[int], Awaitable[object]], calls: int) -> list[object]:
    """``calls`` calls shared by ``CONCURRENCY`` tasks; the last result of each task."""
    base, extra = divmod(calls, CONCURRENCY)
    results: list[object] = []

    async def one(share: int) -> None:
        result: object = None
        for _ in range(share):
            result = await call(1)
        results.append(result)

    async with anyio.create_task_group() as group:
        for index in range(CONCURRENCY):
            share = base + (index < extra)
            if share:
                group.start_soon(one, share)
    return results


def _restart_measurement(samples: list[float], crashed_calls: list[int], restarts: int) -> Measurement:
    """The samples, with how the kills showed: calls that saw the crash, and kills that
    ``svc.restarts`` did not count (a process found dead while idle is replaced unseen)."""
    return Measurement(
        samples,
        ["warm-up kills included in the side values"],
        {
            "calls that raised WorkerCrashedError per kill (mean)": statistics.fmean(crashed_calls),
            "kills not counted in svc.restarts, per job": float(len(crashed_calls) - restarts),
        },
    )


# -- peers --------------------------------------------------------------------------------------


class _EchoManager(BaseManager):
    pass


_EchoManager.register("Echo", tasks.Echo)


class Manager(BlockingHost):
    """``multiprocessing.managers.BaseManager`` (default context, Unix socket): a proxy of
    an ``Echo`` per server; a proxy opens one connection per thread that uses it."""

    @contextmanager
    def open(self, replicas: int) -> Iterator[Connect]:
        managers = [_EchoManager() for _ in range(replicas)]
        try:
            for manager in managers:
                manager.start()
            proxies = [manager.Echo() for manager in managers]  # type: ignore[attr-defined]
            yield lambda index: proxies[index % replicas].echo
        finally:
            for manager in managers:
                if manager._process is not None:  # type: ignore[attr-defined]
                    manager.shutdown()


def _serve_pyro5(path: str, ready: Connection) -> None:
    """A Pyro5 daemon on Unix socket ``path`` serving one ``Echo``; sends its URI."""
    import Pyro5.api  # optional peer

    class PyroEcho:
        def echo(self, value: int) -> int:
            return value

    # expose() exposes the methods in the class's own __dict__, not inherited ones.
    exposed = Pyro5.api.expose(PyroEcho)
    with Pyro5.api.Daemon(unixsocket=path) as daemon:
        uri = daemon.register(exposed(), "echo")
        ready.send(str(uri))
        daemon.requestLoop()


def _serve_rpyc(path: str, ready: Connection) -> None:
    """An RPyC threaded server on Unix socket ``path`` whose service has ``echo``."""
    import rpyc  # optional peer
    from rpyc.utils.server import ThreadedServer

    class EchoService(rpyc.Service):  # type: ignore[misc]
        def exposed_echo(self, value: int) -> int:
            return value

    server = ThreadedServer(EchoService(), socket_path=path)
    server._listen()  # listening before it says so (start() would listen only once it runs)
    ready.send(path)
    server.start()


@contextmanager
def _servers(serve: Callable[[str, Connection], None], replicas: int) -> Iterator[list[str]]:
    """Start ``replicas`` server processes (spawned) on Unix sockets in a temporary folder;
    yield the address each reports; end them on leaving."""
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="freshproc-bench-") as folder:
        try:
            addresses = []
            for index in range(replicas):
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(target=serve, args=(str(Path(folder) / f"{index}.sock"), sender))
                process.start()
                processes.append(process)
                sender.close()
                if not receiver.poll(STARTUP_TIMEOUT):
                    raise RuntimeError(f"server {index} did not start within {STARTUP_TIMEOUT:g} s")
                addresses.append(receiver.recv())
                receiver.close()
            yield addresses
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(STARTUP_TIMEOUT)
                if process.is_alive():
                    process.kill()
                    process.join()


class Pyro5Host(BlockingHost):
    """Pyro5 daemons on Unix sockets; a ``Pyro5.api.Proxy`` per thread (proxies are bound
    to the thread that made them)."""

    @contextmanager
    def open(self, replicas: int) -> Iterator[Connect]:
        import Pyro5.api  # optional peer

        proxies: list[Any] = []
        lock = threading.Lock()

        def connect(index: int) -> Caller:
            proxy = Pyro5.api.Proxy(uris[index % replicas])
            with lock:
                proxies.append(proxy)
            echo: Caller = proxy.echo
            return echo

        with _servers(_serve_pyro5, replicas) as uris:
            try:
                yield connect
            finally:
                for proxy in proxies:
                    proxy._pyroClaimOwnership()
                    proxy._pyroRelease()


class RpycHost(BlockingHost):
    """RPyC threaded servers on Unix sockets; a connection per thread, ``conn.root.echo``
    looked up once (each call is then one round trip)."""

    @contextmanager
    def open(self, replicas: int) -> Iterator[Connect]:
        import rpyc  # optional peer

        connections: list[Any] = []
        lock = threading.Lock()

        def connect(index: int) -> Caller:
            connection = rpyc.utils.factory.unix_connect(paths[index % replicas])
            with lock:
                connections.append(connection)
            echo: Caller = connection.root.echo
            return echo

        with _servers(_serve_rpyc, replicas) as paths:
            try:
                yield connect
            finally:
                for connection in connections:
                    connection.close()


def _expect(result: object) -> None:
    if result != 1:
        raise AssertionError(f"wrong result: {result!r:.80}")


def build(name: str) -> Contender:
    contenders: dict[str, Callable[[], Contender]] = {
        "freshproc-service-blocking": ServiceBlocking,
        "freshproc-service-blocking-concurrent": lambda: ServiceBlocking(CONCURRENCY // REPLICAS),
        "freshproc-service-asyncio": lambda: ServiceAsync("asyncio"),
        "freshproc-service-trio": lambda: ServiceAsync("trio"),
        "freshproc-pool-call-sync": PoolCallSync,
        "manager": Manager,
        "pyro5": Pyro5Host,
        "rpyc": RpycHost,
    }
    return contenders[name]()
