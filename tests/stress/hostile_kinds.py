"""The campaign's hostile kinds: calls whose worker turns against its caller (the targets
of ``tests.hostile``), mixed into the plan with the other faults.

Each names sizes far beyond what it sends or what the caller may take, so the caller's
memory must stay bounded (the campaign reads its RSS around them), and each has one
documented outcome: the caller refuses the reply (ProtocolError, and the worker is
replaced) or takes a bounded version of it (a truncated message, truncated output, a
memfd its worker can no longer shrink).
"""

from __future__ import annotations

from collections.abc import Iterable

import freshproc

HOSTILE_MODULE = "tests.hostile"
FAULTS_MODULE = "tests.faults"

#: The pool's ``max_result_size`` in the campaign (a reply may carry this, plus output).
MAX_RESULT_SIZE = 8_000_000
#: What the hostile workers name: a size no buffer can have, a sparse region they never
#: touched, failure records and messages, output floods. All far over MAX_RESULT_SIZE.
ABSURD_SIZE = 2**63 - 16
SPARSE_SIZE = 512 << 20
RECORD_SIZE = 40 << 20
MESSAGE_SIZE = 40 << 20
FLOOD_SIZE = 16 << 20
MEMFD_SIZE = 1 << 20
#: How much the caller's RSS may grow over a run with hostile calls, once garbage is
#: collected and freed memory trimmed: a quarter of the sparse region one call names, a
#: fiftieth of what a full run's hostile calls name. (Python's own heap is back to about
#: 1 MiB over its start by then; the rest is what the allocators and thread stacks of 64
#: callers keep.)
RSS_GROWTH_LIMIT = 128 << 20
#: How much it may grow at any point (sampled after each hostile call), garbage not yet
#: collected included: a failed call's exception and the reply it came in live until the
#: cycle collector runs, and 64 callers hold up to MAX_RESULT_SIZE of output each.
RSS_PEAK_LIMIT = SPARSE_SIZE

HOSTILE_KINDS = (
    "absurd_size",
    "sparse_region",
    "unsealed_memfd",
    "truncate_memfd",
    "huge_message",
    "oversized_record",
    "output_flood",
)
#: The caller refuses the reply: a ProtocolError, and the worker is ended (counted in
#: ``workers_crashed`` and ``calls_crashed``).
REFUSED_KINDS = frozenset({"absurd_size", "sparse_region", "unsealed_memfd", "oversized_record"})
#: The caller takes the reply (counted in ``calls_served``); the worker carries on.
ANSWERED_KINDS = frozenset({"truncate_memfd", "huge_message", "output_flood"})

# The variants of "output_flood" (its ``arg``), alternating in the plan.
FLOOD_STDOUT_RETURN = 0  # 16 MiB on stdout, then a value
FLOOD_STDOUT_RAISE = 1  # 16 MiB on stdout, then an exception
FLOOD_STDERR = 2  # 16 MiB written to descriptor 2, then a value
FLOOD_VARIANTS = (FLOOD_STDOUT_RETURN, FLOOD_STDOUT_RAISE, FLOOD_STDERR)

EXPECTED = {
    "absurd_size": "ProtocolError (not a size), replaced",
    "sparse_region": "ProtocolError (over the limit), replaced",
    "unsealed_memfd": "ProtocolError (not sealed), replaced",
    "truncate_memfd": "its 1 MiB, whole (the seal holds)",
    "huge_message": "RemoteError(ValueError), truncated",
    "oversized_record": "ProtocolError (over the limit), replaced",
    "output_flood": "value or error, output truncated",
}

#: Words the ProtocolError of each refused kind must contain.
_PROTOCOL_WORDS = {
    "absurd_size": "not a size a buffer can have",
    "sparse_region": "its limit allows",
    "unsealed_memfd": "not sealed",
    "oversized_record": "its limit allows",
}
#: The most text a failure message or captured output may carry under MAX_RESULT_SIZE
#: (messages get a quarter of it, output all of it), with room for the truncation marker.
MESSAGE_LIMIT = MAX_RESULT_SIZE // 4 + 100
OUTPUT_LIMIT = MAX_RESULT_SIZE + 100


