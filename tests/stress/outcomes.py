"""What one call did (``Raw``), how the table names it (``describe``), and whether it
was exactly what its kind must do (``judge``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import freshproc
from tests.stress import hostile_kinds
from tests.stress.hostile_kinds import HOSTILE_KINDS
from tests.stress.plan import CANCEL_ONCE_STARTED, CRASH_KINDS, HEALTHY, PlannedCall
from tests.stress.targets import raise_message


@dataclass
class Raw:
    """What one call did."""

    returned: bool = False
    value: object = None
    error: Exception | None = None
    cancelled: bool = False
    #: The worker pid the target reported (sigkill and cancel-once-started).
    reported_pid: int | None = None
    #: The kill or cancel helper failed.
    helper_error: BaseException | None = None
    #: KeyboardInterrupt ended the call (the interrupts phase).
    interrupted: bool = False


@dataclass(frozen=True)
class Outcome:
    index: int
    kind: str
    observed: str
    problem: str | None
    latency: float


def describe(raw: Raw) -> str:
    if raw.interrupted:
        return "KeyboardInterrupt"
    if raw.helper_error is not None:
        return f"helper failed ({type(raw.helper_error).__name__})"
    exc = raw.error
    if exc is not None:
        if isinstance(exc, freshproc.WorkerCrashedError):
            return f"WorkerCrashedError ({_signal_name(exc.signal) if exc.signal else 'exit code'})"
        if isinstance(exc, freshproc.SerializationError):
            return f"SerializationError ({exc.direction})"
        if isinstance(exc, freshproc.RemoteError):
            return f"RemoteError({exc.type_name})"
        if isinstance(exc.__cause__, freshproc.RemoteTraceback):
            return f"{type(exc).__name__} from RemoteTraceback"
        return type(exc).__qualname__
    if raw.cancelled:
        return "cancelled"
    if raw.returned:
        return "returned Captured" if isinstance(raw.value, freshproc.Captured) else "returned"
    return "nothing"


def judge(call: PlannedCall, raw: Raw) -> str | None:
    """None if the call did exactly what its kind must do, else what went wrong."""
    if raw.helper_error is not None:
        return f"the kill or cancel helper failed: {raw.helper_error!r}"
    exc = raw.error
    kind = call.kind
    if kind in HOSTILE_KINDS:
        return hostile_kinds.judge(kind, call.arg, raw.value, raw.returned, exc)
    if kind == HEALTHY:
        if not raw.returned or type(raw.value) is not int or raw.value != call.arg:
            return f"expected its own value {call.arg}, {_got(raw)}"
        return None
    if kind in CRASH_KINDS:
        if not isinstance(exc, freshproc.WorkerCrashedError):
            return f"expected WorkerCrashedError, {_got(raw)}"
        expected_signal = {"segfault": signal.SIGSEGV, "abort": signal.SIGABRT, "sigkill": signal.SIGKILL}.get(kind)
        if exc.signal != expected_signal:
            return f"expected signal {_signal_name(expected_signal)}, got {_signal_name(exc.signal)}: {exc!r}"
        if exc.pid is None:
            return f"the error has no pid: {exc!r}"
        if kind == "exit" and exc.exitcode != call.arg:
            return f"expected exit code {call.arg}, got {exc.exitcode}: {exc!r}"
        if kind == "sigkill" and exc.pid != raw.reported_pid:
            return f"the error names pid {exc.pid}, the killed worker was {raw.reported_pid}"
        return None
    if kind == "timeout":
        if type(exc) is not freshproc.CallTimeoutError or not isinstance(exc, TimeoutError):
            return f"expected CallTimeoutError, {_got(raw)}"
        return None
    if kind == "cancel":
        if call.arg == CANCEL_ONCE_STARTED:
            if exc is not None or raw.returned or not raw.cancelled:
                return f"expected the native cancellation, {_got(raw)}"
        elif type(exc) is not TimeoutError:
            return f"expected fail_after's TimeoutError, {_got(raw)}"
        return None
    if kind == "raise":
        message = raise_message(call)
        if type(exc) is not ValueError or str(exc) != message:
            return f"expected ValueError({message!r}), {_got(raw)}"
        cause = exc.__cause__
        if not isinstance(cause, freshproc.RemoteTraceback) or "raise_error" not in str(cause):
            return f"expected a RemoteTraceback naming raise_error as __cause__, got {cause!r}"
        return None
    if kind in ("unpicklable", "too_large"):
        if not isinstance(exc, freshproc.SerializationError) or (exc.direction, exc.stage) != ("result", "dump"):
            return f"expected SerializationError(direction='result', stage='dump'), {_got(raw)}"
        if kind == "too_large" and "limit" not in str(exc):
            return f"expected the error to mention the size limit: {exc!r}"
        return None
    if kind == "memory":
        if type(exc) is not MemoryError:
            return f"expected MemoryError, {_got(raw)}"
        return None
    raise AssertionError(f"unknown kind {kind!r}")


def _got(raw: Raw) -> str:
    if raw.error is not None:
        return f"got {_short(repr(raw.error))}"
    if raw.returned:
        return f"returned {_short(repr(raw.value))}"
    return "got cancelled" if raw.cancelled else "got nothing"


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _signal_name(signum: int | None) -> str:
    if signum is None:
        return "none"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
