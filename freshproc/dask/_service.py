"""Services on a Dask worker: ``freshproc.service`` opened on a chosen (or any) Dask
worker, supervised there, its methods called from the caller.

The factory call is pickled in the caller (by freshproc); on the Dask worker a
``freshproc.Service`` is opened whose factory is ``_relay.host`` with those bytes, so the
object is built, and its methods run, only in the service's own processes. The Dask
worker holds the service in a ``ServiceHost`` plugin: a crash of the service's process
is restarted there by the service's own supervisor (as its ``ServiceOptions`` say); the
Dask worker stopping closes it.
"""

from __future__ import annotations

import sys
import uuid
import warnings
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

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
        self._plugin_name = f"freshproc-service-{uuid.uuid4().hex}"
        self._connection = Connection(cluster)
        self._requested_worker = worker
        self._worker: str | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_dropped, self._connection, self._plugin_name, made_at)

    @property
    def worker(self) -> str | None:
        """The address of the Dask worker that hosts the service (once started)."""
        return self._worker

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
        if self._worker is not None:
            return
        await self._connection.connect()
        client = self._connection.client
        workers = None
        if self._requested_worker is not None:
            known = set((await self._connection.scheduler.identity())["workers"])
            if self._requested_worker not in known:
                raise ValueError(
                    f"no Dask worker {self._requested_worker!r} in the cluster (it has {', '.join(sorted(known))})"
                )
            workers = [self._requested_worker]
        future = client.submit(
            _remote.open_service,
            self._plugin_name,
            *self._payload,
            self._options,
            key=f"{_remote.KEY_PREFIX}open-{uuid.uuid4().hex}",
            pure=False,
            retries=0,
            workers=workers,
            allow_other_workers=False,
        )
        outcome = await result_of(future)
        if outcome[0] != "ok":
            value_of(outcome, f"the factory of service {self._name}")
        self._worker = outcome[1]

    def close(self) -> None:
        """Close the service gracefully (its object's ``close`` runs) and disconnect."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            if self._worker is not None:
                self._connection.run_blocking(self._close_remote(self._worker))
        finally:
            self._connection.close()

    async def _close_remote(self, worker: str) -> None:
        client = self._connection.client
        if worker in (await self._connection.scheduler.identity())["workers"]:  # else it went with its Dask worker
            await client.run(_remote.close_service, self._plugin_name, workers=[worker])

    # -- what the service's Dask worker knows -------------------------------------------

    def _facts(self) -> tuple[list[int], int, bool]:
        async def ask() -> tuple[list[int], int, bool]:
            await self._open()
            assert self._worker is not None
            found = await self._connection.client.run(_remote.service_facts, self._plugin_name, workers=[self._worker])
            return found[self._worker]  # type: ignore[no-any-return]

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
        assert self._worker is not None
        request = _call.Request(METHOD, method, args, kwargs)
        payload = pickled((method, args, kwargs), request)
        outcome = await submit(self._connection, _remote.call_service, self._plugin_name, payload, worker=self._worker)
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


async def _close_everywhere(connection: Connection, name: str) -> None:
    await connection.client.run(_remote.close_service, name)


def _close_dropped(connection: Connection, name: str, made_at: str) -> None:
    """The finalizer of a service dropped without ``close()``: close it on its Dask worker
    (best effort: the cluster may be gone), disconnect, and say so."""
    try:
        if connection.connected and not connection.in_loop_thread:
            connection.run_blocking(_close_everywhere(connection, name))
    except Exception:  # noqa: BLE001, S110 - a cluster that is gone took the service with it
        pass
    finally:
        connection.close()
    warnings.warn(f"unclosed freshproc.dask.DaskService made at {made_at}", ResourceWarning, stacklevel=2)
