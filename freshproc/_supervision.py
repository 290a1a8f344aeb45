"""Service options and the supervision policy: when a service process that ended is
restarted, after how long, and when the service gives up (Erlang/OTP's restart intensity).

Pure: the supervisor's memory is a ``RestartHistory`` of timestamps, and every decision is
a function of it, the options and the time, so each rule is tested with plain numbers.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from freshproc._policy import parse_size
from freshproc._protocol import MAX_FDS

Restart = Literal["on-failure", "always", "never"]
_RESTARTS: tuple[Restart, ...] = ("on-failure", "always", "never")
#: The most calls one service process runs at once (its extra channels go in one frame).
MAX_CONCURRENCY = MAX_FDS
#: The base of the doubling backoff when ``backoff[0]`` is 0 (the first restart is at once).
BACKOFF_BASE = 0.05


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """How a service is run and supervised (``freshproc.service(..., options=...)``).

    :param restart: ``"on-failure"`` (restart a process that crashed, failed its health
        check or was ended by a timeout or a cancellation), ``"always"`` (also one whose
        object's process ended cleanly) or ``"never"``.
    :param max_restarts: restarts allowed within ``restart_window`` seconds; one more and
        the service is failed: every call raises ``ServiceFailedError``.
    :param restart_window: seconds (see ``max_restarts``).
    :param backoff: ``(first, maximum)`` seconds before a restart: the first restart in a
        window waits ``first`` (0: at once), each next one twice as long as the one before
        (from a small base when ``first`` is 0), never more than ``maximum``.
    :param health: the name of a method called every ``health_interval`` seconds while the
        service is idle; one that raises or does not answer within ``health_timeout``
        seconds restarts the process.
    :param max_concurrency: how many calls one process runs at once (1 to 64): ``async
        def`` methods interleave on the object's event loop, plain methods run on that
        many threads. 1 (the default) runs them one at a time, in arrival order. Above 1,
        a call that crashes, times out or is cancelled ends its process, and the other
        calls running there raise ``WorkerCrashedError``.
    :param replicas: how many processes, each with its own object built by the same
        factory call; each call goes to the least busy one.
    :param timeout: policy timeout of each call, in seconds (the process is ended and
        restarted).
    :param max_memory: recycle a process whose own memory after a call exceeds this.
    :param memory_limit: hard address-space cap in each process.
    :param capture_output: capture each call's output (as ``Pool(capture_output=True)``).
    :param grace_period: seconds ``close()`` waits for the object's own close, and between
        SIGTERM and SIGKILL when a process is ended.
    :param env: environment variables added for the service's processes.
    :param cwd: their working directory.
    :param preload: modules imported once into the template the processes are forked from.
    :param python: the interpreter (or virtual environment folder) the processes run
        under, as ``Pool(python=...)``.
    :param sys_path: folders put first on the processes' ``sys.path``.
    :param inherit_env: whether the processes get the caller's environment variables
        (``env`` merged in); with False, ``env`` is all they get.
    :param reload: hot reload: when a file the service's process loaded code from changes on
        disk, the process is restarted (a new process, a new object: its state is lost)
        before the next call runs; calls made meanwhile wait. Such restarts are logged with
        the file, and do not count toward ``max_restarts``.
    """

    restart: Restart = "on-failure"
    max_restarts: int = 5
    restart_window: float = 60.0
    backoff: tuple[float, float] = (0.0, 30.0)
    health: str | None = None
    health_interval: float = 10.0
    health_timeout: float = 5.0
    max_concurrency: int = 1
    replicas: int = 1
    timeout: float | None = None
    max_memory: int | str | None = None
    memory_limit: int | str | None = None
    capture_output: bool = False
    grace_period: float = 1.0
    env: Mapping[str, str] | None = None
    cwd: str | os.PathLike[str] | None = None
    preload: Iterable[str] = ()
    python: str | os.PathLike[str] | None = None
    sys_path: Iterable[str | os.PathLike[str]] = ()
    inherit_env: bool = True
    reload: bool = False

    def __post_init__(self) -> None:
        """Nonsense raises ValueError (or TypeError) when the options are made."""
        if self.restart not in _RESTARTS:
            raise ValueError(f"restart must be one of {', '.join(_RESTARTS)}, got {self.restart!r}")
        _whole(self.max_restarts, "max_restarts", minimum=0)
        _whole(self.replicas, "replicas", minimum=1)
        _whole(self.max_concurrency, "max_concurrency", minimum=1)
        if self.max_concurrency > MAX_CONCURRENCY:
            raise ValueError(f"max_concurrency must be at most {MAX_CONCURRENCY}, got {self.max_concurrency}")
        if self.max_concurrency > 1 and self.capture_output:
            # Capturing redirects the process's own stdout and stderr for one call.
            raise ValueError("capture_output cannot be combined with max_concurrency above 1")
        _seconds(self.restart_window, "restart_window")
        _seconds(self.health_interval, "health_interval")
        _seconds(self.health_timeout, "health_timeout")
        _seconds(self.grace_period, "grace_period")
        if self.timeout is not None:
            _seconds(self.timeout, "timeout")
        first, maximum = self.backoff
        if not (math.isfinite(first) and math.isfinite(maximum) and 0 <= first <= maximum):
            raise ValueError(f"backoff must be (first, maximum) with 0 <= first <= maximum, got {self.backoff!r}")
        if self.health is not None and (not isinstance(self.health, str) or not self.health):
            raise ValueError(f"health must be a method name, got {self.health!r}")
        parse_size(self.max_memory, "max_memory")
        parse_size(self.memory_limit, "memory_limit")


def _whole(value: int, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _seconds(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")


#: Why a service process ended, as the supervisor sees it.
Ending = Literal["crashed", "exited", "timed_out", "cancelled", "unhealthy", "factory_failed"]


@dataclass(frozen=True, slots=True)
class Decision:
    restart: bool
    #: Seconds to wait before the restarted process serves (0: at once).
    delay: float = 0.0


class RestartHistory:
    """When the service's processes were restarted: what restart intensity counts."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()


def decide(options: ServiceOptions, history: RestartHistory, ending: Ending, now: float) -> Decision:
    """Whether a process that ended with ``ending`` at ``now`` is restarted, and when; a
    restart is recorded in ``history``. Not restarting fails the service."""
    if options.restart == "never":
        return Decision(False)
    if ending == "exited" and options.restart != "always":
        return Decision(False)
    times = history.times
    while times and times[0] <= now - options.restart_window:
        times.popleft()
    if len(times) >= options.max_restarts:
        return Decision(False)
    times.append(now)
    return Decision(True, restart_delay(options, len(times)))


def restart_delay(options: ServiceOptions, restarts_in_window: int) -> float:
    """Seconds before the ``restarts_in_window``-th restart of the window (1: the first)."""
    first, maximum = options.backoff
    if restarts_in_window <= 1:
        return first
    return float(min(maximum, max(first, BACKOFF_BASE) * 2 ** (restarts_in_window - 2)))
