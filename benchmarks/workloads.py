"""What is measured: the workloads, their sizes (full and ``--quick``) and their units.

A job records raw samples (seconds, or bytes for memory); a workload turns them into the
unit it is reported in. Every pooled contender uses 2 workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from benchmarks import tasks

#: sequential: one call at a time, a sample per call (seconds).
#: batch: ``Plan.calls`` calls submitted at once, a sample per batch (seconds).
#: memory: one trivial call on a warm pool, then a sample per idle worker (PSS bytes).
#: open: pool construction plus the first result, one sample per job (seconds).
#: restart: kill the process that holds the object, a sample per kill, until a call succeeds again (seconds).
#: reload: edit a module, a sample per edit, until a call returns the new code's answer (seconds).
Kind = Literal["sequential", "batch", "memory", "open", "restart", "reload"]
#: warm: workers are reused. fresh: every call runs in a process that ran no earlier call.
#: fresh_numpy: fresh, and numpy is what the call needs (freshproc preloads it).
PoolKind = Literal["warm", "fresh", "fresh_numpy"]
TaskName = Literal["echo", "numpy_dot", "nbytes", "identity"]

MIB = 1 << 20
#: The callers (threads or tasks) that share a batch of service calls (S3).
CONCURRENCY = 16
#: The processes that hold an object in the throughput workload (S3): ``replicas=2``.
REPLICAS = 2
#: The small arrays ``numpy_dot`` multiplies.
DOT_SIZE = 16


@dataclass(frozen=True)
class Plan:
    """How much one job measures. Timing stops after ``calls`` samples, or once ``budget``
    seconds have passed and at least ``min_samples`` were taken."""

    calls: int = 1
    repeats: int = 1
    warmup: int = 1
    budget: float = 1.0
    min_samples: int = 3
    array_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(**data)


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    measures: str
    kind: Kind
    pool: PoolKind
    task: TaskName
    unit: str
    higher_is_better: bool
    formula: str
    full: Plan
    quick: Plan

    def plan(self, quick: bool) -> Plan:
        return self.quick if quick else self.full

    def display(self, sample: float, plan: Plan) -> float:
        """One raw sample in the reported unit."""
        if self.kind == "memory":
            return sample / MIB
        if not self.higher_is_better:
            return sample * (1e6 if self.unit.startswith("µs") else 1e3)
        if self.task == "nbytes":
            return plan.array_bytes / sample / 1e9
        if self.task == "identity":
            return 2 * plan.array_bytes / sample / 1e9
        return plan.calls / sample

    def heading(self, plan: Plan) -> str:
        """The title with this plan's sizes filled in."""
        return self.title.format(
            calls=f"{plan.calls:,}", mib=plan.array_bytes // MIB, callers=CONCURRENCY, replicas=REPLICAS
        )

    @property
    def better(self) -> str:
        return "higher" if self.higher_is_better else "lower"


