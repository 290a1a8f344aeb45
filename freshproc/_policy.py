"""Pool options and the policies built on them: when a worker is retired.

Pure functions of the options, a worker's record and the time, so each policy is tested
with plain numbers (no processes, no clocks).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from freshproc._backends import names as backend_names

_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_PATTERN: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str | None, name: str) -> int | None:
    """Bytes from ``1024``, ``"512MB"`` or ``"2GiB"``; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number of bytes or a size such as '512MB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE_PATTERN.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError(f"{name}={value!r} is not a size such as '512MB' or '2GiB'")
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise TypeError(f"{name} must be a number of bytes or a size such as '512MB'")
    if size <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return size


def _positive_seconds(value: float | None, name: str, *, allow_none: bool = True) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} cannot be None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds (or None), got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class PoolOptions:
    workers: int
    fresh: bool
    max_calls_per_worker: int | None
    idle_timeout: float | None
    timeout: float | None
    preload: tuple[str, ...]
    env: Mapping[str, str] | None
    cwd: str | None
    max_memory: int | None
    memory_limit: int | None
    capture_output: bool
    grace_period: float
    max_result_size: int | None
    backend: str
    #: How many requests one worker may hold at once (1: none queued; see _pipeline).
    pipeline: int = 1
    #: The interpreter (or virtual environment folder) the workers run under; None: the caller's.
    python: str | None = None
    #: Folders put first on the workers' sys.path.
    sys_path: tuple[str, ...] = ()
    #: Whether the workers get the caller's environment variables (``env`` merged in).
    inherit_env: bool = True

    @classmethod
    def build(
        cls,
        *,
        workers: int | None,
        fresh: bool,
        max_calls_per_worker: int | None,
        idle_timeout: float | None,
        timeout: float | None,
        preload: Iterable[str],
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
        max_memory: int | str | None,
        memory_limit: int | str | None,
        capture_output: bool,
        grace_period: float,
        max_result_size: int | str | None,
        backend: str,
        pipeline: int = 1,
        python: str | os.PathLike[str] | None = None,
        sys_path: Iterable[str | os.PathLike[str]] = (),
        inherit_env: bool = True,
    ) -> PoolOptions:
        """Validate every option; nonsense raises ValueError (or TypeError) here, not later."""
        if workers is None:
            workers = os.cpu_count() or 1
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise TypeError("workers must be an int or None")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_calls_per_worker is not None and (
            isinstance(max_calls_per_worker, bool) or not isinstance(max_calls_per_worker, int)
        ):
            raise TypeError("max_calls_per_worker must be an int or None")
        if max_calls_per_worker is not None and max_calls_per_worker < 1:
            raise ValueError(f"max_calls_per_worker must be at least 1, got {max_calls_per_worker}")
        if isinstance(preload, str):
            raise TypeError("preload must be a list of module names, not a string")
        preload = tuple(preload)
        for name in preload:
            if not isinstance(name, str) or not name:
                raise ValueError(f"preload entries must be module names, got {name!r}")
        if env is not None:
            for key, value in env.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise TypeError("env must map str to str")
        if backend not in backend_names():
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(backend_names())}")
        if isinstance(pipeline, bool) or not isinstance(pipeline, int):
            raise TypeError("pipeline must be an int")
        if not 1 <= pipeline <= 64:
            raise ValueError(f"pipeline must be between 1 and 64, got {pipeline}")
        if isinstance(sys_path, (str, os.PathLike)):
            raise TypeError("sys_path must be a list of folders, not a single one")
        folders = tuple(os.path.abspath(os.fspath(entry)) for entry in sys_path)
        if python is not None and not isinstance(python, (str, os.PathLike)):
            raise TypeError("python must be the path of an interpreter or a virtual environment folder")
        grace = _positive_seconds(grace_period, "grace_period", allow_none=False)
        assert grace is not None
        return cls(
            workers=workers,
            fresh=bool(fresh),
            max_calls_per_worker=max_calls_per_worker,
            idle_timeout=_positive_seconds(idle_timeout, "idle_timeout"),
            timeout=_positive_seconds(timeout, "timeout"),
            preload=preload,
            env=dict(env) if env is not None else None,
            cwd=os.fspath(cwd) if cwd is not None else None,
            max_memory=parse_size(max_memory, "max_memory"),
            memory_limit=parse_size(memory_limit, "memory_limit"),
            capture_output=bool(capture_output),
            grace_period=grace,
            max_result_size=parse_size(max_result_size, "max_result_size"),
            backend=backend,
            pipeline=pipeline,
            # Absolute: the template starts in the pool's cwd. Symbolic links are kept (a
            # venv's bin/python is one, and what it points to is not the venv).
            python=os.path.abspath(os.fspath(python)) if python is not None else None,
            sys_path=folders,
            inherit_env=bool(inherit_env),
        )


def validate_timeout(timeout: float | None) -> float | None:
    return _positive_seconds(timeout, "timeout")


@dataclass(slots=True)
class WorkerRecord:
    """What the policies need to know about a worker."""

    generation: int
    calls: int = 0
    idle_since: float = 0.0


def one_call_per_worker(options: PoolOptions) -> bool:
    """Whether no worker ever serves a second call (``fresh``, or ``max_calls_per_worker=1``)."""
    return options.fresh or options.max_calls_per_worker == 1


def retire_after_call(options: PoolOptions, record: WorkerRecord, generation: int, rss: int | None) -> str | None:
    """Why a worker that just finished a call must not serve another (None: keep it)."""
    if options.fresh:
        return "fresh"
    if record.generation != generation:
        return "recycled"
    if options.max_calls_per_worker is not None and record.calls >= options.max_calls_per_worker:
        return "max_calls_per_worker"
    if options.max_memory is not None and rss is not None and rss > options.max_memory:
        return "max_memory"
    return None


def idle_deadline(options: PoolOptions, record: WorkerRecord) -> float | None:
    """When an idle worker expires (None: never)."""
    if options.idle_timeout is None:
        return None
    return record.idle_since + options.idle_timeout
