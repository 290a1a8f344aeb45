"""``PoolStats`` adds up, and each outcome lands in its own counter.

Two layers: a hypothesis state machine drives the sans-I/O ``Ledger`` with fake workers
and an injected clock (thousands of transitions a second, every invariant checked after
every step); a smaller property test drives a real two-worker pool through random
sequences of calls that return, raise, crash and time out, and of recycles. One async
test covers cancellation on asyncio and trio.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import TYPE_CHECKING, cast

import anyio
import anyio.to_thread
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import freshproc
from freshproc._errors import PoolClosedError
from freshproc._ledger import SPAWN_RETRIES, Effects, Lease, Ledger, Outcome, PoolStats, TemplateLost, Worker
from freshproc._policy import PoolOptions
from freshproc._waiters import SyncWaiter
from tests import faults
from tests.handshake import Handshake

if TYPE_CHECKING:
    import socket

#: Counters that say why a worker left, in the order ``PoolStats`` lists them.
EXIT_REASONS = ("recycled", "expired", "crashed", "timed_out", "cancelled", "retired", "closed")


def assert_adds_up(stats: PoolStats) -> None:
    """The three identities ``PoolStats`` promises."""
    assert stats.workers_started == stats.workers_alive + stats.workers_exited, stats
    assert stats.workers_exited == sum(getattr(stats, f"workers_{reason}") for reason in EXIT_REASONS), stats
    assert stats.calls_served == stats.calls_ok + stats.calls_failed, stats
    assert 0 <= stats.workers_idle <= stats.workers_alive, stats


def delta(before: PoolStats, after: PoolStats) -> dict[str, int]:
    """The counters that changed, by how much (the live gauges left out)."""
    changed = {
        name: getattr(after, name) - getattr(before, name)
        for name in PoolStats.__dataclass_fields__
        if name not in ("workers_alive", "workers_idle")
    }
    return {name: change for name, change in changed.items() if change}


# -- layer 1: the ledger, with fake workers ---------------------------------------------------


def pool_options(
    *, workers: int, fresh: bool = False, max_calls: int | None = None, idle_timeout: float | None = None
) -> PoolOptions:
    return PoolOptions.build(
        workers=workers,
        fresh=fresh,
        max_calls_per_worker=max_calls,
        idle_timeout=idle_timeout,
        timeout=None,
        preload=(),
        env=None,
        cwd=None,
        max_memory=None,
        memory_limit=None,
        capture_output=False,
        grace_period=0.5,
        max_result_size=None,
        backend="local",
    )


class FakeChannel:
    """Stands in for a worker's socket: the ledger only ever closes it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


OUTCOMES: tuple[Outcome, ...] = ("ok", "failed", "unused", "dead", "crashed", "timed_out", "cancelled", "broken")

#: The call counter each outcome moves, and the exit counter its worker lands in where
#: the outcome alone decides it (after ok/failed/unused the policies do: see
#: ``expected_release``).
CALL_COUNTER: dict[Outcome, str | None] = {
    "ok": None,
    "failed": None,
    "unused": None,
    "dead": None,
    "crashed": "calls_crashed",
    "broken": "calls_crashed",
    "timed_out": "calls_timed_out",
    "cancelled": "calls_cancelled",
}
WORKER_COUNTER: dict[Outcome, str] = {
    "dead": "workers_crashed",
    "crashed": "workers_crashed",
    "broken": "workers_crashed",
    "timed_out": "workers_timed_out",
    "cancelled": "workers_cancelled",
}


