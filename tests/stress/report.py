"""A run's report: its checks, whether they all passed, and the table printed for it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.stress.outcomes import Outcome
from tests.stress.plan import EXPECTED, HEALTHY, KINDS, Config, PlannedCall, plan_digest

if TYPE_CHECKING:
    from tests.stress.checks import Run


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Report:
    api: str
    config: Config
    plan: list[PlannedCall]
    outcomes: list[Outcome]
    checks: list[Check]
    run: Run

    @property
    def ok(self) -> bool:
        return all(check.passed for check in self.checks)

    def table(self) -> str:
        config, run = self.config, self.run
        faults_planned = sum(1 for call in self.plan if call.kind != HEALTHY)
        lines = [
            (
                f"== freshproc fault campaign: {run.title or self.api + ' API'}, seed {config.seed}, "
                f"{len(self.plan)} calls ({faults_planned} faults), "
                f"concurrency {run.concurrency or config.concurrency}, Pool({config.workers}) =="
            ),
            f"plan {plan_digest(self.plan)}",
            f"{'kind':<16} {'calls':>6} {'right':>6}  {'expected':<42} observed",
        ]
        planned = Counter(call.kind for call in self.plan)
        for kind in KINDS:
            if not planned[kind]:
                continue
            outcomes = [outcome for outcome in self.outcomes if outcome.kind == kind]
            right = sum(1 for outcome in outcomes if outcome.problem is None)
            observed = Counter(outcome.observed for outcome in outcomes)
            seen = ", ".join(f"{label} x{count}" for label, count in observed.most_common())
            lines.append(f"{kind:<16} {planned[kind]:>6} {right:>6}  {EXPECTED[kind]:<42} {seen}")
        right = sum(1 for outcome in self.outcomes if outcome.problem is None)
        lines.append(f"{'total':<16} {len(self.plan):>6} {right:>6}")
        latencies = sorted(outcome.latency for outcome in self.outcomes if outcome.kind == HEALTHY)
        if latencies:
            lines.append(
                f"healthy latency (queueing included): p50 {_quantile(latencies, 0.50) * 1e3:.1f} ms, "
                f"p99 {_quantile(latencies, 0.99) * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms"
            )
        if run.stats is not None:
            stats = run.stats
            lines.append(
                f"pool.stats(): workers_started {stats.workers_started}, workers_crashed {stats.workers_crashed}, "
                f"workers_retired {stats.workers_retired}, calls_served {stats.calls_served}, "
                f"workers_alive {stats.workers_alive}, workers_idle {stats.workers_idle}"
            )
        lines.append(f"worker processes seen: {run.workers_seen}; wall time {run.wall:.1f} s")
        lines.extend(run.notes)
        lines.append("checks:")
        lines.extend(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}" for check in self.checks)
        wrong = [outcome for outcome in self.outcomes if outcome.problem is not None]
        if wrong:
            lines.append(f"wrong outcomes ({len(wrong)}, first 20):")
            lines.extend(f"  #{outcome.index} {outcome.kind}: {outcome.problem}" for outcome in wrong[:20])
        lines.append(f"RESULT ({self.api}): {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]
