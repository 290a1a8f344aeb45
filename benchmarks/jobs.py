"""One job = one contender on one workload, measured in its own fresh interpreter.

``launch`` starts ``python -m benchmarks._job`` and reads back the JSON result it writes
to a file (the job's stdout and stderr go to a log, since workers may print). A job that
fails, crashes or runs out of time becomes a failure reason, never an exception.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.workloads import Plan

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class JobSpec:
    workload: str
    contender: str
    plan: Plan
    result_path: str
    #: For a baseline job: a folder holding only a ``freshproc`` link to the baseline's
    #: package. The job puts it first on ``sys.path``, so that it (and the workers, which
    #: inherit the job's ``sys.path``) import the baseline, and nothing else of its checkout.
    baseline_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "contender": self.contender,
            "plan": self.plan.to_json(),
            "result_path": self.result_path,
            "baseline_path": self.baseline_path,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        return cls(
            data["workload"],
            data["contender"],
            Plan.from_json(data["plan"]),
            data["result_path"],
            data.get("baseline_path"),
        )

    def freshproc_package(self) -> Path:
        """The ``freshproc`` package folder this job must import (links resolved)."""
        root = Path(self.baseline_path) if self.baseline_path is not None else ROOT
        return (root / "freshproc").resolve()


@dataclass
class JobResult:
    """Raw samples and notes, or why there are none: ``unavailable`` (not installed, not
    supported) or ``error`` (it failed)."""

    samples: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extras: dict[str, float] = field(default_factory=dict)
    unavailable: str | None = None
    error: str | None = None
    #: Why the whole run must stop: the job measured another freshproc than it was given.
    abort: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "notes": self.notes,
            "extras": self.extras,
            "unavailable": self.unavailable,
            "error": self.error,
            "abort": self.abort,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        return cls(
            [float(sample) for sample in data["samples"]],
            list(data["notes"]),
            {str(name): float(value) for name, value in data["extras"].items()},
            data["unavailable"],
            data["error"],
            data.get("abort"),
        )


@dataclass
class Outcome:
    """A contender's results for one workload, gathered over the rounds."""

    samples: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)
    #: Why it stopped (it is not run again once set).
    failure: str | None = None

    def add(self, result: JobResult, round_index: int) -> None:
        self.samples += result.samples
        self.notes += [note for note in result.notes if note not in self.notes]
        for name, value in result.extras.items():
            self.extras.setdefault(name, []).append(value)
        reason = result.abort or result.unavailable or result.error
        if reason is not None:
            self.failure = reason if round_index == 0 else f"round {round_index + 1} failed: {reason}"


def launch(spec: JobSpec, timeout: float, log_path: Path) -> JobResult:
    """Run one job in a new interpreter (its own process group) and return its result."""
    result_path = Path(spec.result_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks._job", json.dumps(spec.to_json())]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            _end(process)
            return JobResult(error=f"timed out after {timeout:g} s")
        except BaseException:  # interrupted: take the job down with us
            _end(process)
            raise
    if result_path.exists():
        return JobResult.from_json(json.loads(result_path.read_text()))
    return JobResult(error=f"the job exited with status {code}: {_last_line(log_path)}")


def _end(process: subprocess.Popen[bytes]) -> None:
    """Kill the job's process group (the job and what it started in its session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else "no output"
