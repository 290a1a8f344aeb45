"""What a run observed (``Run``) and the checks made of it: every outcome right, nothing
hung, nothing leaked, ended workers gone, ``pool.stats()`` adding up, the pool still
serving, the caller's memory bounded; a phase may add checks of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

import freshproc
from tests.stress import hostile_kinds
from tests.stress.context import Context
from tests.stress.hostile_kinds import HOSTILE_KINDS, REFUSED_KINDS
from tests.stress.outcomes import Outcome, Raw, describe, judge
from tests.stress.plan import CANCEL_ONCE_STARTED, CRASH_KINDS, REPLY_KINDS, Config, PlannedCall
from tests.stress.report import Check, Report


@dataclass
class Run:
    """What one run observed, filled in as it goes; ``report`` makes the checks."""

    config: Config
    api: str
    plan: list[PlannedCall]
    outcomes: list[Outcome] = field(default_factory=list)
    hung: list[PlannedCall] = field(default_factory=list)
    serves_problem: str | None = "not reached"
    lingering: list[psutil.Process] = field(default_factory=list)
    stats: freshproc.PoolStats | None = None
    leaks: list[str] = field(default_factory=list)
    wall: float = 0.0
    workers_seen: int = 0
    #: The caller's RSS before the calls, the most seen after a hostile call, and after.
    rss: tuple[int, int, int] | None = None
    memfd_problem: str | None = None
    #: The calls that reached a worker, for the counters (None: every planned call).
    ran: list[PlannedCall] | None = None
    #: Answered calls outside the plan: the final check that the pool serves, and more.
    extra_served: int | None = None
    #: Checks of a phase, after the common ones.
    extra_checks: list[Check] = field(default_factory=list)
    #: Counted apart from the kinds in the table (say, KeyboardInterrupt per kind).
    notes: list[str] = field(default_factory=list)
    #: A phase's own check of the counters (None: every call counted as its kind says).
    stats_check: Callable[[], Check] | None = None
    #: What the table's title says (default: "<api> API"), and the calls at once.
    title: str | None = None
    concurrency: int | None = None

    @staticmethod
    def outcome(call: PlannedCall, raw: Raw, latency: float) -> Outcome:
        """Judge a call, then let go of its value: a raw its exception's traceback keeps
        in a reference cycle must not hold a result (a mapped memfd) until the collector
        runs, or the leak check would see its descriptor."""
        problem = None if raw.interrupted else judge(call, raw)
        outcome = Outcome(call.index, call.kind, describe(raw), problem, latency)
        raw.value = None
        return outcome

    def note_memory(self, ctx: Context) -> None:
        self.rss = (ctx.rss_before, ctx.rss_peak, ctx.rss_settled())
        self.memfd_problem = ctx.memfd_problem()

    def report(self) -> Report:
        checks = [
            self._check_outcomes(),
            Check("nothing hung", not self.hung, self._hung_detail()),
            Check("no descriptor or process leaked", not self.leaks, "; ".join(self.leaks) or "none"),
            Check(
                "workers ended by faults are gone",
                not self.lingering,
                ", ".join(str(process.pid) for process in self.lingering) or "all gone before close",
            ),
            self._check_stats() if self.stats_check is None else self.stats_check(),
            Check(
                "the pool still serves afterwards",
                self.serves_problem is None,
                self.serves_problem or f"{2 * self.config.workers} concurrent calls returned their values",
            ),
        ]
        if any(call.kind in HOSTILE_KINDS for call in self.plan):
            checks.append(self._check_memory())
        checks.extend(self.extra_checks)
        return Report(self.api, self.config, self.plan, sorted(self.outcomes, key=lambda o: o.index), checks, self)

    def _check_outcomes(self) -> Check:
        wrong = sum(1 for outcome in self.outcomes if outcome.problem is not None)
        missing = len(self.plan) - len(self.outcomes)
        detail = f"{len(self.outcomes) - wrong}/{len(self.plan)} as expected"
        if missing:
            detail += f", {missing} never finished"
        return Check("every call got its own expected outcome", wrong == 0 and missing == 0, detail)

    def _hung_detail(self) -> str:
        if not self.hung:
            return f"{self.wall:.1f} s, deadline {self.config.deadline:.0f} s"
        calls = ", ".join(f"#{call.index} {call.kind}" for call in self.hung[:20])
        return f"deadline of {self.config.deadline:.0f} s passed; in flight: {calls}"

    def _check_memory(self) -> Check:
        name = "the caller's memory stays bounded by hostile workers"
        if self.rss is None:
            return Check(name, False, "not reached")
        before, peak, after = self.rss
        named = hostile_kinds.named_bytes(call.kind for call in self.plan)
        detail = (
            f"RSS {before / 2**20:.0f} MiB before, {after / 2**20:.0f} MiB after (limit "
            f"+{hostile_kinds.RSS_GROWTH_LIMIT >> 20} MiB), {peak / 2**20:.0f} MiB at most after a hostile "
            f"call, garbage included (limit +{hostile_kinds.RSS_PEAK_LIMIT >> 20} MiB); the hostile calls "
            f"named {named / 2**30:.1f} GiB, {hostile_kinds.SPARSE_SIZE >> 20} MiB at once, and sizes up to 2**63"
        )
        if self.memfd_problem is not None:
            return Check(name, False, f"a memfd result changed after its call: {self.memfd_problem}; {detail}")
        bounded = after - before < hostile_kinds.RSS_GROWTH_LIMIT and peak - before < hostile_kinds.RSS_PEAK_LIMIT
        return Check(name, bounded, detail)

    def consistency_problems(self) -> list[str]:
        """What ``pool.stats()`` gets wrong whatever the calls did."""
        stats = self.stats
        assert stats is not None
        problems = []
        if stats.workers_started != stats.workers_alive + stats.workers_exited:
            problems.append(f"workers_started {stats.workers_started} != alive + exited {stats.workers_exited}")
        exits = sum(getattr(stats, f"workers_{reason}") for reason in EXIT_REASONS)
        if exits != stats.workers_exited:
            problems.append(f"exits by reason add up to {exits}, not workers_exited {stats.workers_exited}")
        if stats.calls_served != stats.calls_ok + stats.calls_failed:
            problems.append(f"calls_served {stats.calls_served} != calls_ok + calls_failed")
        if stats.workers_alive > self.config.workers:
            problems.append(f"workers_alive {stats.workers_alive} > {self.config.workers}")
        return problems

    def _check_stats(self) -> Check:
        stats = self.stats
        if stats is None:
            return Check("pool.stats() adds up", False, "not reached")
        kinds = Counter(call.kind for call in (self.plan if self.ran is None else self.ran))
        crashes = sum(kinds[kind] for kind in (*CRASH_KINDS, *REFUSED_KINDS))
        extra = 2 * self.config.workers if self.extra_served is None else self.extra_served
        replies = sum(kinds[kind] for kind in REPLY_KINDS) + extra
        cancelled_once_started = sum(1 for c in self.plan if c.kind == "cancel" and c.arg == CANCEL_ONCE_STARTED)
        # Workers a fault surely ended; a fail_after may also end one, or expire in the queue.
        ended = crashes + kinds["timeout"] + kinds["memory"] + cancelled_once_started
        problems = []
        if stats.workers_crashed != crashes:
            problems.append(f"workers_crashed {stats.workers_crashed} != {crashes} crash faults and refused replies")
        if stats.calls_served != replies:
            problems.append(f"calls_served {stats.calls_served} != {replies} answered calls")
        if stats.workers_retired != kinds["memory"]:
            problems.append(f"workers_retired {stats.workers_retired} != {kinds['memory']} memory faults")
        problems.extend(self.consistency_problems())
        if stats.workers_started < ended + stats.workers_alive:
            problems.append(f"workers_started {stats.workers_started} < {ended} ended + {stats.workers_alive} alive")
        detail = "; ".join(problems) or (
            f"crashed {crashes}, served {replies}, retired {kinds['memory']}, started = alive + exited >= {ended} + alive"
        )
        return Check("pool.stats() adds up", not problems, detail)


EXIT_REASONS = ("recycled", "expired", "crashed", "timed_out", "cancelled", "retired", "closed")


def check_whole(pool: freshproc.Pool) -> Check:
    """With no call running: no worker checked out, nobody waiting for one."""
    ledger = pool._workers._ledger
    busy, waiting = ledger.busy(), len(ledger.waiting)
    return Check(
        "no worker left checked out, nobody waiting",
        busy == 0 and waiting == 0,
        f"{busy} workers checked out and {waiting} callers waiting with no call running",
    )
