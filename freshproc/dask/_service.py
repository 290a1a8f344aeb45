"""Services on a Dask worker: ``freshproc.service`` opened on a chosen (or any) Dask
worker, supervised there, its methods called from the caller.

The factory call is pickled in the caller (by freshproc); on the Dask worker a
``freshproc.Service`` is opened whose factory is ``_relay.host`` with those bytes, so the
object is built, and its methods run, only in the service's own processes. The Dask
worker holds the service in a ``ServiceHost`` plugin: a crash of the service's process
is restarted there by the service's own supervisor (as its ``ServiceOptions`` say); the
Dask worker stopping closes it.

The open is pinned to a Dask worker chosen first (the one asked for, or the one the
scheduler picks for a probe task), and the service is named in the caller, so a start
that is given up (cancelled, timed out, or failed in the caller) can send a close for
that name to that worker without knowing how far the open got: ``_remote.open_service``
and ``_remote.close_service`` settle it there, whatever the order they come in.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
import warnings
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from distributed import Future

from freshproc import _call
from freshproc._errors import ServiceClosedError
from freshproc._lifecycle import Lifecycle
from freshproc._service import _factory_request
from freshproc._supervision import ServiceOptions
from freshproc._worker import BY_NAME, METHOD
from freshproc.dask import _remote
from freshproc.dask._connection import ClusterLike, Connection, result_of
from freshproc.dask._pool import pickled, submit, value_of


class Pinned(NamedTuple):
    """A cluster and the Dask worker (its address) to open a service on."""

    cluster: ClusterLike
    worker: str


def pinned(cluster: ClusterLike, worker: str) -> Pinned:
    """Open the service on the Dask worker ``worker`` (an address such as
    ``"tcp://10.0.0.7:40331"``) rather than on any: ``service(pinned(client, addr), ...)``."""
    return Pinned(cluster, worker)


class DaskService(Lifecycle):
    """A supervised service on a Dask worker; made by ``freshproc.dask.service()``.

    Use it with ``async with`` or ``with``: entering opens the service on its Dask worker
    and builds the object (a factory that raises fails there, with its own exception);
    leaving closes it gracefully. ``await svc.call("method", ...)``, ``await
    svc.method(...)`` and ``call_sync`` call its methods. A crash of the service's
    process raises ``WorkerCrashedError`` (naming the Dask worker) for the call that ran
    in it, and the process is restarted on that Dask worker; if the Dask worker itself is
    lost, calls raise ``WorkerCrashedError`` naming it.
    """

    def __init__(
        self, where: ClusterLike | Pinned, factory: _call.Request, options: ServiceOptions, *, name: str, made_at: str
    ) -> None:
        cluster, worker = (where.cluster, where.worker) if isinstance(where, Pinned) else (where, None)
        self._payload = pickled(tuple(factory), factory)
        self._options = options
        self._name = name
        self._connection = Connection(cluster)
        self._requested_worker = worker
        self._placement = _Placement()
        self._starting = asyncio.Lock()  # (used on the connection's loop)
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_dropped, self._connection, self._placement, made_at)

    @property
    def worker(self) -> str | None:
        """The address of the Dask worker that hosts the service (once started)."""
        return self._placement.worker

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the service on its Dask worker and build the object."""
        await self._connection.run(self._open())

    def start_sync(self) -> None:
        self._connection.run_blocking(self._open())

    # What `with` and `async with` start with (see ``_lifecycle``).
    _start_on_enter = start_sync
    _start_on_aenter = start

    async def _open(self) -> None:
        if self._closed:
            raise ServiceClosedError(f"service {self._name} is closed")
        if self._placement.worker is not None:
            return
        async with self._starting:  # one open at a time: calls made while it starts wait for it
            await self._open_once()

    async def _open_once(self) -> None:
        placement = self._placement
        if placement.worker is not None:
            return
        await self._connection.connect()
        client = self._connection.client
        chosen = await self._choose_worker()
        if self._closed:  # close() ran meanwhile; from here to `in_flight` nothing waits: it sees this open
            raise ServiceClosedError(f"service {self._name} was closed while it started")
        name = f"freshproc-service-{uuid.uuid4().hex}"
        key = f"{_remote.KEY_PREFIX}open-{uuid.uuid4().hex}"
        future = client.submit(
            _remote.open_service,
            name,
            key,
            chosen,
            *self._payload,
            self._options,
            key=key,
            pure=False,
            retries=0,
            workers=[chosen],
            allow_other_workers=True,  # to learn that it is gone rather than wait for it
        )
        # A second reference keeps the task when `result_of` releases `future` on cancellation.
        placement.in_flight[name] = (chosen, Future(key, client))
        try:
            outcome = await result_of(future)
        except BaseException:
            placement.give_up(self._connection, name)
            raise
        if name in placement.giving_up:  # close() gave it up meanwhile
            raise ServiceClosedError(f"service {self._name} was closed while it started")
        placement.in_flight.pop(name)[1].release()
        if outcome[0] != "ok":
            value_of(outcome, f"the factory of service {self._name}")
        placement.name, placement.worker = name, outcome[1]

    async def _choose_worker(self) -> str:
        """The Dask worker to open the service on: the one asked for, else the one the
        scheduler picks for a probe task (asked first, for the open to be pinned to it)."""
        if self._requested_worker is None:
            probe = self._connection.client.submit(
                _remote.here, key=f"{_remote.KEY_PREFIX}where-{uuid.uuid4().hex}", pure=False
            )
            return await result_of(probe)  # type: ignore[no-any-return]
        known = set((await self._connection.scheduler.identity())["workers"])
        if self._requested_worker not in known:
            raise ValueError(
                f"no Dask worker {self._requested_worker!r} in the cluster (it has {', '.join(sorted(known))})"
            )
        return self._requested_worker

    def close(self) -> None:
        """Close the service gracefully (its object's ``close`` runs) and disconnect. A
        start that is under way, or was given up, is closed too."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            if self._connection.connected:
                self._connection.run_blocking(self._placement.close(self._connection))
        finally:
            self._connection.close()

    # -- what the service's Dask worker knows -------------------------------------------

    def _facts(self) -> tuple[list[int], int, bool]:
        async def ask() -> tuple[list[int], int, bool]:
            await self._open()
            placement = self._placement
            assert placement.worker is not None
            found = await self._connection.client.run(_remote.service_facts, placement.name, workers=[placement.worker])
            return found[placement.worker]  # type: ignore[no-any-return]

        return self._connection.run_blocking(ask())

    @property
    def pids(self) -> list[int]:
        """The pids of the service's processes on its Dask worker's machine."""
        return self._facts()[0]

    @property
    def restarts(self) -> int:
        return self._facts()[1]

    @property
    def alive(self) -> bool:
        return self._facts()[2]

    # -- calls --------------------------------------------------------------------------

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the object's ``method`` with the arguments; cancelling the call ends the
        service's process (the supervisor restarts it), as for a local service."""
        return await self._connection.run(self._call_remote(method, args, kwargs))

    def call_sync(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Blocking ``call``."""
        return self._connection.run_blocking(self._call_remote(method, args, kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, *args, **kwargs)

        method.__name__ = name
        return method

    async def _call_remote(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._closed:
            raise ServiceClosedError(f"service {self._name} is closed")
        await self._open()
        placement = self._placement
        assert placement.worker is not None
        request = _call.Request(METHOD, method, args, kwargs)
        payload = pickled((method, args, kwargs), request)
        outcome = await submit(self._connection, _remote.call_service, placement.name, payload, worker=placement.worker)
        return value_of(outcome, f"method {method} of service {self._name}")


def service(
    where: ClusterLike | Pinned, target: Any, /, *args: Any, options: ServiceOptions | None = None, **kwargs: Any
) -> DaskService:
    """A supervised service (``freshproc.service``) on a Dask worker of ``where``: any
    worker the scheduler picks, or the one named with ``pinned(cluster, address)``.

    ``target`` and the arguments are those of ``freshproc.service``: a factory (a class
    or any callable, by name when importable, else by value) or ``module, attr``,
    imported only in the service's process. ``options`` is the one keyword kept here.
    """
    options = options if options is not None else ServiceOptions()
    if not isinstance(options, ServiceOptions):
        raise TypeError(f"options must be a freshproc.ServiceOptions, not {type(options).__name__}")
    if isinstance(target, str):
        if not args or not isinstance(args[0], str):
            raise TypeError("service(where, module, attr, ...) needs the attribute's name as a string")
        module, attr, *rest = (target, *args)
        request = _call.Request(BY_NAME, (module, attr), tuple(rest), kwargs)
        name = f"{module}:{attr}"
    else:
        if not callable(target):
            raise TypeError(f"a service's factory must be callable, not {type(target).__name__}")
        request = _factory_request(target, args, kwargs)
        name = _call.describe_target(request)
    caller = sys._getframe(1)
    return DaskService(where, request, options, name=name, made_at=f"{caller.f_code.co_filename}:{caller.f_lineno}")


class _Placement:
    """Where the service is, as the caller knows it (the finalizer shares it: it must not
    hold the service). Changed on the connection's loop only."""

    def __init__(self) -> None:
        #: The Dask worker that holds the service, and the name it is held under there.
        self.worker: str | None = None
        self.name = ""
        #: The opens sent whose outcome is not taken yet: by name, the Dask worker each was
        #: pinned to and a reference that keeps its task.
        self.in_flight: dict[str, tuple[str, Future[Any]]] = {}
        #: The closes of opens given up, by name.
        self.giving_up: dict[str, asyncio.Task[None]] = {}

    def give_up(self, connection: Connection, name: str) -> None:
        """Close what the open ``name`` builds, however far it got (on the loop; it goes on
        after the start that gave it up has ended; ``close`` waits for it)."""
        if name not in self.giving_up:
            self.giving_up[name] = asyncio.get_running_loop().create_task(self._give_up(connection, name))

    async def _give_up(self, connection: Connection, name: str) -> None:
        worker, future = self.in_flight[name]
        try:
            await _close_on(connection, worker, name)
            # The close stopped the open or closed what it built, or the open, still to
            # come, will build nothing: its outcome says it came, and nothing is left.
            with contextlib.suppress(Exception):  # whichever outcome: the open has ended
                await result_of(future)
        finally:
            future.release()
            del self.in_flight[name]

    async def close(self, connection: Connection) -> None:
        """(On the loop.) Close the service, and what the opens under way or given up build."""
        for name in list(self.in_flight):
            self.give_up(connection, name)
        if self.giving_up:
            await asyncio.wait(self.giving_up.values())
        for task in self.giving_up.values():
            task.result()  # the first close that failed says why
        if self.worker is not None:
            await _close_on(connection, self.worker, self.name)


async def _close_on(connection: Connection, worker: str, name: str) -> None:
    """Close the service ``name`` on the Dask worker ``worker`` (see ``_remote.close_service``)."""
    if worker in (await connection.scheduler.identity())["workers"]:  # else it went with its Dask worker
        await connection.client.run(_remote.close_service, name, workers=[worker])


def _close_dropped(connection: Connection, placement: _Placement, made_at: str) -> None:
    """The finalizer of a service dropped without ``close()``: close it on its Dask worker
    (best effort: the cluster may be gone), disconnect, and say so."""
    try:
        if connection.connected and not connection.in_loop_thread:
            connection.run_blocking(placement.close(connection))
    except Exception:  # noqa: BLE001, S110 - a cluster that is gone took the service with it
        pass
    finally:
        connection.close()
    warnings.warn(f"unclosed freshproc.dask.DaskService made at {made_at}", ResourceWarning, stacklevel=2)
