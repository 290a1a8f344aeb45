"""The campaign's plan: the fault kinds, the configuration, and the seeded list of calls.

Which call faults, and how, depends only on the seed (``make_plan``); ``plan_digest``
names a plan in the table, so two runs can be seen to have made the same calls.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tests.stress import hostile_kinds
from tests.stress.hostile_kinds import ANSWERED_KINDS, HOSTILE_KINDS

HEALTHY = "healthy"
#: The faults of the call itself (the hostile kinds, in ``hostile_kinds``, are added to
#: them unless ``--no-hostile``).
BASIC_FAULT_KINDS = (
    "segfault",
    "abort",
    "exit",
    "sigkill",
    "timeout",
    "cancel",
    "raise",
    "unpicklable",
    "too_large",
    "memory",
)
FAULT_KINDS = (*BASIC_FAULT_KINDS, *HOSTILE_KINDS)
KINDS = (HEALTHY, *FAULT_KINDS)
#: Faults that kill the worker while it runs the call (counted in ``workers_crashed``).
CRASH_KINDS = frozenset({"segfault", "abort", "exit", "sigkill"})
#: Calls the worker answers (counted in ``calls_served``).
REPLY_KINDS = frozenset({HEALTHY, "raise", "unpicklable", "too_large", "memory", *ANSWERED_KINDS})
#: The blocking API has no cancellation (only KeyboardInterrupt, in the main thread).
BLOCKING_KINDS = tuple(kind for kind in FAULT_KINDS if kind != "cancel")


def fault_kinds(api: str, hostile: bool) -> tuple[str, ...]:
    """The fault kinds a campaign through ``api`` plans.

    The "pipelined" phase plans no hostile kinds. A hostile call changes its worker
    process (its reply path sends what the caller refuses), and with pipelining the call
    queued behind it may start in that process before the caller has seen the refused
    reply: its outcome then depends on timing (a refused reply of its own, or its value),
    and two refused replies can end one worker. What pipelining keeps there (the worker
    is ended once its queue drains, a queued call runs once and never gets another's
    result) is pinned by ``test_pipelining``."""
    kinds = BLOCKING_KINDS if api == "blocking" else FAULT_KINDS
    hostile = hostile and api != "pipelined"
    return tuple(kind for kind in kinds if hostile or kind not in HOSTILE_KINDS)


EXPECTED = {
    HEALTHY: "returns its own value",
    "segfault": "WorkerCrashedError, SIGSEGV",
    "abort": "WorkerCrashedError, SIGABRT",
    "exit": "WorkerCrashedError, its exit code",
    "sigkill": "WorkerCrashedError, SIGKILL, its pid",
    "timeout": "CallTimeoutError",
    "cancel": "cancelled / fail_after's TimeoutError",
    "raise": "ValueError from RemoteTraceback",
    "unpicklable": "SerializationError (result)",
    "too_large": "SerializationError (result, limit)",
    "memory": "MemoryError",
    **hostile_kinds.EXPECTED,
}

# The two variants of the "cancel" fault.
CANCEL_ONCE_STARTED = 0  # a cancel scope cancelled once the target reports it started
CANCEL_BY_FAIL_AFTER = 1  # anyio.fail_after around a call that hangs


@dataclass(frozen=True)
class Config:
    calls: int = 2000
    seed: int = 0
    concurrency: int = 64
    workers: int = 4
    fault_rate: float = 0.1
    deadline: float = 600.0
    #: Mix the hostile kinds into the plan.
    hostile: bool = True
    #: Calls of the interrupts phase (on the main thread, one at a time).
    interrupt_calls: int = 1000
    #: Calls of the fork-failure phase's burst.
    fork_burst: int = 200


@dataclass(frozen=True)
class PlannedCall:
    index: int
    kind: str
    #: healthy: the value it must return; exit: the exit code; cancel: the variant.
    arg: int = 0


def make_plan(calls: int, seed: int, fault_rate: float, fault_kinds: Sequence[str] = FAULT_KINDS) -> list[PlannedCall]:
    """The calls, in order: ``round(calls * fault_rate)`` faults, every kind at least once
    when there are enough faults, at random positions. Depends only on the arguments."""
    rng = random.Random(seed)
    fault_count = min(calls, round(calls * fault_rate))
    kinds = list(fault_kinds)
    if fault_count < len(kinds):
        chosen = rng.sample(kinds, fault_count)
    else:
        chosen = kinds + [rng.choice(kinds) for _ in range(fault_count - len(kinds))]
    sequence = chosen + [HEALTHY] * (calls - fault_count)
    rng.shuffle(sequence)
    cancel_variants = itertools.cycle(rng.sample([CANCEL_ONCE_STARTED, CANCEL_BY_FAIL_AFTER], 2))
    flood_variants = itertools.cycle(rng.sample(hostile_kinds.FLOOD_VARIANTS, len(hostile_kinds.FLOOD_VARIANTS)))
    plan = []
    for index, kind in enumerate(sequence):
        arg = 0
        if kind == HEALTHY:
            arg = (index << 24) | rng.getrandbits(24)
        elif kind == "exit":
            arg = rng.randint(1, 125)
        elif kind == "cancel":
            arg = next(cancel_variants)  # alternating: both variants as soon as there are two
        elif kind == "output_flood":
            arg = next(flood_variants)
        plan.append(PlannedCall(index, kind, arg))
    return plan


def plan_digest(plan: Iterable[PlannedCall]) -> str:
    text = ";".join(f"{call.kind}:{call.arg}" for call in plan)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
