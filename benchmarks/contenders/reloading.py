"""Contenders of workload R (edit to new code): how long after a module is saved does a
call first run the new code?

Each sample: write a module with a new constant (a plain write, as an editor's save), then
make one call; the time runs from the end of the write to the return of that call. The call
must already answer the new constant (an older one is counted as stale, in the notes: hot
reload promises none). freshproc: a pool and a service with reload on. The uvicorn-style
row starts a whole interpreter on each edit (what ``--reload`` users wait for): a new
``python`` that imports the module and prints the constant.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import freshproc
from benchmarks.contenders.base import Contender, Measurement
from benchmarks.workloads import Plan, Workload

_MODULE = "edited_module"
_SOURCE = "VALUE = {value}\n\n\ndef value():\n    return VALUE\n\n\nclass Holder:\n    def value(self):\n        return VALUE\n"


class _Edits:
    """A module in a temporary folder, rewritten with a new constant on each ``edit``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{_MODULE}.py"
        self.value = 0
        self.path.write_text(_SOURCE.format(value=0))

    def edit(self) -> int:
        self.value += 1
        self.path.write_text(_SOURCE.format(value=self.value))
        return self.value


class ReloadPool(Contender):
    """``Pool(2, reload=True)``: edit, then ``call_sync`` the module's function."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        with tempfile.TemporaryDirectory() as folder:
            return _measure_edits(Path(folder), plan, _pool_caller)


class ReloadService(Contender):
    """``service(..., ServiceOptions(reload=True))`` of a trivial class: edit, then call."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        with tempfile.TemporaryDirectory() as folder:
            return _measure_edits(Path(folder), plan, _service_caller)


class RestartInterpreter(Contender):
    """uvicorn ``--reload`` style: a new interpreter per edit, importing the module."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        with tempfile.TemporaryDirectory() as folder:
            return _measure_edits(Path(folder), plan, _interpreter_caller)


#: Makes (the call to time, what closes it) for a module folder.
Caller = Callable[[Path], tuple[Callable[[], object], Callable[[], None]]]


def _pool_caller(folder: Path) -> tuple[Callable[[], object], Callable[[], None]]:
    pool = freshproc.Pool(2, env={"PYTHONPATH": str(folder)})
    pool.start()
    return (lambda: pool.call_sync(_MODULE, "value")), pool.close


def _service_caller(folder: Path) -> tuple[Callable[[], object], Callable[[], None]]:
    options = freshproc.ServiceOptions(reload=True, env={"PYTHONPATH": str(folder)})
    service = freshproc.service(_MODULE, "Holder", options=options)
    service.start_sync()
    return (lambda: service.call_sync("value")), service.close


def _interpreter_caller(folder: Path) -> tuple[Callable[[], object], Callable[[], None]]:
    command = [sys.executable, "-c", f"import {_MODULE}; print({_MODULE}.value())"]

    def call() -> object:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=True)
        return int(done.stdout)

    return call, lambda: None


def _measure_edits(folder: Path, plan: Plan, make: Caller) -> Measurement:
    edits = _Edits(folder)
    call, close = make(folder)
    stale: list[int] = []
    samples: list[float] = []
    try:
        for _ in range(plan.warmup):
            edits.edit()
            call()
        deadline = time.perf_counter() + plan.budget
        while True:
            expected = edits.edit()
            start = time.perf_counter()  # the write has ended
            if call() != expected:
                stale.append(expected)
            end = time.perf_counter()
            samples.append(end - start)
            if len(samples) >= plan.calls or (len(samples) >= plan.min_samples and end >= deadline):
                break
    finally:
        close()
    return Measurement(samples, [f"stale calls: {len(stale)}"], {"stale calls, per job": float(len(stale))})


def build(name: str) -> Contender:
    if name == "freshproc-reload-pool":
        return ReloadPool()
    if name == "freshproc-reload-service":
        return ReloadService()
    return RestartInterpreter()
