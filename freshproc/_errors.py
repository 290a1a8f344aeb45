"""The exception hierarchy.

Every class pickles (custom ``__init__`` arguments come back through ``__reduce__``),
because exceptions cross process boundaries in both directions.
"""

from __future__ import annotations

# _signal, not signal: every template imports this before its first fork, and signal
# builds its enums at import (only describe_exit needs them, in the caller).
import _signal  # type: ignore[import-not-found,unused-ignore]  # typeshed has no stub for it

TYPE_CHECKING = False  # typing stays out of the worker runtime at run time
if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    Direction: TypeAlias = Literal["arguments", "result"]
    Stage: TypeAlias = Literal["dump", "load"]


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


class ServiceFailedError(FreshprocError):
    """A service gave up: its worker kept failing (more restarts than its restart intensity
    allows), and calls on it fail until it is restarted. The message says how it failed;
    the last failure is the ``__cause__``."""


class ServiceClosedError(PoolClosedError):
    """The service was closed before or during the call (a PoolClosedError too, so code
    that handles a closed pool handles a closed service)."""


class RemoteError(FreshprocError):
    """The target raised an exception that cannot be rebuilt in the caller.

    Its class also derives from the original's nearest base classes that the caller has
    already imported (builtins always), so ``except ValueError:`` catches a remote
    ``plugin.BadInput(ValueError)`` without importing ``plugin``. Such classes are made on
    demand (see ``remote_error_class``) and are named after their bases:
    ``RemoteError(ValueError)``.

    :ivar type_name: the qualified name of the original exception type.
    :ivar module: the name of the module that defines the original type, or None if unknown.
    :ivar message: ``str()`` of the original exception.
    :ivar remote_traceback: the worker's formatted traceback.
    :ivar reason: why the original could not be rebuilt, or None if not known.
    """

    #: The extra bases of this class, beside RemoteError (set on the generated classes).
    remote_bases: tuple[type[Exception], ...] = ()

    def __init__(
        self,
        type_name: str,
        message: str,
        remote_traceback: str,
        *,
        module: str | None = None,
        reason: str | None = None,
    ) -> None:
        text = f"{type_name}: {message}" if message else type_name
        if reason:
            text = f"{text} ({reason})"
        # Not super().__init__: the next class in a generated subclass's MRO may be a user
        # class whose __init__ takes other arguments.
        Exception.__init__(self, text)
        self.type_name = type_name
        self.module = module
        self.message = message
        self.remote_traceback = remote_traceback
        self.reason = reason

    def __str__(self) -> str:
        # BaseException's, whatever the extra bases: KeyError's would quote the message, and
        # OSError's would look for an errno.
        return BaseException.__str__(self)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_remote_error, (self.remote_bases, self.args), self.__dict__)


def remote_error_class(bases: tuple[type[Exception], ...]) -> type[RemoteError]:
    """The RemoteError class that also derives from ``bases`` (in that order), made once per
    tuple. When the bases cannot be combined (an inconsistent MRO, an instance layout
    conflict, a metaclass clash, a ``__new__`` that refuses RemoteError's arguments), it
    tries their nearest builtin ancestors instead, then fewer of those, and ends with
    RemoteError itself."""
    builtin = _nearest_builtins(bases)
    candidates = [bases, builtin] + [builtin[:count] for count in range(len(builtin) - 1, -1, -1)]
    for candidate in candidates:
        if not candidate:
            break
        if candidate not in _remote_classes:
            _remote_classes.setdefault(candidate, _make_remote_class(candidate))
        cls = _remote_classes[candidate]
        if cls is not None:
            return cls
    return RemoteError


def _nearest_builtins(bases: tuple[type[Exception], ...]) -> tuple[type[Exception], ...]:
    found: list[type[Exception]] = []
    for base in bases:
        for cls in base.__mro__:
            if cls.__module__ != "builtins" or not issubclass(cls, Exception) or issubclass(RemoteError, cls):
                continue
            if not any(issubclass(other, cls) for other in found):
                found.append(cls)
    return tuple(found)


def _make_remote_class(bases: tuple[type[Exception], ...]) -> type[RemoteError] | None:
    names = ", ".join(
        base.__qualname__ if base.__module__ == "builtins" else f"{base.__module__}.{base.__qualname__}"
        for base in bases
    )
    name = f"RemoteError({names})"
    namespace = {"__module__": __name__, "__qualname__": name, "remote_bases": bases, "__doc__": RemoteError.__doc__}
    try:
        cls: type[RemoteError] = type(name, (RemoteError, *bases), namespace)
        cls("probe", "", "")  # a base's __new__ may refuse RemoteError's arguments
    except Exception:  # noqa: BLE001 - these bases cannot be combined: try fewer
        return None
    return cls


#: Generated RemoteError classes by extra bases (None: that tuple cannot be combined).
_remote_classes: dict[tuple[type[Exception], ...], type[RemoteError] | None] = {}


def _rebuild_remote_error(bases: tuple[type[Exception], ...], args: tuple[object, ...]) -> RemoteError:
    cls = remote_error_class(bases)
    exc = cls.__new__(cls, *args)
    exc.args = args
    return exc  # pickle restores __dict__ (type_name, message, ...) after this


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
        import signal  # the caller has it; the worker runtime should not pay for its enums

        try:
            name = signal.Signals(signum).name
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