class LedgerMachine(RuleBasedStateMachine):
    """The ledger between a fake template (spawns, exits, failures, loss) and fake callers
    (leases that wait, get woken, finish with every outcome, or give up).

    Hypothesis picks evenly among the rules that are enabled (and switches some off for a
    whole run); the preconditions keep the rules that undo much (a lost template, a close,
    a failed fork) and the idle clock from crowding out the calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.ledger: Ledger
        self.next_pid = 100
        self.pending_spawns = 0  # asked of the template, not yet answered
        self.waiting: list[Lease] = []  # queued for a worker
        self.woken: list[Lease] = []  # handed a worker by a wake: the caller has not resumed
        self.holding: list[Lease] = []  # running a call on their worker
        self.seen: dict[int, Worker] = {}  # every worker the ledger was given
        self.channels: dict[int, FakeChannel] = {}
        self.terminated: set[int] = set()  # asked to end, exit not yet reported
        self.reaped: set[int] = set()  # exit reported (or gone with the template)
        self.events: Counter[str] = Counter()
        self.losses = self.recycles = 0  # a few per run: each undoes much

    @initialize(
        workers=st.integers(1, 3),
        fresh=st.booleans(),
        max_calls=st.none() | st.integers(1, 3),
        idle_timeout=st.none() | st.sampled_from([1.0, 10.0]),
    )
    def start(self, workers: int, fresh: bool, max_calls: int | None, idle_timeout: float | None) -> None:
        self.ledger = Ledger(
            pool_options(workers=workers, fresh=fresh, max_calls=max_calls, idle_timeout=idle_timeout), lambda: self.now
        )
        self.apply(self.ledger.source_started())

    # -- applying effects, as WorkerSet._apply does ------------------------------------------

    def apply(self, effects: Effects) -> None:
        for lease in effects.wake:
            assert lease in self.waiting, "woke a lease that was not waiting"
            assert lease.worker is not None, "woke a lease without a worker in it"
            self.waiting.remove(lease)
            self.woken.append(lease)
        for lease, error in effects.wake_errors:
            assert lease in self.waiting, "failed a lease that was not waiting"
            assert lease.worker is None, "failed a lease that holds a worker"
            assert isinstance(error, (PoolClosedError, TemplateLost, freshproc.WorkerStartupError))
            self.waiting.remove(lease)
        for channel in effects.close:
            cast("FakeChannel", channel).close()
        for pid, grace in effects.terminate:
            assert pid not in self.reaped, f"asked to end {pid}, whose exit was already reported"
            assert pid not in self.terminated, f"asked to end {pid} twice"
            assert grace >= 0
            self.terminated.add(pid)
        self.pending_spawns += effects.spawn
        assert not effects.exit_wakes  # nobody here watches an exit
        for event in effects.events:
            self.events[event.kind] += 1

    # -- the template reports ------------------------------------------------------------

    @precondition(lambda self: self.pending_spawns > 0)
    @rule()
    def worker_spawned(self) -> None:
        self.pending_spawns -= 1
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        channel = FakeChannel(pid)
        self.channels[pid] = channel
        if self.ledger.closed:
            # What the worker set does: the template ends it; the ledger never hears.
            channel.close()
            self.reaped.add(pid)
            return
        before = self.ledger.stats()
        self.apply(self.ledger.spawned(pid, cast("socket.socket", channel)))
        self.seen[pid] = self.ledger.workers[pid]
        assert delta(before, self.ledger.stats()) == {"workers_started": 1}

    @precondition(lambda self: self.pending_spawns > 0)
    @rule(data=st.data(), skip=st.booleans())
    def spawn_failed(self, data: st.DataObject, skip: bool) -> None:
        if skip:  # half of the time: five failures in a row fail every waiting caller
            return
        count = data.draw(st.integers(1, self.pending_spawns))
        self.pending_spawns -= count
        before = self.ledger.stats()
        self.apply(self.ledger.spawn_failed(count, "cannot fork"))
        assert delta(before, self.ledger.stats()) == {}

    @precondition(lambda self: bool(self.terminated))
    @rule(data=st.data(), signum=st.sampled_from([signal.SIGTERM, signal.SIGKILL]))
    def terminated_worker_exits(self, data: st.DataObject, signum: int) -> None:
        pid = data.draw(st.sampled_from(sorted(self.terminated)))
        self.terminated.discard(pid)
        self.reaped.add(pid)
        before = self.ledger.stats()
        self.apply(self.ledger.exited(pid, None, signum))
        assert delta(before, self.ledger.stats()) == {}, "a worker that was asked to end counted twice"

    @precondition(lambda self: bool(self.running_pids()))
    @rule(data=st.data())
    def worker_dies(self, data: st.DataObject) -> None:
        """A worker dies unasked: idle (replaced, counted as a crash now) or mid-call (its
        caller reports the crash)."""
        pid = data.draw(st.sampled_from(self.running_pids()))
        was_idle = self.seen[pid] in self.ledger.idle
        self.reaped.add(pid)
        before = self.ledger.stats()
        self.apply(self.ledger.exited(pid, None, signal.SIGSEGV))
        expected = {"workers_exited": 1, "workers_crashed": 1} if was_idle else {}
        assert delta(before, self.ledger.stats()) == expected

    def settled(self) -> bool:
        """Closed, and nothing more will happen (time passing is all that is left)."""
        return self.ledger.closed and not (
            self.pending_spawns or self.waiting or self.woken or self.holding or self.terminated
        )

    def running_pids(self) -> list[int]:
        return sorted(pid for pid in self.ledger.workers if pid not in self.reaped)

    @precondition(lambda self: self.losses < 2 and len(self.seen) >= 2 and bool(self.ledger.workers or self.waiting))
    @rule()
    def template_lost(self) -> None:
        self.losses += 1
        idle = len(self.ledger.idle)
        closed = self.ledger.closed
        before = self.ledger.stats()
        self.apply(self.ledger.lost("the template was killed"))
        # Every process went with it, and what it was forking never comes.
        self.reaped |= self.terminated | set(self.ledger.workers)
        self.terminated.clear()
        self.pending_spawns = 0
        reason = "workers_closed" if closed else "workers_crashed"
        assert delta(before, self.ledger.stats()) == ({"workers_exited": idle, reason: idle} if idle else {})
        assert not self.waiting, "a caller still waits on a template that is gone"

    # -- callers -----------------------------------------------------------------------------

    @precondition(
        lambda self: (
            not self.ledger.closed and len(self.waiting + self.woken + self.holding) <= self.ledger.options.workers + 1
        )
    )
    @rule()
    def call_checks_out(self) -> None:
        lease = Lease()
        try:
            effects = self.ledger.checkout(lease, None)
            if effects is not None:
                effects = self.ledger.checkout(lease, SyncWaiter())
        except TemplateLost:
            # The caller starts a new template (and would then try again).
            assert not self.ledger.has_source
            assert lease.worker is None
            self.apply(self.ledger.source_started())
            return
        if effects is None:
            assert lease.worker is not None
            self.holding.append(lease)
        else:
            assert lease.worker is None
            self.waiting.append(lease)
            self.apply(effects)

    @precondition(lambda self: bool(self.woken))
    @rule(data=st.data())
    def woken_caller_resumes(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.woken))
        self.woken.remove(lease)
        self.holding.append(lease)

    @precondition(lambda self: bool(self.woken))
    @rule(data=st.data())
    def handoff_fails(self, data: st.DataObject) -> None:
        """The woken caller's event loop has closed: the worker goes back."""
        lease = data.draw(st.sampled_from(self.woken))
        self.woken.remove(lease)
        self.apply(self.ledger.handoff_failed(lease))
        assert lease.worker is None

    @precondition(lambda self: bool(self.waiting or self.woken))
    @rule(data=st.data(), skip=st.integers(0, 3))
    def caller_gives_up_waiting(self, data: st.DataObject, skip: int) -> None:
        """Cancelled while waiting: withdraw, then give back whatever arrived meanwhile."""
        if skip:  # now and then: callers that give up have no call to end
            return
        lease = data.draw(st.sampled_from(self.waiting + self.woken))
        (self.waiting if lease in self.waiting else self.woken).remove(lease)
        expected = {} if lease.worker is None else self.expected_release(lease.worker, "unused", 0, False)
        before = self.ledger.stats()
        self.ledger.withdraw(lease)
        self.apply(self.ledger.release(lease, "unused"))
        assert lease.worker is None
        assert delta(before, self.ledger.stats()) == expected

    @precondition(lambda self: bool(self.holding))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(OUTCOMES),
        items=st.tuples(st.integers(0, 3), st.integers(0, 3)),
        recycle_requested=st.booleans(),
    )
    def call_ends(self, data: st.DataObject, outcome: Outcome, items: tuple[int, int], recycle_requested: bool) -> None:
        lease = data.draw(st.sampled_from(self.holding))
        self.holding.remove(lease)
        worker = lease.worker
        assert worker is not None
        # A reply says how many items succeeded and failed (one call, or a map batch).
        ok, failed = {"ok": (max(1, items[0]), items[1]), "failed": (0, 1)}.get(outcome, (0, 0))
        recycle_requested = recycle_requested and outcome in ("ok", "failed")
        expected = self.expected_release(worker, outcome, ok + failed, recycle_requested)
        if ok:
            expected["calls_ok"] = ok
        if failed:
            expected["calls_failed"] = failed
        if ok + failed:
            expected["calls_served"] = ok + failed
        before = self.ledger.stats()
        self.apply(
            self.ledger.release(
                lease,
                outcome,
                recycle_requested=recycle_requested,
                calls_ok=ok,
                calls_failed=failed,
                target="tests.faults:ok",
            )
        )
        assert lease.worker is None
        assert delta(before, self.ledger.stats()) == expected, outcome

    def expected_release(self, worker: Worker, outcome: Outcome, calls: int, recycle_requested: bool) -> dict[str, int]:
        """Which counters a release moves, from the policies (not from the ledger's code)."""
        counts: dict[str, int] = {}
        call_counter = CALL_COUNTER[outcome]
        if call_counter is not None:
            counts[call_counter] = 1
        if outcome in WORKER_COUNTER:
            return {**counts, "workers_exited": 1, WORKER_COUNTER[outcome]: 1}
        options, ledger = self.ledger.options, self.ledger
        reason: str | None = None
        if outcome in ("ok", "failed"):
            if recycle_requested or (not ledger.closed and options.fresh):
                reason = "workers_retired"
            elif not ledger.closed and worker.record.generation != ledger.generation:
                reason = "workers_recycled"
            elif (
                not ledger.closed
                and options.max_calls_per_worker is not None
                and worker.record.calls + calls >= options.max_calls_per_worker
            ):
                reason = "workers_retired"
        if reason is None and ledger.closed:
            reason = "workers_closed"
        elif reason is None and worker.record.generation != ledger.generation:
            reason = "workers_recycled"
        elif reason is None and worker.exit_status is not None:
            reason = "workers_crashed"  # it ended after its call: never back to idle
        if reason is not None:
            counts |= {"workers_exited": 1, reason: 1}
        return counts

    # -- pool-wide ---------------------------------------------------------------------------

    @precondition(lambda self: self.recycles < 3 and bool(self.ledger.workers))
    @rule()
    def recycle(self) -> None:
        self.recycles += 1
        idle = len(self.ledger.idle)
        before = self.ledger.stats()
        self.apply(self.ledger.recycle())
        assert delta(before, self.ledger.stats()) == (
            {"workers_exited": idle, "workers_recycled": idle} if idle else {}
        )
        assert not self.ledger.idle

    @precondition(
        lambda self: (
            (self.ledger.options.idle_timeout is not None and bool(self.ledger.idle))
            or self.ledger.spawn_retry_at is not None
            or self.settled()
        )
    )
    @rule(seconds=st.sampled_from([0.0, 0.005, 0.05, 0.5, 2.0, 20.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        timeout = self.ledger.options.idle_timeout
        due = 0 if timeout is None else sum(w.record.idle_since + timeout <= self.now for w in self.ledger.idle)
        before = self.ledger.stats()
        self.apply(self.ledger.timers_due())
        assert delta(before, self.ledger.stats()) == ({"workers_exited": due, "workers_expired": due} if due else {})
        deadline = self.ledger.next_deadline()
        assert deadline is None or deadline > self.now, "a timer is due but did not fire"

    @precondition(lambda self: not self.ledger.closed and len(self.seen) >= 3)
    @rule()
    def close(self) -> None:
        idle = len(self.ledger.idle)
        before = self.ledger.stats()
        self.apply(self.ledger.close())
        assert delta(before, self.ledger.stats()) == ({"workers_exited": idle, "workers_closed": idle} if idle else {})
        assert not self.waiting, "a caller still waits on a closed pool"
        with pytest.raises(PoolClosedError):
            self.ledger.checkout(Lease(), SyncWaiter())

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def stats_add_up(self) -> None:
        stats = self.ledger.stats()
        assert_adds_up(stats)
        assert stats.workers_alive == len(self.ledger.workers)
        assert stats.workers_idle == len(self.ledger.idle)

    @invariant()
    def events_match_counters(self) -> None:
        """Every exit is logged once, under the reason it is counted by (a worker lost
        with its template is counted as a crash)."""
        stats = self.ledger.stats()
        assert self.events["worker_started"] == stats.workers_started
        for reason in EXIT_REASONS:
            logged = self.events[f"worker_{reason}"] + (self.events["worker_lost"] if reason == "crashed" else 0)
            assert logged == getattr(stats, f"workers_{reason}"), reason

    @invariant()
    def every_worker_has_one_owner(self) -> None:
        """Each worker is idle, in one lease, or retiring (or gone), never two of these, and
        none is busy without a lease that will give it back."""
        ledger = self.ledger
        idle = [id(worker) for worker in ledger.idle]
        leased = [id(lease.worker) for lease in self.woken + self.holding if lease.worker is not None]
        assert len(idle) == len(set(idle)), "a worker is idle twice"
        assert len(leased) == len(set(leased)), "a worker is in two leases"
        assert not set(idle) & set(leased), "a worker is idle and leased"
        alive = {id(worker) for worker in ledger.workers.values()}
        retiring = {id(worker) for worker in ledger.retiring.values()}
        assert set(idle) <= alive, "an idle worker has left the pool"
        assert set(leased) <= alive, "a leased worker has left the pool"
        assert not alive & retiring, "a worker is alive and retiring"
        busy_untracked = alive - set(idle) - set(leased)
        assert not busy_untracked, "a worker counts as busy but no caller holds it"
        assert all(lease.worker is None for lease in self.waiting)
        assert list(ledger.waiting) == self.waiting, "the queue is not the callers that wait"

    @invariant()
    def channels_close_when_workers_leave(self) -> None:
        """A worker's channel is closed exactly once, when it leaves the pool; retiring
        workers are the ones asked to end whose exit has not come."""
        for pid, worker in self.seen.items():
            closes = self.channels[pid].closes
            assert closes == (0 if self.ledger.workers.get(pid) is worker else 1), (pid, closes)
        assert set(self.ledger.retiring) <= self.terminated

    @invariant()
    def capacity_is_respected_and_used(self) -> None:
        """At most ``workers`` calls hold a worker; no caller waits while an idle worker
        could serve it; a waiting caller always has a worker on its way."""
        ledger, limit = self.ledger, self.ledger.options.workers
        held = sum(lease.worker is not None for lease in self.woken + self.holding)
        assert ledger.busy() == held
        assert held <= limit
        if ledger.waiting:
            assert not (ledger.idle and ledger.busy() < limit), "a caller waits beside an idle worker"
            # Stranded: nothing is being started and no busy worker will come back to serve it.
            comes_back = ledger.busy() > 0 and not ledger.options.fresh
            if ledger.busy() < limit and not comes_back:
                assert ledger.spawning > 0 or ledger.spawn_retry_at is not None, "a waiting caller is stranded"

    @invariant()
    def spawns_are_accounted(self) -> None:
        if self.ledger.closed:
            return
        assert self.ledger.spawning == self.pending_spawns
        assert self.ledger.spawn_failures <= SPAWN_RETRIES


LedgerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_ledger_stats_add_up_and_every_worker_has_one_owner = LedgerMachine.TestCase


def test_a_worker_retired_after_a_failed_handoff_lets_a_standby_serve_the_next_waiter() -> None:
    """Fresh pool of one: a caller is woken with a worker it cannot take (its event loop
    has closed), and that worker, recycled meanwhile, is retired. The slot it frees goes
    at once to the next waiting caller, with the standby worker that sits idle, rather
    than leaving that caller waiting beside it for another fork. (The state machine above
    finds this now and then; this pins it.)"""
    ledger = Ledger(pool_options(workers=1, fresh=True), lambda: 0.0)
    channels = {pid: FakeChannel(pid) for pid in range(1, 5)}

    def spawned(pid: int) -> Effects:
        return ledger.spawned(pid, cast("socket.socket", channels[pid]))

    assert ledger.source_started().spawn == 1
    spawned(1)
    first, handed, queued = Lease(), Lease(), Lease()
    assert ledger.checkout(first, None) is None  # holds worker 1
    assert ledger.checkout(handed, SyncWaiter()) is not None  # waits
    spawned(2)  # the standby
    assert ledger.release(first, "ok", calls_ok=1).wake == [handed]  # worker 1 retired (fresh)
    assert ledger.checkout(queued, SyncWaiter()) is not None  # waits
    spawned(3)  # the next standby
    ledger.recycle()  # worker 3 goes; worker 2, handed over, goes when it comes back
    spawned(4)  # the new standby
    assert [worker.pid for worker in ledger.idle] == [4]
    effects = ledger.handoff_failed(handed)  # worker 2 comes back and is recycled
    assert effects.wake == [queued]
    assert queued.worker is not None
    assert queued.worker.pid == 4
    assert not ledger.idle
    assert not ledger.waiting
    assert_adds_up(ledger.stats())


# -- layer 2: a real pool ---------------------------------------------------------------------

#: What each kind of call moves in the counters (a spawn may land in any step: the pool
#: replaces crashed workers in the background, so ``workers_started`` is checked by the sums).
CALL_EFFECTS: dict[str, dict[str, int]] = {
    "ok": {"calls_served": 1, "calls_ok": 1},
    "raise": {"calls_served": 1, "calls_failed": 1},
    "segfault": {"calls_crashed": 1, "workers_crashed": 1, "workers_exited": 1},
    "exit": {"calls_crashed": 1, "workers_crashed": 1, "workers_exited": 1},
    "time_out": {"calls_timed_out": 1, "workers_timed_out": 1, "workers_exited": 1},
}


@settings(max_examples=10, deadline=None)
@given(st.lists(st.sampled_from([*CALL_EFFECTS, "recycle"]), min_size=1, max_size=6))
def test_a_real_pool_counts_every_outcome_in_its_own_counter(operations: list[str]) -> None:
    """On a real two-worker pool, any sequence of calls that return, raise, segfault,
    ``os._exit``, or outlive their policy timeout (the target waits for something that
    never comes), and of recycles, moves exactly its own counters, and the sums hold
    after every step."""
    with freshproc.Pool(2, timeout=30.0, grace_period=0.2) as pool:
        hang = freshproc.isolated(pool=pool, timeout=0.2)(faults.hang)
        for operation in operations:
            before, pids = pool.stats(), set(pool.worker_pids())
            if operation == "ok":
                assert pool.call_sync("tests.faults", "ok", 7) == 7
            elif operation == "raise":
                with pytest.raises(ValueError, match="boom"):
                    pool.call_sync("tests.faults", "raise_error", "boom")
            elif operation == "segfault":
                with pytest.raises(freshproc.WorkerCrashedError, match="SIGSEGV"):
                    pool.call_sync("tests.faults", "segfault")
            elif operation == "exit":
                with pytest.raises(freshproc.WorkerCrashedError, match="code 3"):
                    pool.call_sync("tests.faults", "exit_now", 3)
            elif operation == "time_out":
                with pytest.raises(freshproc.CallTimeoutError):
                    hang()
            else:
                pool.recycle()
            after = pool.stats()
            assert_adds_up(after)
            changed = delta(before, after)
            started = changed.pop("workers_started", 0)
            if operation != "recycle":
                assert changed == CALL_EFFECTS[operation], operation
                continue
            # No call runs: every worker is idle, and all of them go, with any that a
            # background spawn added just before.
            recycled = changed.get("workers_recycled", 0)
            assert changed == ({"workers_exited": recycled, "workers_recycled": recycled} if recycled else {})
            assert before.workers_idle <= recycled <= before.workers_idle + started
            assert not pids & set(pool.worker_pids())


@pytest.mark.parametrize(
    ("max_calls", "fresh", "calls", "retired"),
    [
        pytest.param(2, False, 5, 2, id="max_calls_per_worker"),
        pytest.param(None, True, 3, 3, id="fresh"),
    ],
)
def test_policy_retirements_and_close_land_in_their_counters(
    max_calls: int | None, fresh: bool, calls: int, retired: int
) -> None:
    """Workers ended by ``max_calls_per_worker`` or ``fresh`` count as retired (and as
    nothing else); closing the pool counts the idle ones as closed, and none is left alive."""
    pool = freshproc.Pool(1, max_calls_per_worker=max_calls, fresh=fresh)
    try:
        for value in range(calls):
            assert pool.call_sync("tests.faults", "ok", value) == value
        stats = pool.stats()
        assert_adds_up(stats)
        assert stats.workers_retired == retired
        assert stats.workers_exited == retired
        assert stats.calls_ok == stats.calls_served == calls
        idle = stats.workers_idle
    finally:
        pool.close()
    stats = pool.stats()
    assert_adds_up(stats)
    assert stats.workers_alive == 0
    # Idle workers at close, plus a standby that may have arrived since the last look.
    assert stats.workers_closed >= idle
    assert stats.workers_exited == retired + stats.workers_closed


async def test_a_cancelled_call_counts_as_cancelled() -> None:
    """A call cancelled (``move_on_after``) once its target has signalled that it runs
    ends its worker, and lands in ``calls_cancelled`` and ``workers_cancelled`` only."""
    async with freshproc.Pool(1) as pool:
        await pool.call("tests.faults", "ok", 0)  # a worker is up: the one that runs the call
        (pid,) = pool.worker_pids()
        before = pool.stats()
        handshake = Handshake()

        async def cancel_when_started(scope: anyio.CancelScope) -> None:
            await anyio.to_thread.run_sync(handshake.wait_started)
            scope.cancel()

        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_when_started, scope)
                await pool.call("tests.faults", "handshake_then_hang", handshake.spec)
        assert scope.cancelled_caught
        after = pool.stats()
        assert_adds_up(after)
        changed = delta(before, after)
        assert changed.pop("workers_started", 0) <= 1  # its replacement, started in the background
        assert changed == {"calls_cancelled": 1, "workers_cancelled": 1, "workers_exited": 1}
        assert pid not in pool.worker_pids()
        assert gone_within(pid, seconds=10)


def gone_within(pid: int, *, seconds: float) -> bool:
    """Wait for a process (the template's child, not ours) to end; a zombie has ended."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    _, alive = psutil.wait_procs([process], timeout=seconds)
    return all(proc.status() == psutil.STATUS_ZOMBIE for proc in alive if proc.is_running())
