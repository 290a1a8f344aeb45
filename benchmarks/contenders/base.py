"""What every contender provides: a way to measure one workload in this process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.workloads import Plan, Workload


@dataclass
class Measurement:
    """Raw samples (seconds, or bytes for memory), remarks for the report, and side values
    (named numbers such as a helper process's memory, summarized over the rounds)."""

    samples: list[float]
    notes: list[str] = field(default_factory=list)
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class Processes:
    """A pool's processes: the workers, and helpers such as a template or a fork server."""

    workers: list[int]
    helpers: list[tuple[str, int]] = field(default_factory=list)


class Contender(ABC):
    """One library used one way (or one raw limit), measured in the job's own process."""

    @abstractmethod
    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        """Run ``workload`` as ``plan`` says and return its samples."""
