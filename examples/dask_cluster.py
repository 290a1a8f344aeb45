"""freshproc across a Dask cluster: fresh calls and a supervised service on Dask workers.

Starts a local cluster (two Dask worker processes, loopback only), then:

- runs calls through ``freshproc.dask.DaskPool(cluster, fresh=True)``: each call runs in
  a new process on some Dask worker, starting from a clean interpreter;
- shows that a segfault there raises ``WorkerCrashedError`` naming the Dask worker, and
  that the Dask worker lives on;
- opens a service (``freshproc.dask.service``) on one Dask worker, calls it, crashes it,
  and calls it again: its supervisor restarted it there.

The same code runs against a real cluster: pass the scheduler's address instead of the
local cluster, ``DaskPool("tcp://scheduler:8786", fresh=True)`` (or run this script with
``--scheduler tcp://scheduler:8786``). The workers need freshproc installed.

Run it: ``python examples/dask_cluster.py [--scheduler ADDRESS]``
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from contextlib import ExitStack
from typing import Any

from _support import expect

import freshproc

try:
    from distributed import LocalCluster

    import freshproc.dask
except ImportError:
    print("SKIPPED: the dask extra is not installed (pip install 'freshproc[dask]')")
    raise SystemExit(0) from None

#: The scheduler's HTTP server: ``dashboard_address=None`` still serves it on port 8787
#: (with a warning when that port is taken), so a free port on loopback instead.
LOOPBACK_ANY_PORT = "127.0.0.1:0"


def where_am_i() -> tuple[str, int, int]:
    """Runs on the cluster: the host, this process and how many modules it has loaded."""
    return socket.gethostname(), os.getpid(), len(sys.modules)


def remember(value: int, _seen: list[int] = []) -> list[int]:  # noqa: B006 - the state is the point
    """Module state that a warm process would keep between calls, and a fresh one never has."""
    _seen.append(value)
    return list(_seen)


def segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


class Tally:
    """A service's object: it keeps a running total in its process."""

    def __init__(self, start: int) -> None:
        self.total = start

    def add(self, amount: int) -> int:
        self.total += amount
        return self.total

    def crash(self) -> None:
        segfault()


def main(scheduler: str | None) -> None:
    with ExitStack() as stack:
        cluster: Any = scheduler
        if cluster is None:
            cluster = stack.enter_context(
                LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1, dashboard_address=LOOPBACK_ANY_PORT)
            )
        pool = stack.enter_context(freshproc.dask.DaskPool(cluster, fresh=True))

        print("fresh calls on the cluster:")
        results = [pool.run_sync(remember, index) for index in range(4)]
        for index, result in enumerate(results):
            print(f"  remember({index}) -> {result}")
        expect(results == [[index] for index in range(4)], "every fresh call starts with clean module state")
        host, pid, modules = pool.run_sync(where_am_i)
        print(f"  ran on {host}, pid {pid}, with {modules} modules loaded (the caller has {len(sys.modules)})")
        expect(pid != os.getpid(), "the call ran in another process")

        try:
            pool.run_sync(segfault)
        except freshproc.WorkerCrashedError as exc:
            print(f"a segfault on the cluster -> WorkerCrashedError: {exc}")
        else:
            expect(False, "a segfault raises WorkerCrashedError")
        expect(pool.run_sync(remember, 9) == [9], "the Dask worker lives on, and so does its pool")

        print("a service on a Dask worker:")
        with freshproc.dask.service(cluster, Tally, 100) as tally:
            print(f"  on {tally.worker}: add(1) -> {tally.call_sync('add', 1)}, add(2) -> {tally.call_sync('add', 2)}")
            try:
                tally.call_sync("crash")
            except freshproc.WorkerCrashedError as exc:
                print(f"  crash() -> WorkerCrashedError: {exc}")
            again = tally.call_sync("add", 1)
            print(f"  restarted {tally.restarts} time(s); add(1) -> {again} (a new object, built again)")
            expect(again == 101, "the restarted service has a fresh object")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(arguments[arguments.index("--scheduler") + 1] if "--scheduler" in arguments else None)