def target(kind: str, arg: int) -> tuple[str, str, tuple[object, ...], bool]:
    """The call for a hostile kind: module, attribute, arguments, and whether its output
    is captured (``call_captured``)."""
    match kind:
        case "absurd_size":
            return HOSTILE_MODULE, "name_size", (ABSURD_SIZE,), False
        case "sparse_region":
            return HOSTILE_MODULE, "name_sparse_region", (SPARSE_SIZE,), False
        case "unsealed_memfd":
            return HOSTILE_MODULE, "return_in_unsealed_memfd", (MEMFD_SIZE,), False
        case "truncate_memfd":
            return HOSTILE_MODULE, "return_then_truncate", (MEMFD_SIZE,), False
        case "huge_message":
            return HOSTILE_MODULE, "raise_huge_message", (MESSAGE_SIZE,), False
        case "oversized_record":
            return HOSTILE_MODULE, "fail_with_oversized_record", (RECORD_SIZE,), False
        case "output_flood" if arg == FLOOD_STDOUT_RETURN:
            return HOSTILE_MODULE, "print_then_return", (FLOOD_SIZE,), True
        case "output_flood" if arg == FLOOD_STDOUT_RAISE:
            return HOSTILE_MODULE, "print_then_raise_huge", (FLOOD_SIZE,), True
        case "output_flood":
            return FAULTS_MODULE, "flood_stderr", (FLOOD_SIZE >> 20,), True
    raise AssertionError(f"not a hostile kind: {kind!r}")


def named_bytes(kinds: Iterable[str]) -> int:
    """What the hostile calls of a plan name in all (the absurd size counted once)."""
    sizes = {
        "sparse_region": SPARSE_SIZE,
        "unsealed_memfd": MEMFD_SIZE,
        "truncate_memfd": MEMFD_SIZE,
        "huge_message": MESSAGE_SIZE,
        "oversized_record": RECORD_SIZE,
        "output_flood": FLOOD_SIZE,
    }
    return sum(sizes.get(kind, 0) for kind in kinds)


def judge(kind: str, arg: int, value: object, returned: bool, exc: Exception | None) -> str | None:
    """None if a hostile call did what its kind must, else what went wrong; ``value`` is
    what it returned (a ``Captured`` for output floods)."""
    if kind in REFUSED_KINDS:
        words = _PROTOCOL_WORDS[kind]
        if not isinstance(exc, freshproc.ProtocolError) or words not in str(exc):
            return f"expected a ProtocolError saying {words!r}, {_got(value, returned, exc)}"
        return None
    if kind == "truncate_memfd":
        return check_memfd_result(value) if returned else f"expected its 1 MiB, {_got(value, returned, exc)}"
    if kind == "huge_message":
        if not isinstance(exc, freshproc.RemoteError) or exc.type_name != "ValueError":
            return f"expected RemoteError(ValueError), {_got(value, returned, exc)}"
        if not exc.message.startswith("mmmm") or "[truncated" not in exc.message:
            return f"expected the message cut with a marker, got {_short(exc.message)!r}"
        if len(exc.message) > MESSAGE_LIMIT or len(exc.remote_traceback) > MESSAGE_LIMIT:
            return (
                f"message {len(exc.message)} / traceback {len(exc.remote_traceback)} characters, over {MESSAGE_LIMIT}"
            )
        return None
    if kind == "output_flood":
        return _judge_flood(arg, value, returned, exc)
    raise AssertionError(f"not a hostile kind: {kind!r}")


def _judge_flood(arg: int, value: object, returned: bool, exc: Exception | None) -> str | None:
    if arg == FLOOD_STDOUT_RAISE:
        if type(exc) is not ValueError or str(exc) != "after printing":
            return f"expected ValueError('after printing'), {_got(value, returned, exc)}"
        stdout, _ = exc.captured_output  # type: ignore[attr-defined]
        return _check_output(stdout, "o")
    expected = FLOOD_SIZE if arg == FLOOD_STDOUT_RETURN else FLOOD_SIZE >> 20
    if not returned or not isinstance(value, freshproc.Captured) or value.value != expected:
        return f"expected Captured({expected}), {_got(value, returned, exc)}"
    if arg == FLOOD_STDOUT_RETURN:
        return _check_output(value.stdout, "o")
    return _check_output(value.stderr, "e")


def _check_output(text: str, fill: str) -> str | None:
    if len(text) > OUTPUT_LIMIT:
        return f"captured output of {len(text)} characters, over {OUTPUT_LIMIT}"
    if not text.startswith(fill * 16) or "[truncated" not in text:
        return f"expected the output cut with a marker, got {_short(text)!r}"
    return None


def check_memfd_result(value: object) -> str | None:
    """None if ``value`` is the 1 MiB of zeros a truncating worker sent, every page still
    mapped (touching a page its worker had truncated would end the caller with SIGBUS)."""
    if not isinstance(value, memoryview) or value.nbytes != MEMFD_SIZE:
        return f"expected a memoryview of {MEMFD_SIZE} bytes, got {_short(repr(value))}"
    if value.tobytes() != bytes(MEMFD_SIZE):
        return "the memfd's contents changed"
    return None


def _got(value: object, returned: bool, exc: Exception | None) -> str:
    if exc is not None:
        return f"got {_short(repr(exc))}"
    return f"returned {_short(repr(value))}" if returned else "got nothing"


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
