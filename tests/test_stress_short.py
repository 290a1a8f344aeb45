"""A short fault campaign inside the suite: 200 calls at concurrency 64 over Pool(4), a
tenth of them faulting in every way, hostile workers included (see
tests/stress/campaign.py), on asyncio, trio and the blocking API; then the phases with small
counts: Ctrl-C storms on the main thread, forks that fail during a burst, the asyncio plan
over a pool that queues calls on busy workers (``Pool(pipeline=2)``), and the same kind of
calls on a service with replicas (on asyncio and trio).
The full campaign is ``nox -s stress``."""

from __future__ import annotations

import anyio
import pytest

from tests.stress.async_api import run_async
from tests.stress.blocking_api import run_blocking
from tests.stress.fork_failure import run_fork_failure
from tests.stress.hostile_kinds import FLOOD_VARIANTS, HOSTILE_KINDS
from tests.stress.interrupts import interrupt_kinds, run_interrupts
from tests.stress.plan import (
    BASIC_FAULT_KINDS,
    BLOCKING_KINDS,
    CANCEL_BY_FAIL_AFTER,
    CANCEL_ONCE_STARTED,
    FAULT_KINDS,
    Config,
    fault_kinds,
    make_plan,
    plan_digest,
)
from tests.stress.service_phase import run_service

pytestmark = pytest.mark.timeout(120)

# The campaign's own deadline comes first, so a hang reports the calls in flight.
SHORT = Config(
    calls=200,
    seed=2025,
    concurrency=64,
    workers=4,
    fault_rate=0.1,
    deadline=90.0,
    interrupt_calls=150,
    fork_burst=100,
)


def test_the_plan_covers_every_fault_and_depends_only_on_the_seed() -> None:
    plan = make_plan(SHORT.calls, SHORT.seed, SHORT.fault_rate)
    assert len(plan) == 200
    assert sum(1 for call in plan if call.kind != "healthy") == 20
    assert {call.kind for call in plan} >= set(FAULT_KINDS)
    assert {call.arg for call in plan if call.kind == "cancel"} == {CANCEL_ONCE_STARTED, CANCEL_BY_FAIL_AFTER}
    assert plan_digest(make_plan(SHORT.calls, SHORT.seed, SHORT.fault_rate)) == plan_digest(plan)
    assert plan_digest(make_plan(SHORT.calls, SHORT.seed + 1, SHORT.fault_rate)) != plan_digest(plan)
    blocking = make_plan(SHORT.calls, SHORT.seed, SHORT.fault_rate, BLOCKING_KINDS)
    assert {call.kind for call in blocking} == {"healthy", *BLOCKING_KINDS}


def test_hostile_kinds_are_planned_unless_left_out() -> None:
    """Every hostile kind is a fault kind of every API; ``--no-hostile`` leaves the plan
    of the call faults alone; the output floods come in every variant."""
    assert set(HOSTILE_KINDS) <= set(BLOCKING_KINDS)
    assert fault_kinds("asyncio", hostile=False) == BASIC_FAULT_KINDS
    assert not set(HOSTILE_KINDS) & set(fault_kinds("blocking", hostile=False))
    assert set(interrupt_kinds(hostile=True)) == set(BLOCKING_KINDS) - {"sigkill"}
    plan = make_plan(2000, 4242, 0.1)
    assert {call.arg for call in plan if call.kind == "output_flood"} == set(FLOOD_VARIANTS)


async def test_short_campaign(anyio_backend: str) -> None:
    report = await run_async(SHORT, anyio_backend)
    assert report.ok, report.table()


def test_short_campaign_blocking() -> None:
    report = run_blocking(SHORT)
    assert report.ok, report.table()


def test_short_interrupts() -> None:
    """SIGINT every 1-3 ms during 150 blocking calls on the main thread."""
    report = run_interrupts(SHORT)
    assert report.ok, report.table()


def test_short_fork_failure() -> None:
    """Forks fail during a burst of 100 calls, while two calls hold workers."""
    report = run_fork_failure(SHORT)
    assert report.ok, report.table()


def test_short_pipelined() -> None:
    """The asyncio plan over Pool(pipeline=2): calls queued behind the ones that fault."""
    report = anyio.run(run_async, SHORT, "pipelined", backend="asyncio")
    assert report.ok, report.table()


async def test_short_service_phase(anyio_backend: str) -> None:
    """200 calls on a service with three replicas, a tenth of them faulting."""
    report = await run_service(SHORT, anyio_backend)
    assert report.ok, report.table()
