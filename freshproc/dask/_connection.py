"""A connection to a Dask cluster that blocking code, asyncio tasks and trio tasks share.

Dask's asynchronous client runs on asyncio. A ``Connection`` owns one asyncio event loop
in a thread of its own, with an asynchronous ``distributed.Client`` on it; every call is
a coroutine scheduled on that loop. A blocking caller waits on the concurrent future; an
asyncio or trio caller awaits a freshproc ``AsyncWaiter`` (an asyncio future, or a trio
event set through the trio token) woken by the future's done callback: no thread per
call. Cancelling the caller cancels the coroutine on the loop, which releases the Dask
future (and with it the remote call: see ``_remote``): ``result_of`` awaits each Dask
future so that this cancellation never reaches into the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from distributed import Client, Future

from freshproc._errors import FreshprocError
from freshproc._waiters import AsyncWaiter
from freshproc.dask._remote import ReplayGuard

ResultT = TypeVar("ResultT")

#: What ``DaskPool`` and ``service`` accept as the cluster: a ``distributed.Client`` (its
#: scheduler and security are used), a cluster object (``LocalCluster``...), or a
#: scheduler address such as ``"tcp://10.0.0.5:8786"``.
ClusterLike = Any


def endpoint(cluster: ClusterLike) -> tuple[str, Any]:
    """The scheduler address and the security settings of ``cluster``."""
    if isinstance(cluster, str):
        return cluster, None
    if isinstance(cluster, Client):
        scheduler = cluster.scheduler
        if scheduler is None:
            raise ValueError("the Dask client is not connected to a scheduler")
        return str(scheduler.address), cluster.security
    address = getattr(cluster, "scheduler_address", None)
    if isinstance(address, str):
        return address, getattr(cluster, "security", None)
    raise TypeError(
        "expected a distributed.Client, a Dask cluster object or a scheduler address such as "
        f"'tcp://host:8786', not {type(cluster).__name__}"
    )


class Connection:
    """A loop thread with an asynchronous Dask client on it (see the module docstring)."""

    def __init__(self, cluster: ClusterLike) -> None:
        self.address, self._security = endpoint(cluster)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="freshproc-dask", daemon=True)
        self._thread.start()
        self._client: Client | None = None
        self._stopping: asyncio.Task[None] | None = None  # a close scheduled from the loop's thread

    @property
    def in_loop_thread(self) -> bool:
        """Whether this is the connection's own thread (where nothing may wait on the loop)."""
        return threading.current_thread() is self._thread

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> Client:
        assert self._client is not None, "connect() first"
        return self._client

    @property
    def scheduler(self) -> Any:
        """The client's connection to the scheduler (an rpc: ``await scheduler.identity()``)."""
        scheduler = self.client.scheduler
        assert scheduler is not None, "connect() first"
        return scheduler

    async def connect(self) -> None:
        """(On the loop.) Connect, and make sure the scheduler has the replay guard."""
        if self._client is None:
            self._client = await Client(self.address, security=self._security, asynchronous=True)
            try:
                await self._client.register_plugin(ReplayGuard())
            except Exception as exc:
                raise FreshprocError(
                    f"the Dask scheduler at {self.address} could not load freshproc's scheduler plugin "
                    f"(is freshproc installed where the scheduler runs?): {type(exc).__name__}: {exc}"
                ) from exc

    async def _disconnect(self) -> None:
        # (On the loop: only there is the client asynchronous.)
        if self._client is not None:
            await self._client.close()

    async def _disconnect_and_stop(self) -> None:
        try:
            await self._disconnect()
        finally:
            self._loop.stop()

    def submit(self, coroutine: Coroutine[Any, Any, ResultT]) -> concurrent.futures.Future[ResultT]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run_blocking(self, coroutine: Coroutine[Any, Any, ResultT]) -> ResultT:
        """Run ``coroutine`` on the loop and wait; an interrupt cancels it."""
        future = self.submit(coroutine)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def run(self, coroutine: Coroutine[Any, Any, ResultT]) -> ResultT:
        """Run ``coroutine`` on the loop and await it from asyncio or trio; cancelling
        the awaiting task cancels it."""
        return await wait_for(self.submit(coroutine))

    def close(self) -> None:
        """Close the client and stop the loop thread. On the loop's own thread (a finalizer
        run by the garbage collector there) it is scheduled, not waited for."""
        if not self._thread.is_alive():
            return
        if self.in_loop_thread:
            self._stopping = self._loop.create_task(self._disconnect_and_stop())
            return
        try:
            if self._client is not None:
                self.run_blocking(self._disconnect())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


async def wait_for(future: concurrent.futures.Future[ResultT]) -> ResultT:
    """Await a concurrent future from asyncio or trio; cancelling the wait cancels it."""
    waiter: AsyncWaiter[None] = AsyncWaiter()
    future.add_done_callback(lambda _: waiter.wake())
    try:
        await waiter.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


async def result_of(future: Future[Any]) -> Any:
    """(On the loop.) The result of a Dask future; cancelling this releases the future
    (which cancels its task) but not the fetch of its result inside the client.

    The client fetches the results awaited at one moment in one shared request, a task
    that every such await awaits, and keeps it as the request for later awaits to join
    until it begins. A cancelled await would cancel it: the others that joined it would
    raise ``CancelledError``, and, if it had not begun, so would every later result of
    the client, which keeps joining the cancelled request. Shielded, the fetch ends on
    its own, soon once the future is released.
    """
    fetch = asyncio.ensure_future(future)
    try:
        return await asyncio.shield(fetch)
    except asyncio.CancelledError:
        # The shield leaves the fetch's outcome to nobody once its waiter is cancelled.
        fetch.add_done_callback(_drop_outcome)
        future.release()
        raise


def _drop_outcome(fetch: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a fetch nobody waits for (mostly the released future's
    cancellation), so that asyncio does not log it as never retrieved."""
    if not fetch.cancelled():
        fetch.exception()
