"""Who is measured: every contender, the workloads it takes part in, and what it needs.

This module imports no contender library: the orchestrator uses it to plan a run, and a
job process calls ``load`` to build the one contender it measures.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass
from typing import Literal

from benchmarks.contenders.base import Contender
from benchmarks.workloads import Workload

Family = Literal["freshproc", "peer", "raw"]
#: Appended to a freshproc contender's name for its baseline row.
BASELINE_SUFFIX = "@baseline"

_WARM = frozenset({"A", "B", "E1", "E2", "F", "G"})
_FRESH = frozenset({"C", "C'", "D"})
_ALL = _WARM | _FRESH
_SERVICE = frozenset({"S1", "S2", "S3"})
_REMOTE = "remote"
_RELOADING = "reloading"
_DASK = "dask"


@dataclass(frozen=True)
class Entry:
    name: str
    label: str
    family: Family
    workloads: frozenset[str]
    requires: tuple[str, ...] = ()
    #: Its fresh pools need ``max_tasks_per_child`` (Python 3.11+).
    fresh_needs_311: bool = False
    #: Part of the ``--quick`` run.
    quick: bool = False
    #: Set on a baseline row: the name of the contender it runs with the baseline freshproc.
    baseline_of: str | None = None
    #: A reference row: shown with its family, never picked as its family's best.
    reference: bool = False
    #: The contenders module that builds it, when not its family's own ("remote": the
    #: service workloads' contenders, which keep an object in another process).
    module: str | None = None

    @property
    def contender(self) -> str:
        """The contender a job builds for this row (``load``'s argument)."""
        return self.baseline_of or self.name

    def as_baseline(self) -> Entry:
        """This freshproc contender run with the baseline's freshproc (``--baseline``)."""
        if self.family != "freshproc" or self.baseline_of is not None:
            raise ValueError(f"{self.name} has no baseline variant")
        return dataclasses.replace(
            self, name=f"{self.name}{BASELINE_SUFFIX}", label=f"{self.label} [baseline]", baseline_of=self.name
        )

    def unavailable(self, workload: Workload) -> str | None:
        """Why this contender cannot run ``workload`` here, or None."""
        missing = [module for module in self.requires if importlib.util.find_spec(module) is None]
        if missing:
            return f"{', '.join(missing)} not installed"
        if self.fresh_needs_311 and workload.pool != "warm" and sys.version_info < (3, 11):
            return "max_tasks_per_child needs Python 3.11+"
        return None


ENTRIES: tuple[Entry, ...] = (
    Entry("freshproc-asyncio", "freshproc async (asyncio)", "freshproc", _ALL - {"F"}, quick=True),
    Entry("freshproc-trio", "freshproc async (trio)", "freshproc", _ALL - {"F"}, ("trio",)),
    Entry("freshproc-blocking", "freshproc blocking", "freshproc", _ALL, quick=True),
    Entry("freshproc-asyncio-map", "freshproc async pool.map (asyncio)", "freshproc", frozenset({"B"})),
    # Per-call submission (B), without pipelining and with Pool(pipeline=2).
    Entry("freshproc-threads", "freshproc blocking, 16 threads of run_sync", "freshproc", frozenset({"B"})),
    Entry("freshproc-asyncio-pipelined", "freshproc async (asyncio), pipeline=2", "freshproc", frozenset({"A", "B"})),
    Entry("freshproc-trio-pipelined", "freshproc async (trio), pipeline=2", "freshproc", frozenset({"B"}), ("trio",)),
    Entry(
        "freshproc-threads-pipelined",
        "freshproc blocking, 16 threads of run_sync, pipeline=2",
        "freshproc",
        frozenset({"B"}),
    ),
    Entry(
        "freshproc-blocking-preloaded",
        "freshproc blocking, task module preloaded (reference)",
        "freshproc",
        frozenset({"C", "C'"}),
        reference=True,
    ),
    Entry("ppe-spawn", "ProcessPoolExecutor (spawn)", "peer", _ALL, fresh_needs_311=True),
    Entry("ppe-forkserver", "ProcessPoolExecutor (forkserver)", "peer", _ALL, fresh_needs_311=True, quick=True),
    Entry("loky", "loky get_reusable_executor", "peer", _WARM, ("loky",)),
    Entry("pebble", "pebble ProcessPool", "peer", _ALL, ("pebble",)),
    Entry("multiprocess", "multiprocess.Pool", "peer", _ALL, ("multiprocess",)),
    Entry("multiprocess-map", "multiprocess.Pool.map (chunked)", "peer", frozenset({"B"}), ("multiprocess",)),
    Entry("anyio-asyncio", "anyio.to_process (asyncio)", "peer", _WARM),
    Entry("anyio-trio", "anyio.to_process (trio)", "peer", _WARM - {"F"}, ("trio",)),
    Entry("raw-pipe", "raw: os.pipe to a forked child", "raw", frozenset({"A", "B", "E1", "E2", "S1"}), quick=True),
    Entry("raw-fork", "raw: os.fork per call", "raw", frozenset({"C", "C'", "D", "F", "G"}), quick=True),
    Entry("raw-memcpy", "raw: in-process memcpy", "raw", frozenset({"E1", "E2"}), ("numpy",), quick=True),
    Entry("raw-exec", "raw: new interpreter", "raw", frozenset({"G"}), quick=True),
    # An object kept in another process (workloads S1-S3).
    Entry(
        "freshproc-service-blocking", "freshproc service call_sync", "freshproc", _SERVICE, quick=True, module=_REMOTE
    ),
    Entry(
        "freshproc-service-blocking-concurrent",
        "freshproc service call_sync, max_concurrency=8",
        "freshproc",
        frozenset({"S3"}),
        module=_REMOTE,
    ),
    Entry(
        "freshproc-service-asyncio",
        "freshproc service await call (asyncio)",
        "freshproc",
        _SERVICE,
        quick=True,
        module=_REMOTE,
    ),
    Entry(
        "freshproc-service-trio",
        "freshproc service await call (trio)",
        "freshproc",
        _SERVICE - {"S2"},
        ("trio",),
        module=_REMOTE,
    ),
    Entry(
        "freshproc-pool-call-sync",
        "freshproc pool.call_sync (reference)",
        "freshproc",
        frozenset({"S1"}),
        quick=True,
        reference=True,
        module=_REMOTE,
    ),
    Entry("manager", "multiprocessing BaseManager proxy", "peer", _SERVICE - {"S2"}, quick=True, module=_REMOTE),
    Entry("pyro5", "Pyro5 proxy (Unix socket)", "peer", _SERVICE - {"S2"}, ("Pyro5",), module=_REMOTE),
    Entry("rpyc", "RPyC (Unix socket)", "peer", _SERVICE - {"S2"}, ("rpyc",), module=_REMOTE),
    Entry("raw-fork-answer", "raw: fork a child, one pipe ping", "raw", frozenset({"S2"}), quick=True),
    # Hot reload: its cost on the warm call (A), and edit to new code (R).
    Entry(
        "freshproc-blocking-no-reload",
        "freshproc blocking, reload=False (reference)",
        "freshproc",
        frozenset({"A"}),
        quick=True,
        reference=True,
    ),
    Entry(
        "freshproc-reload-pool",
        "freshproc pool, reload on",
        "freshproc",
        frozenset({"R"}),
        quick=True,
        module=_RELOADING,
    ),
    Entry(
        "freshproc-reload-service",
        "freshproc service, reload=True",
        "freshproc",
        frozenset({"R"}),
        quick=True,
        module=_RELOADING,
    ),
    Entry(
        "raw-restart-interpreter",
        "raw: new interpreter per edit (uvicorn --reload style)",
        "raw",
        frozenset({"R"}),
        quick=True,
        module=_RELOADING,
    ),
    # On a local Dask cluster (workloads K1-K3).
    Entry(
        "freshproc-dask-blocking",
        "freshproc DaskPool call_sync",
        "freshproc",
        frozenset({"K1", "K2", "K3"}),
        ("distributed",),
        quick=True,
        module=_DASK,
    ),
    Entry(
        "freshproc-dask-asyncio",
        "freshproc DaskPool await run (asyncio)",
        "freshproc",
        frozenset({"K1", "K2"}),
        ("distributed",),
        module=_DASK,
    ),
    Entry(
        "dask-submit", "dask client.submit", "peer", frozenset({"K1", "K3"}), ("distributed",), quick=True, module=_DASK
    ),
    Entry(
        "dask-submit-scatter",
        "dask client.submit of client.scatter(array)",
        "peer",
        frozenset({"K3"}),
        ("distributed",),
        module=_DASK,
    ),
    Entry(
        "dask-submit-ppe",
        "dask client.submit, ProcessPoolExecutor(max_tasks_per_child=1) in the worker",
        "peer",
        frozenset({"K2"}),
        ("distributed",),
        fresh_needs_311=True,
        module=_DASK,
    ),
)

BY_NAME: dict[str, Entry] = {entry.name: entry for entry in ENTRIES}


def load(name: str) -> Contender:
    """Build contender ``name``, importing only its own module."""
    entry = BY_NAME[name]
    if entry.module == _RELOADING:
        from benchmarks.contenders import reloading

        return reloading.build(name)
    if entry.module == _DASK:
        from benchmarks.contenders import dask_

        return dask_.build(name)
    if entry.module == _REMOTE:
        from benchmarks.contenders import remote

        return remote.build(name)
    family = entry.family
    if family == "freshproc":
        from benchmarks.contenders import freshproc_

        return freshproc_.build(name)
    if family == "peer":
        from benchmarks.contenders import peers

        return peers.build(name)
    from benchmarks.contenders import raw

    return raw.build(name)
