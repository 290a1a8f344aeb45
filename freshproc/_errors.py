"""The exception hierarchy.

Every class pickles (custom ``__init__`` arguments come back through ``__reduce__``),
because exceptions cross process boundaries in both directions.
"""

from __future__ import annotations

import signal as _signal
from typing import Literal

Direction = Literal["arguments", "result"]
Stage = Literal["dump", "load"]


class FreshprocError(Exception):
    """Base class of every error freshproc raises itself."""


class WorkerError(FreshprocError):
    """A worker process misbehaved. ``pid`` and ``exitcode`` are None when unknown."""

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


class WorkerStartupError(WorkerError):
    """The template or a worker could not start (a ``preload`` module raised, a bad ``cwd``,
    an interpreter that cannot run). The message carries the child's traceback or stderr."""


class WorkerCrashedError(WorkerError):
    """The worker died while it was running the call.

    :ivar signal: the number of the signal that ended it, or None if it exited.
    :ivar stage: where the call was when the worker died (``"running"``).
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        exitcode: int | None = None,
        signal: int | None = None,
        stage: str = "running",
    ) -> None:
        super().__init__(message, pid=pid, exitcode=exitcode)
        self.signal = signal
        self.stage = stage


class CallTimeoutError(FreshprocError, TimeoutError):
    """The pool's or the decorator's policy ``timeout`` expired; the worker was killed."""


class SerializationError(FreshprocError):
    """An argument or a result could not be pickled or unpickled.

    :ivar direction: ``"arguments"`` or ``"result"``.
    :ivar stage: ``"dump"`` (pickling) or ``"load"`` (unpickling).
    """

    def __init__(self, message: str, *, direction: Direction, stage: Stage) -> None:
        super().__init__(message)
        self.direction: Direction = direction
        self.stage: Stage = stage

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), self.__dict__))


class ProtocolError(FreshprocError):
    """An unexpected, malformed, truncated or oversized frame: a freshproc bug or a
    corrupted channel. Nothing from such a frame is ever executed."""


class PoolClosedError(FreshprocError):
    """The pool was closed before or during the call."""


class RemoteError(FreshprocError):
    """The target raised an exception that cannot be rebuilt in the caller.

    :ivar type_name: the qualified name of the original exception type.
    :ivar remote_traceback: the worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (RemoteError, (self.type_name, self.message, self.remote_traceback))


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of a re-raised remote exception; ``str()`` is the
    worker's traceback text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _rebuild(cls: type[BaseException], message: str, state: dict[str, object]) -> BaseException:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


def describe_exit(exitcode: int | None, signum: int | None) -> str:
    """Say in words how a process ended, with a hint at the likely cause."""
    if signum is not None:
        try:
            name = _signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = _SIGNAL_HINTS.get(signum, "")
        return f"killed by {name}{hint}"
    if exitcode is None:
        return "ended in an unknown way"
    return f"exited with code {exitcode}"


_SIGNAL_HINTS: dict[int, str] = {
    _signal.SIGSEGV: " (a segmentation fault, typically in native code)",
    _signal.SIGABRT: " (abort(): a failed assertion or fatal error in native code)",
    _signal.SIGKILL: " (killed from outside, or by the kernel for exceeding a memory limit)",
    _signal.SIGBUS: " (a bus error in native code)",
    _signal.SIGFPE: " (a floating-point exception in native code)",
    _signal.SIGTERM: " (terminated from outside)",
}
