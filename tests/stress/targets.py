"""What each kind of call runs in a worker: the targets in ``tests.faults`` of the calls
that need no helper (the kill and cancel faults go through ``tests.stress.pidpipe``,
the hostile kinds through ``hostile_kinds.target``), and the values the final calls use.
"""

from __future__ import annotations

from tests.stress.hostile_kinds import MAX_RESULT_SIZE
from tests.stress.plan import PlannedCall

FAULTS_MODULE = "tests.faults"
PIDPIPE_MODULE = "tests.stress.pidpipe"

OVERSIZED_RESULT = MAX_RESULT_SIZE + 1_000_000
ALLOCATION = 4 << 30
#: The values of the calls that check the pool still serves, after the plan's.
FINAL_VALUE_BASE = 1 << 60


def plain_target(call: PlannedCall) -> tuple[str, str, tuple[object, ...]] | None:
    """The target of a call that needs no helper (module, attribute, arguments)."""
    match call.kind:
        case "healthy":
            return FAULTS_MODULE, "ok", (call.arg,)
        case "segfault":
            return FAULTS_MODULE, "segfault", ()
        case "abort":
            return FAULTS_MODULE, "abort", ()
        case "exit":
            return FAULTS_MODULE, "exit_now", (call.arg,)
        case "raise":
            return FAULTS_MODULE, "raise_error", (raise_message(call),)
        case "unpicklable":
            return FAULTS_MODULE, "unpicklable_result", ()
        case "too_large":
            return FAULTS_MODULE, "large_result", (OVERSIZED_RESULT,)
        case "memory":
            return FAULTS_MODULE, "allocate", (ALLOCATION,)
    return None


def raise_message(call: PlannedCall) -> str:
    return f"planned fault {call.index}"
