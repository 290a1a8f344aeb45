"""What runs inside the Dask cluster: the worker plugins that hold freshproc pools and
services, the task functions that relay calls to them, and a scheduler plugin that keeps
Dask from running a call again after its Dask worker was lost.

Each task function is a coroutine, so Dask runs it on the Dask worker's event loop, where
it awaits the local pool's async API: one task per call, no thread. The payload it
relays is bytes pickled by freshproc in the caller, passed on unopened (``_relay`` opens
it in the freshproc worker), and the result comes back pickled the same way: the Dask
worker process imports none of the user's modules.

Every task returns an ``Outcome`` rather than raising (Dask would log a raised error as
a failed task, and its message must name the Dask worker):

- ``("ok", data, buffers)``: the pickled result.
- ``("failed", record)``: the call raised; ``record`` is freshproc's failure record.
- ``("error", exc)``: a freshproc error (a crash, a timeout, a failed service), its
  message naming the Dask worker.
- ``("lost", address)``: Dask handed the task over again after the Dask worker
  ``address`` was lost while running it; it was not run again.
- ``("cancelled",)``: the caller cancelled it (the freshproc worker was ended), or
  closed the service it was opening.

Cancellation: when the caller releases a running call's Dask future (it was cancelled,
or timed out in the caller), the Dask worker moves the task from ``executing`` to
``released``; the plugin sees that transition and cancels the task, which ends the
freshproc worker running the call, exactly as an anyio cancellation does locally.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from distributed import get_worker
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

import freshproc
from freshproc import _relay
from freshproc._errors import FreshprocError, WorkerCrashedError, WorkerError
from freshproc._relay import RELAY_METHOD, RelayedFailure

#: The module the freshproc workers run relayed calls with (preloaded into templates).
RELAY_MODULE = _relay.__name__
#: Dask keys of freshproc's tasks start with this (the scheduler plugin looks for it).
KEY_PREFIX = "freshproc-"
#: The annotation the scheduler plugin puts on a task whose Dask worker was lost.
LOST_ANNOTATION = "freshproc_lost_worker"

Outcome: TypeAlias = tuple[Any, ...]
PickledBuffers: TypeAlias = list[Any]  # memoryviews, bytes or PickleBuffers: what Dask hands over


class _Host(WorkerPlugin):
    """What pool and service hosts share: the calls running now, by Dask key, so that a
    call whose future the caller released is cancelled."""

    def __init__(self) -> None:
        self.running: dict[str, asyncio.Task[Any]] = {}

    def transition(self, key: object, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "released" and start in ("executing", "long-running"):
            task = self.running.get(key) if isinstance(key, str) else None
            if task is not None:
                task.cancel()

    async def relay(self, key: str, run: Callable[[], Awaitable[Any]]) -> Outcome:
        """Run ``run()`` (a call to the local pool or service) as the task for ``key``."""
        worker = get_worker()
        task = asyncio.current_task()
        assert task is not None
        self.running[key] = task
        try:
            data, buffers = await run()
        except RelayedFailure as failure:
            return ("failed", failure.record)
        except FreshprocError as exc:
            return ("error", _naming_worker(exc, worker.address))
        except asyncio.CancelledError:
            state = worker.state.tasks.get(key)
            if state is not None and state.state != "cancelled":
                raise  # not the caller's doing: the Dask worker is closing
            # The caller released the task (the Dask worker ended the call's process).
            if hasattr(task, "uncancel"):
                task.uncancel()
            return ("cancelled",)
        finally:
            del self.running[key]
        return ("ok", data, buffers)


def lost_worker(key: str) -> str | None:
    """The address of the Dask worker that was lost while running task ``key`` before (the
    replay guard's annotation), or None if this is the task's first run."""
    state = get_worker().state.tasks.get(key)
    annotations = state.annotations if state is not None else None
    return annotations.get(LOST_ANNOTATION) if annotations else None


class PoolHost(_Host):
    """Holds one freshproc pool for one ``DaskPool`` on a Dask worker; closes it when the
    ``DaskPool`` closes (the plugin is removed) or the Dask worker stops."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__()
        self._options = dict(options)
        self.pool: freshproc.Pool | None = None

    def setup(self, worker: Any) -> None:
        options = dict(self._options)
        # The relay module goes into the template (through the runtime's stand-in package,
        # see ``_template.RUNTIME_PRELOADS``): fresh workers neither import it per call nor
        # carry freshproc's whole package (anyio, the pool) in their template.
        options["preload"] = (*options.get("preload", ()), RELAY_MODULE)
        self.pool = freshproc.Pool(**options)

    async def teardown(self, worker: Any) -> None:
        if self.pool is not None:
            await self.pool.aclose()


class ServiceHost(_Host):
    """Holds one freshproc service (opened by ``open_service``) on a Dask worker."""

    def __init__(self, service: freshproc.Service[Any]) -> None:
        super().__init__()
        self.service = service

    async def teardown(self, worker: Any) -> None:
        await self.service.aclose()


def _host(name: str, worker: Any = None) -> _Host:
    worker = worker if worker is not None else get_worker()
    plugin = worker.plugins.get(name)
    if not isinstance(plugin, _Host):
        raise freshproc.PoolClosedError(f"{name} is closed (not on Dask worker {worker.address})")
    return plugin


def _wrapped(buffers: PickledBuffers) -> list[pickle.PickleBuffer]:
    """Out-of-band buffers for the local pool's pickle (a memoryview does not pickle)."""
    return [pickle.PickleBuffer(buffer) for buffer in buffers]


# -- task functions (each runs on a Dask worker's event loop) ----------------------------


async def run_call(name: str, key: str, data: bytes, buffers: PickledBuffers) -> Outcome:
    """Relay one pickled call to the pool of the ``PoolHost`` called ``name``."""
    lost = lost_worker(key)
    if lost is not None:
        return ("lost", lost)
    try:
        host = _host(name)
    except FreshprocError as exc:
        return ("error", exc)
    assert isinstance(host, PoolHost)
    assert host.pool is not None
    pool = host.pool
    return await host.relay(key, lambda: pool.call(RELAY_MODULE, "run", data, _wrapped(buffers)))


class _Openings:
    """One Dask worker's services being opened, and those closed before their open ended
    (see ``open_service``). Used on the Dask worker's event loop only."""

    def __init__(self) -> None:
        #: The opens under way, by name: set once each has ended.
        self.ended: dict[str, asyncio.Event] = {}
        #: Those of them building their object now: the task running each.
        self.building: dict[str, asyncio.Task[Any]] = {}
        #: The names closed before their open ended (or came).
        self.closed: set[str] = set()


_OPENINGS: weakref.WeakKeyDictionary[Any, _Openings] = weakref.WeakKeyDictionary()


def _openings(worker: Any) -> _Openings:
    found = _OPENINGS.get(worker)
    if found is None:
        found = _OPENINGS[worker] = _Openings()
    return found


async def here() -> str:
    """The address of the Dask worker that runs this (the probe of ``DaskService``)."""
    return str(get_worker().address)


async def open_service(
    name: str, key: str, chosen: str, data: bytes, buffers: PickledBuffers, options: freshproc.ServiceOptions
) -> Outcome:
    """Open a service whose factory call the caller pickled, on the Dask worker ``chosen``,
    under the plugin name ``name``; ``("ok", address, pids)`` once its object is built.

    A caller that gives up a start sends ``close_service`` for ``name`` to ``chosen`` and
    then waits for this task's outcome, not knowing how far the open got. The two meet on
    this Dask worker's event loop, in either order, and nothing of the service is left:

    - the close finds the service held (as a plugin): it closes it;
    - else it marks ``name`` closed, and if the open is under way waits for its end
      (cancelling the build if the object is being built: a factory that hangs does
      not hold the close up);
    - the open checks the mark before it builds (it builds nothing), its build is
      cancelled, or it checks the mark again once it holds the service (it closes it).

    Race-free because each side reads the other's mark and sets its own with no ``await``
    in between (``building`` is set exactly while the open awaits its object), so a close
    comes either before a check of the open, which then sees it, or after the open set
    the state that the close then acts on.
    """
    lost = lost_worker(key)
    if lost is not None:
        return ("lost", lost)
    worker = get_worker()
    if worker.address != chosen:  # restricted loosely: to learn it is gone rather than wait for it
        return ("error", WorkerCrashedError(f"the service's Dask worker {chosen} is gone (or not running)"))
    openings = _openings(worker)
    if name in openings.closed:  # closed before its open came
        openings.closed.discard(name)
        return ("cancelled",)
    ended = openings.ended[name] = asyncio.Event()
    try:
        service = await _build(worker, openings, name, data, buffers, options)
        if isinstance(service, tuple):
            return service
        await worker.plugin_add(ServiceHost(service), name=name)
        if name in openings.closed and name in worker.plugins:  # closed while it was registered
            await worker.plugin_remove(name)
            return ("cancelled",)
        return ("ok", worker.address, service.pids)
    finally:
        del openings.ended[name]
        openings.closed.discard(name)
        ended.set()


async def _build(
    worker: Any, openings: _Openings, name: str, data: bytes, buffers: PickledBuffers, options: freshproc.ServiceOptions
) -> freshproc.Service[Any] | Outcome:
    """The started service, or the outcome of an open that built nothing that stays."""
    # The relay goes into the template, as for pools: the service's processes do not
    # import it (and with it freshproc's whole package) when the factory is unpickled.
    options = dataclasses.replace(options, preload=(*options.preload, RELAY_MODULE))
    service = freshproc.service(_relay.host, bytes(data), _wrapped(buffers), options=options)
    task = asyncio.current_task()
    assert task is not None
    outcome: Outcome
    openings.building[name] = task
    try:
        await service.start()
        return service
    except RelayedFailure as failure:
        outcome = ("failed", failure.record)
    except FreshprocError as exc:
        outcome = ("error", _naming_worker(exc, worker.address))
    except asyncio.CancelledError:
        if name not in openings.closed:  # not a close's doing: the Dask worker is closing
            await service.aclose()
            raise
        if hasattr(task, "uncancel"):
            task.uncancel()
        outcome = ("cancelled",)
    finally:
        del openings.building[name]
    await service.aclose()
    return outcome


async def call_service(name: str, key: str, data: bytes, buffers: PickledBuffers) -> Outcome:
    """Relay one pickled method call to the service held under ``name``."""
    lost = lost_worker(key)
    if lost is not None:
        return ("lost", lost)
    host = get_worker().plugins.get(name)
    if not isinstance(host, ServiceHost):
        # Its Dask worker is gone (the call was restricted to it loosely, to get here).
        return (
            "error",
            WorkerCrashedError(f"the service's Dask worker is gone: {name} is not on {get_worker().address}"),
        )
    service = host.service
    return await host.relay(key, lambda: service.call(RELAY_METHOD, data, _wrapped(buffers)))


async def close_service(name: str, dask_worker: Any) -> None:
    """Close the service held under ``name`` (gracefully: its object's close runs; run
    with ``client.run``), or the one being opened under it, or keep the one whose open is
    yet to come from building (see ``open_service``)."""
    if name in dask_worker.plugins:
        await dask_worker.plugin_remove(name)
        return
    openings = _openings(dask_worker)
    openings.closed.add(name)
    building = openings.building.get(name)
    if building is not None:
        building.cancel()
    ended = openings.ended.get(name)
    if ended is not None:
        await ended.wait()


#: What ``services_here`` finds on a Dask worker that has no service.
NO_SERVICES: dict[str, list[str]] = {"held": [], "opening": [], "closed before their open": []}


def services_here(dask_worker: Any) -> dict[str, list[str]]:
    """The names of the services this Dask worker holds, is opening, and was told to close
    before their open came (run with ``client.run``)."""
    openings = _openings(dask_worker)
    return {
        "held": sorted(name for name, plugin in dask_worker.plugins.items() if isinstance(plugin, ServiceHost)),
        "opening": sorted(openings.ended),
        "closed before their open": sorted(openings.closed),
    }


def service_facts(name: str, dask_worker: Any) -> tuple[list[int], int, bool]:
    """The service's pids, restarts and whether it is alive (run with ``client.run``)."""
    host = _host(name, dask_worker)
    assert isinstance(host, ServiceHost)
    service = host.service
    return service.pids, service.restarts, service.alive


def recycle_pool(name: str, dask_worker: Any) -> None:
    """Recycle the pool of this Dask worker (run on every worker with ``client.run``)."""
    plugin = dask_worker.plugins.get(name)
    if isinstance(plugin, PoolHost) and plugin.pool is not None:
        plugin.pool.recycle()


def pool_stats(name: str, dask_worker: Any) -> freshproc.PoolStats | None:
    """This Dask worker's pool counters (run on every worker with ``client.run``)."""
    plugin = dask_worker.plugins.get(name)
    if isinstance(plugin, PoolHost) and plugin.pool is not None:
        return plugin.pool.stats()
    return None


def _naming_worker(exc: FreshprocError, address: str) -> FreshprocError:
    """``exc`` with a message that says on which Dask worker it happened."""
    exc.args = (f"on Dask worker {address}: {exc.args[0] if exc.args else exc}", *exc.args[1:])
    return exc


def lost_worker_error(address: str, target: str) -> WorkerCrashedError:
    return WorkerCrashedError(
        f"Dask worker {address} was lost while running {target}; the call is not run again", stage="running"
    )


# -- the scheduler side ------------------------------------------------------------------


class ReplayGuard(SchedulerPlugin):
    """Keeps Dask from running a freshproc call again after its Dask worker was lost.

    When a worker leaves, the scheduler logs a ``remove-worker`` event naming the tasks it
    was processing, and only then hands them to other workers. This plugin marks those of
    freshproc with an annotation that the next worker sees before it runs anything: a
    call whose Dask worker died raises ``WorkerCrashedError`` naming it, whatever
    ``allowed-failures`` says, and never runs twice.
    """

    name = "freshproc-replay-guard"
    idempotent = True  # one per scheduler, however many pools register it

    def __init__(self) -> None:
        self._scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self._scheduler = scheduler

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != "all" or not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        scheduler, address = self._scheduler, msg.get("worker")
        for key in msg.get("processing-tasks", ()):
            if not (isinstance(key, str) and key.startswith(KEY_PREFIX)):
                continue
            task = scheduler.tasks.get(key)
            if task is None:
                continue
            task.annotations = {**(task.annotations or {}), LOST_ANNOTATION: address}


def as_worker_error(exc: BaseException) -> WorkerError | None:
    """The ``WorkerCrashedError`` for a Dask error that says a Dask worker died (Dask's
    ``KilledWorker``, when the replay guard was not there to stop a retry), else None."""
    last_worker = getattr(exc, "last_worker", None)
    if type(exc).__name__ != "KilledWorker" or last_worker is None:
        return None
    address = getattr(last_worker, "address", str(last_worker))
    return WorkerCrashedError(f"Dask worker {address} died while running the call (Dask: {exc})")