def task_call(task: TaskName, plan: Plan) -> tuple[Callable[[Any], object], object, Callable[[object], bool]]:
    """The function a workload calls, its argument, and a check of the result."""
    if task == "echo":
        return tasks.echo, 1, lambda result: result == 1
    if task == "numpy_dot":
        expected = float(sum(i * i for i in range(DOT_SIZE)))
        return tasks.numpy_dot, DOT_SIZE, lambda result: result == expected
    import numpy as np  # only the transfer workloads need numpy here

    array = np.arange(plan.array_bytes // 8, dtype=np.float64)
    if task == "nbytes":
        return tasks.nbytes, array, lambda result: result == array.nbytes
    return tasks.identity, array, lambda result: isinstance(result, np.ndarray) and result.nbytes == array.nbytes


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        key="A",
        title="warm round trip",
        measures="Latency of one trivial call (returns its int argument) on a warm pool, one call at a time.",
        kind="sequential",
        pool="warm",
        task="echo",
        unit="µs/call",
        higher_is_better=False,
        formula="wall time of each call, sampled per call",
        full=Plan(calls=2000, warmup=50, budget=1.5),
        quick=Plan(calls=100, warmup=10, budget=0.3),
    ),
    Workload(
        key="B",
        title="throughput, {calls} calls at once",
        measures=(
            "Trivial calls submitted all at once to a warm pool, until every result is back. Batched: freshproc "
            "blocking (pool.map_sync) and async pool.map, multiprocess.Pool.map with its default chunking. One "
            "request per call: freshproc async (a task per call) and the other peers (one submit per call)."
        ),
        kind="batch",
        pool="warm",
        task="echo",
        unit="calls/s",
        higher_is_better=True,
        formula="calls in the batch / wall time of the batch, sampled per batch",
        full=Plan(calls=5000, repeats=2, warmup=20, budget=2.0, min_samples=1),
        quick=Plan(calls=500, repeats=1, warmup=4, budget=1.0, min_samples=1),
    ),
    Workload(
        key="C",
        title="fresh process per call",
        measures="Latency of one trivial call that must run in a process that ran no earlier call, one at a time.",
        kind="sequential",
        pool="fresh",
        task="echo",
        unit="ms/call",
        higher_is_better=False,
        formula="wall time of each call, sampled per call",
        full=Plan(calls=100, warmup=2, budget=1.5),
        quick=Plan(calls=5, warmup=1, budget=0.5),
    ),
    Workload(
        key="C'",
        title="fresh process per call, {calls} at once",
        measures="200 trivial calls submitted at once, each in a process that ran no earlier call.",
        kind="batch",
        pool="fresh",
        task="echo",
        unit="calls/s",
        higher_is_better=True,
        formula="calls in the batch / wall time of the batch, sampled per batch",
        full=Plan(calls=200, repeats=2, warmup=2, budget=1.0, min_samples=1),
        quick=Plan(calls=10, repeats=1, warmup=1, budget=0.5, min_samples=1),
    ),
    Workload(
        key="D",
        title="fresh call that uses numpy",
        measures=(
            "Latency of numpy.dot on two small arrays in a process that ran no earlier call; "
            "freshproc preloads numpy into its template, peers import it cold every time."
        ),
        kind="sequential",
        pool="fresh_numpy",
        task="numpy_dot",
        unit="ms/call",
        higher_is_better=False,
        formula="wall time of each call, sampled per call",
        full=Plan(calls=50, warmup=2, budget=1.5),
        quick=Plan(calls=3, warmup=1, budget=0.5),
    ),
    Workload(
        key="E1",
        title="{mib} MiB array to a worker (one-way)",
        measures="A float64 numpy array sent to a warm worker, which returns only arr.nbytes.",
        kind="sequential",
        pool="warm",
        task="nbytes",
        unit="GB/s",
        higher_is_better=True,
        formula="array bytes / wall time of the call (GB = 10^9 bytes)",
        full=Plan(calls=10, warmup=1, budget=1.5, array_bytes=64 * MIB),
        quick=Plan(calls=3, warmup=1, budget=0.5, array_bytes=8 * MIB),
    ),
    Workload(
        key="E2",
        title="{mib} MiB array round trip",
        measures="A float64 numpy array sent to a warm worker, which returns it.",
        kind="sequential",
        pool="warm",
        task="identity",
        unit="GB/s",
        higher_is_better=True,
        formula="2 * array bytes / wall time of the call (the array crosses twice; GB = 10^9 bytes)",
        full=Plan(calls=10, warmup=1, budget=1.5, array_bytes=64 * MIB),
        quick=Plan(calls=3, warmup=1, budget=0.5, array_bytes=8 * MIB),
    ),
    Workload(
        key="F",
        title="idle worker memory",
        measures="PSS of each idle worker after one trivial call on a warm pool (helper processes in notes).",
        kind="memory",
        pool="warm",
        task="echo",
        unit="MiB PSS/worker",
        higher_is_better=False,
        formula="psutil memory_full_info().pss of each worker, sampled per worker",
        full=Plan(),
        quick=Plan(),
    ),
    Workload(
        key="G",
        title="pool open to first result",
        measures="Pool construction plus the first trivial result, in a process that never opened a pool.",
        kind="open",
        pool="warm",
        task="echo",
        unit="ms",
        higher_is_better=False,
        formula="wall time from constructing the pool to the first result, one sample per job",
        full=Plan(),
        quick=Plan(),
    ),
)

# Services: an object kept in another process, its methods called across (the contenders
# are in ``benchmarks.contenders.remote``). The method is ``tasks.Echo.echo``.
SERVICE_WORKLOADS: tuple[Workload, ...] = (
    Workload(
        key="S1",
        title="warm method round trip",
        measures=(
            "Latency of one trivial method call (returns its int argument) on an object kept in another process, "
            "one call at a time: a freshproc service, a multiprocessing manager proxy, Pyro5 and RPyC over Unix "
            "sockets; freshproc's pool.call_sync of a function is the reference row (not counted as best "
            "freshproc). Goal: the service no slower than pool.call_sync and than the manager proxy."
        ),
        kind="sequential",
        pool="warm",
        task="echo",
        unit="µs/call",
        higher_is_better=False,
        formula="wall time of each call, sampled per call",
        full=Plan(calls=2000, warmup=50, budget=1.5),
        quick=Plan(calls=100, warmup=10, budget=0.3),
    ),
    Workload(
        key="S2",
        title="restart after SIGKILL",
        measures=(
            "A service with a trivial factory: its idle process is killed with SIGKILL, then it is called until "
            "a call succeeds (calls that see the crash raise WorkerCrashedError and are retried at once). "
            "Restart policy: backoff=(0, 0) and no restart limit, so no policy delay is counted. Raw: fork a "
            "child that answers one 8-byte pipe ping. Goal: at most 5 ms (median)."
        ),
        kind="restart",
        pool="warm",
        task="echo",
        unit="ms",
        higher_is_better=False,
        formula="wall time from the kill to the first successful call, sampled per kill",
        full=Plan(calls=30, warmup=2, budget=3.0),
        quick=Plan(calls=3, warmup=1, budget=0.5),
    ),
    Workload(
        key="S3",
        title="throughput over replicas={replicas}, {calls} calls from {callers} callers",
        measures=(
            "Trivial method calls shared by 16 threads (blocking) or 16 tasks (async), each calling one after the "
            "other, over 2 processes that each hold the object: a freshproc service with "
            "ServiceOptions(replicas=2); for the peers, 2 servers, the threads taking turns between them."
        ),
        kind="batch",
        pool="warm",
        task="echo",
        unit="calls/s",
        higher_is_better=True,
        formula="calls in the batch / wall time of the batch, sampled per batch",
        full=Plan(calls=5000, repeats=3, warmup=100, budget=2.0, min_samples=1),
        quick=Plan(calls=500, repeats=1, warmup=32, budget=0.5, min_samples=1),
    ),
)

