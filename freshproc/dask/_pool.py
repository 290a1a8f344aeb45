"""DaskPool: freshproc's pool, spread over the workers of a Dask cluster.

Data flow::

    caller: DaskPool.call ─ pickle (how, target, args, kwargs) once, with freshproc's pickler
        ─▶ client.submit(_remote.run_call, bytes, buffers)       (Dask moves them; scattered when large)
    Dask worker: PoolHost's freshproc Pool ─▶ call("freshproc._relay", "run", bytes, buffers)
    freshproc worker: _relay.run unpickles, runs the target, pickles the result
        ◀─ bytes and buffers, back the same way ◀─ the caller unpickles them

The pool on each Dask worker is an ordinary ``freshproc.Pool`` made with this pool's
options, so every option means there what it means locally, per Dask worker.
"""

from __future__ import annotations

import collections
import sys
import uuid
import warnings
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar, overload

import dask.config
from dask.utils import parse_bytes

from freshproc import _call, _relay, _serialization
from freshproc._asynclib import current_async_library
from freshproc._errors import FreshprocError, PoolClosedError, SerializationError, WorkerCrashedError
from freshproc._ledger import PoolStats
from freshproc._lifecycle import Lifecycle
from freshproc._pool import Pool
from freshproc._worker import BY_NAME, BY_VALUE
from freshproc.dask import _remote
from freshproc.dask._connection import ClusterLike, Connection, result_of, wait_for

P = ParamSpec("P")
RetT = TypeVar("RetT")

#: A pickled call: the stream and its out-of-band buffers.
Pickled = tuple[bytes, list[memoryview]]


