"""What a process backend provides: a source of fresh workers.

A source starts workers on request and reports, through ``read_event``, each worker it
started (with the parent's end of its channel) and each worker that ended. It knows
nothing of calls, queues or policies: the pool decides when to start and end workers.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WorkerSourceOptions:
    preload: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    #: The workers' whole sys.path (the caller's), or None: the interpreter's own.
    sys_path: Sequence[str] | None = ()
    #: Folders put first on the workers' sys.path (``Pool(sys_path=...)``).
    sys_path_prefix: Sequence[str] = ()
    #: Whether the workers get the caller's environment variables, ``env`` merged in.
    inherit_env: bool = True
    #: Whether the template gets the caller's interpreter flags (-O, -X...): not for an
    #: interpreter of another version, which may not know them.
    interpreter_flags: bool = True
    #: The caller's packages an interpreter other than the caller's borrows: name -> the
    #: folder that holds it (see ``_foreign``).
    borrowed: Mapping[str, str] | None = None
    memory_limit: int | None = None
    max_result_size: int | None = None
    #: For a service: its pickled factory, which each worker calls once (see ``_hosted``).
    hosted: bytes | None = None
    executable: str | None = None
    #: Hot reload: the template and its workers report the files they load code from.
    report_loaded: bool = False
    #: ... and each worker after each call. Off where no worker serves a second call
    #: (``fresh``): what a call loaded then matters to nobody once its worker is gone.
    report_calls: bool = False
    startup_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Spawned:
    pid: int
    channel: socket.socket


@dataclass(frozen=True, slots=True)
class Exited:
    pid: int
    exitcode: int | None
    signal: int | None


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    """``number`` of the workers asked for could not be started (``fork`` failed: a process
    limit, memory); the source and its workers carry on. ``reason`` says why."""

    number: int
    reason: str


@dataclass(frozen=True, slots=True)
class Lost:
    """The source itself is gone: no more workers will come from it."""

    reason: str


SourceEvent = Spawned | Exited | SpawnFailed | Lost


class WorkerSource(Protocol):
    #: Segments may travel by address between the caller and the workers.
    direct_copy: bool
    #: What the source's processes said of themselves at start (Python version, sys.path,
    #: cwd...; see ``_foreign.facts``); empty where unknown.
    facts: Mapping[str, object]
    #: With ``report_loaded``: when the template started (coarse wall clock, ns) and the
    #: files it loaded code from (known once ``start`` returns).
    loaded: tuple[int, list[str]]

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None:
        """Block until the source can spawn workers; raise WorkerStartupError if it cannot."""

    def spawn(self, count: int) -> None:
        """Ask for ``count`` new workers; each arrives later as a ``Spawned`` event, or
        those that could not be started as one ``SpawnFailed`` event."""

    def terminate(self, pid: int, grace_seconds: float) -> None:
        """End a worker and its process group: SIGTERM, then SIGKILL after the grace period."""

    def read_event(self, timeout: float | None) -> SourceEvent | None:
        """Wait up to ``timeout`` seconds for the next event (None: timed out). Called from
        one thread only."""

    def close(self) -> None:
        """End every worker and the source itself; wait for them. Idempotent."""

    def abandon(self) -> None:
        """Let go without sending or waiting (for a finalizer): closing the control
        channel makes the source end every worker and itself."""

    def discard(self) -> None:
        """Close the source's descriptors: once nothing reads or sends on them any more
        (the reading thread does it last, after the pool has let go of the source)."""

    def forsake(self) -> None:
        """In a process forked from the owner: drop this process's copies of the source's
        descriptors without sending anything or waiting (the owner still uses them)."""