# On a Dask cluster: a local LocalCluster of 2 worker processes (1 thread each, loopback),
# started before the timing; the contenders are in ``benchmarks.contenders.dask_``.
DASK_WORKLOADS: tuple[Workload, ...] = (
    Workload(
        key="K1",
        title="Dask: warm round trip",
        measures=(
            "Latency of one trivial call on a local 2-worker Dask cluster, one call at a time: freshproc's "
            "DaskPool (a warm freshproc pool on each Dask worker) against plain client.submit(fn, arg).result()."
        ),
        kind="sequential",
        pool="warm",
        task="echo",
        unit="ms/call",
        higher_is_better=False,
        formula="wall time of each call, sampled per call",
        full=Plan(calls=200, warmup=10, budget=1.5),
        quick=Plan(calls=20, warmup=3, budget=0.5),
    ),
    Workload(
        key="K2",
        title="Dask: fresh process per call",
        measures=(
            "Latency of one trivial call that must run in a process that ran no earlier call, on a local 2-worker "
            "Dask cluster: DaskPool(fresh=True) against client.submit of a function that runs the call in a "
            "ProcessPoolExecutor(max_tasks_per_child=1, forkserver) kept in each Dask worker. Goal: DaskPool "
            "fresh at most 2x plain client.submit's warm call (K1)."
        ),
        kind="sequential",
        pool="fresh",
        task="echo",
        unit="ms/call",
        higher_is_better=False,
        formula="wall time of each call, sampled per call",
        full=Plan(calls=100, warmup=3, budget=1.5),
        quick=Plan(calls=10, warmup=2, budget=0.5),
    ),
    Workload(
        key="K3",
        title="Dask: {mib} MiB array round trip",
        measures=(
            "A float64 numpy array sent to a warm call on a local 2-worker Dask cluster, which returns it: "
            "DaskPool (scatters it, as Dask advises for large data) against client.submit(fn, array) and "
            "client.submit(fn, client.scatter(array))."
        ),
        kind="sequential",
        pool="warm",
        task="identity",
        unit="GB/s",
        higher_is_better=True,
        formula="2 * array bytes / wall time of the call (the array crosses twice; GB = 10^9 bytes)",
        full=Plan(calls=10, warmup=1, budget=1.5, array_bytes=64 * MIB),
        quick=Plan(calls=3, warmup=1, budget=0.5, array_bytes=8 * MIB),
    ),
)

WORKLOADS += SERVICE_WORKLOADS + DASK_WORKLOADS

# Hot reload: the time from saving a module to a call that runs the new code (the contenders
# are in ``benchmarks.contenders.reloading``). Its cost on warm calls is row A's
# "reload=False" reference row beside freshproc blocking.
RELOAD_WORKLOADS: tuple[Workload, ...] = (
    Workload(
        key="R",
        title="edit to new code",
        measures=(
            "A module is rewritten with a new constant; time from the end of the write to the return of the "
            "call made right after it, which must answer the new constant (stale answers are counted in the "
            "notes): a freshproc pool and a service (trivial constructor) with "
            "reload on, against a uvicorn --reload style restart (a new interpreter that imports the module). "
            "Goal: median at most 5 ms for the pool and the service."
        ),
        kind="reload",
        pool="warm",
        task="echo",
        unit="ms",
        higher_is_better=False,
        formula="wall time from the end of the write to the return of the next call, per edit",
        full=Plan(calls=100, warmup=3, budget=3.0),
        quick=Plan(calls=5, warmup=1, budget=0.5),
    ),
)

WORKLOADS += RELOAD_WORKLOADS

BY_KEY: dict[str, Workload] = {workload.key: workload for workload in WORKLOADS}