class DaskPool(Lifecycle):
    """A freshproc pool on every worker of a Dask cluster; each call runs on one of them.

    ``cluster`` is a ``distributed.Client``, a cluster object (``LocalCluster``, ...) or a
    scheduler address; the pool connects a client of its own (with the same security
    settings) on a thread of its own. ``pool_options`` are ``freshproc.Pool``'s options,
    applied on each Dask worker (``workers`` is then the number of processes per Dask
    worker). Use it with ``async with`` or ``with``; ``close()`` closes the pool on every
    Dask worker.

    A call's arguments and result are pickled by freshproc in the caller and in the
    freshproc worker; the Dask worker in between passes the bytes on, so it never imports
    the target's modules. Dask's retries are off: a call never runs twice, even when its
    Dask worker is lost (that raises ``WorkerCrashedError`` naming it). Cancelling a call
    (anyio cancellation, or an interrupt of a blocking call) ends its freshproc worker on
    the remote machine.
    """

    def __init__(self, cluster: ClusterLike, /, **pool_options: Any) -> None:
        Pool(**pool_options).close()  # the options are checked here, as Pool checks them
        self._options = pool_options
        self._name = f"freshproc-pool-{uuid.uuid4().hex}"
        self._connection = Connection(cluster)
        self._started = False
        self._closed = False
        self._window = 4
        caller = sys._getframe(1)
        made_at = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        self._finalizer = weakref.finalize(self, _close_dropped, self._connection, self._name, made_at)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def scheduler_address(self) -> str:
        return self._connection.address

    @property
    def closed(self) -> bool:
        return self._closed

    def _open_connection(self) -> Connection:
        if self._closed:
            raise PoolClosedError("the pool is closed")
        return self._connection

    def start(self) -> None:
        """Connect and put a pool on every Dask worker (blocking); calls do this on demand."""
        self._open_connection().run_blocking(self._start())

    async def start_async(self) -> None:
        await self._open_connection().run(self._start())

    # What `with` and `async with` start with (see ``_lifecycle``).
    _start_on_enter = start
    _start_on_aenter = start_async

    async def _start(self) -> None:
        if self._closed:
            raise PoolClosedError("the pool is closed")
        if self._started:
            return
        await self._connection.connect()
        client = self._connection.client
        await client.register_plugin(_remote.PoolHost(self._options), name=self._name)
        threads = sum((await client.nthreads()).values())
        self._window = max(4, 2 * threads)
        self._started = True

    def close(self) -> None:
        """Close the pool on every Dask worker and disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        try:
            if self._started:
                self._connection.run_blocking(_unregister(self._connection, self._name))
        finally:
            self._connection.close()

    def recycle(self) -> None:
        """Recycle the pool of every Dask worker: each replaces every worker before it
        serves another call (idle ones now, busy ones when their call ends)."""
        self._open_connection().run_blocking(self._on_every_worker(_remote.recycle_pool))

    def stats(self) -> dict[str, PoolStats]:
        """Each Dask worker's pool counters, by Dask worker address."""
        found = self._open_connection().run_blocking(self._on_every_worker(_remote.pool_stats))
        return {address: stats for address, stats in found.items() if stats is not None}

    async def _on_every_worker(self, function: Callable[..., Any]) -> dict[str, Any]:
        await self._start()
        return dict(await self._connection.client.run(function, self._name))

    # -- calls ------------------------------------------------------------------------

    async def call(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
        """Import ``module`` in a freshproc worker on some Dask worker, resolve ``attr``
        and call it with the arguments. Cancelling the call ends that freshproc worker."""
        request = _call.Request(BY_NAME, (module, attr), args, kwargs)
        return await self._open_connection().run(self._remote(request, _pickle(request, current_async_library())))

    def call_sync(self, module: str, attr: str, /, *args: object, **kwargs: object) -> Any:
        """Blocking ``call``. An interrupt while waiting cancels it remotely too."""
        request = _call.Request(BY_NAME, (module, attr), args, kwargs)
        return self._open_connection().run_blocking(self._remote(request, _pickle(request, "asyncio")))

    @overload
    async def run(self, fn: Callable[P, Coroutine[Any, Any, RetT]], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    @overload
    async def run(self, fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    async def run(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` in a freshproc worker on some Dask worker; ``fn``
        travels by value where it must, as for ``Pool.run``."""
        request = _call.Request(BY_VALUE, fn, args, kwargs)
        return await self._open_connection().run(self._remote(request, _pickle(request, current_async_library())))

    @overload
    def run_sync(self, fn: Callable[P, Coroutine[Any, Any, RetT]], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    @overload
    def run_sync(self, fn: Callable[P, RetT], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    def run_sync(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Blocking ``run``."""
        request = _call.Request(BY_VALUE, fn, args, kwargs)
        return self._open_connection().run_blocking(self._remote(request, _pickle(request, "asyncio")))

    async def map(
        self, fn: Callable[..., Awaitable[RetT] | RetT], /, *iterables: Iterable[object]
    ) -> AsyncGenerator[RetT, None]:
        """Apply ``fn`` to the items of ``iterables`` across the cluster, a few calls per
        Dask worker thread at a time; yield the results in input order. An item's error is
        raised when its turn comes; leaving the loop early cancels the calls in flight."""
        library = current_async_library()
        pending: collections.deque[Any] = collections.deque()
        items = iter(zip(*iterables, strict=False))
        await self.start_async()
        try:
            while True:
                while len(pending) < self._window and (item := next(items, None)) is not None:
                    request = _call.Request(BY_VALUE, fn, item, {})
                    pending.append(self._connection.submit(self._remote(request, _pickle(request, library))))
                if not pending:
                    return
                yield await wait_for(pending.popleft())
        finally:
            for future in pending:
                future.cancel()

    def map_sync(self, fn: Callable[..., Awaitable[RetT] | RetT], /, *iterables: Iterable[object]) -> list[RetT]:
        """Blocking ``map``: a list of the results, in input order."""
        self.start()
        results: list[RetT] = []
        pending: collections.deque[Any] = collections.deque()
        items = iter(zip(*iterables, strict=False))
        try:
            while True:
                while len(pending) < self._window and (item := next(items, None)) is not None:
                    request = _call.Request(BY_VALUE, fn, item, {})
                    pending.append(self._connection.submit(self._remote(request, _pickle(request, "asyncio"))))
                if not pending:
                    return results
                results.append(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()

    async def _remote(self, request: _call.Request, pickled: Pickled) -> Any:
        """(On the connection's loop.) Submit one pickled call and return its value."""
        await self._start()
        outcome = await submit(self._connection, _remote.run_call, self._name, pickled)
        return value_of(outcome, _call.describe_target(request))


async def _unregister(connection: Connection, name: str) -> None:
    if connection.connected:
        await connection.client.unregister_worker_plugin(name)


def _pickle(request: _call.Request, async_library: str) -> Pickled:
    """The call pickled once, by freshproc (by value where it must), in the caller: an
    argument that does not pickle fails here, before anything is sent."""
    how, target, args, kwargs = request
    return pickled((how, target, args, kwargs, async_library), request)


def pickled(obj: object, request: _call.Request) -> Pickled:
    try:
        data, buffers = _serialization.dumps(obj)
    except Exception as exc:
        culprit = _call.find_unpicklable(request)
        raise SerializationError(
            f"cannot pickle the call's arguments ({type(obj).__qualname__}): {exc}"
            + (f" [{culprit}]" if culprit else ""),
            direction="arguments",
            stage="dump",
        ) from exc
    return data, [buffer.raw() for buffer in buffers]


async def submit(
    connection: Connection,
    function: Callable[..., Awaitable[_remote.Outcome]],
    name: str,
    pickled: Pickled,
    *,
    worker: str | None = None,
) -> _remote.Outcome:
    """(On the connection's loop.) Run ``function(name, key, data, buffers)`` as a Dask
    task (no retries) and return its outcome; cancelling this releases the task, which
    cancels it on its Dask worker. Large payloads are scattered first, so Dask moves them
    as data rather than inside the task. With ``worker``, the task runs on that Dask worker
    while it is there (else anywhere, to learn that it is gone rather than wait for it)."""
    client = connection.client
    data, buffers = pickled
    key = f"{_remote.KEY_PREFIX}{uuid.uuid4().hex}"
    workers = [worker] if worker is not None else None
    arguments: list[Any] = [data, buffers]
    if len(data) + sum(buffer.nbytes for buffer in buffers) >= _scatter_threshold():
        arguments = await client.scatter(arguments, hash=False, workers=workers)
    placement: dict[str, Any] = {} if workers is None else {"workers": workers, "allow_other_workers": True}
    future = client.submit(function, name, key, *arguments, key=key, pure=False, retries=0, **placement)
    try:
        return await result_of(future)  # type: ignore[no-any-return]
    except Exception as exc:
        crashed = _remote.as_worker_error(exc)
        if crashed is not None:
            raise crashed from exc
        raise FreshprocError(f"the Dask task {key} failed: {type(exc).__name__}: {exc}") from exc


def _scatter_threshold() -> int:
    """Half Dask's large-graph warning threshold: larger payloads travel as Dask data."""
    threshold = dask.config.get("distributed.admin.large-graph-warning-threshold", "10MB")
    return int(parse_bytes(threshold)) // 2


def value_of(outcome: _remote.Outcome, target: str) -> Any:
    """The call's value from its outcome, or the exception it stands for, raised."""
    kind = outcome[0]
    if kind == "ok":
        return _serialization.loads_received(outcome[1], list(outcome[2]), "result")
    if kind == "failed":
        failure, _ = _serialization.loads_failure(outcome[1])
        error: BaseException = _serialization.exception_from_failure(failure)
    elif kind == "error":
        error = outcome[1]
        # The local pool named the relay: name the caller's target instead.
        error.args = tuple(
            arg.replace(_RELAY_NAMES[0], target).replace(_RELAY_NAMES[1], target) if isinstance(arg, str) else arg
            for arg in error.args
        )
    elif kind == "lost":
        error = _remote.lost_worker_error(outcome[1], target)
    else:
        error = WorkerCrashedError(f"{target} was cancelled on its Dask worker")
    try:
        raise error
    finally:
        del error


#: How the pool and the service on a Dask worker describe a relayed call in messages.
_RELAY_NAMES = ("freshproc._relay:run", f"method {_relay.RELAY_METHOD}")


def _close_dropped(connection: Connection, name: str, made_at: str) -> None:
    """The finalizer of a pool dropped without ``close()``: close the Dask workers' pools
    (best effort: the cluster may be gone), disconnect, and say so."""
    try:
        if not connection.in_loop_thread:
            connection.run_blocking(_unregister(connection, name))
    except Exception:  # noqa: BLE001, S110 - a cluster that is gone took the pools with it
        pass
    finally:
        connection.close()
    warnings.warn(f"unclosed freshproc.dask.DaskPool made at {made_at}", ResourceWarning, stacklevel=2)
