"""Processes and descriptors: the template and workers a run saw (``ProcessTracker``),
and what a run leaked, against a snapshot taken before its pool opened (``Snapshot``).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psutil

#: How long to wait for processes that must have ended to disappear.
EXIT_WAIT = 10.0


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def child_pids() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def still_running(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still running (zombies count as ended) after waiting for their exit."""
    _, alive = psutil.wait_procs(list(processes), timeout=timeout)
    return [process for process in alive if _running(process)]


class ProcessTracker:
    """Every template and worker process the campaign saw (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._template: psutil.Process | None = None
        self._workers: dict[int, psutil.Process] = {}

    def note_template(self, pid: int | None) -> None:
        if pid is not None:
            with self._lock:
                self._template = psutil.Process(pid)

    def note_workers(self, pids: Iterable[int]) -> None:
        """Remember workers of the template (anything else with such a pid is ignored)."""
        with self._lock:
            template = self._template
            new = [pid for pid in pids if pid not in self._workers]
        for pid in new:
            try:
                process = psutil.Process(pid)
                if template is not None and process.ppid() != template.pid:
                    continue
            except psutil.Error:
                continue  # already gone
            with self._lock:
                self._workers.setdefault(pid, process)

    def workers(self, pids: Iterable[int]) -> list[psutil.Process]:
        with self._lock:
            return [self._workers[pid] for pid in pids if pid in self._workers]

    def all(self) -> list[psutil.Process]:
        with self._lock:
            template = [self._template] if self._template is not None else []
            return [*template, *self._workers.values()]

    @property
    def worker_count(self) -> int:
        with self._lock:
            return len(self._workers)


@dataclass(frozen=True)
class Snapshot:
    """Descriptors and child processes before the pool opens."""

    fds: frozenset[int]
    children: frozenset[int]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(frozenset(open_fds()), frozenset(child_pids()))

    def leaks(self, tracker: ProcessTracker) -> list[str]:
        """After the pool closed: descriptors opened and processes left since.

        Garbage is collected first: an exception a call raised sits in a reference cycle
        (its traceback holds the frames that hold it), and so may a result it shares a
        frame with, until the collector runs. What survives the collector is a leak."""
        gc.collect()
        problems = [f"descriptor {fd} -> {_describe_fd(fd)}" for fd in sorted(open_fds() - self.fds)]
        seen = tracker.all()
        children = [psutil.Process(pid) for pid in child_pids() - self.children if psutil.pid_exists(pid)]
        for process in still_running([*seen, *children], EXIT_WAIT):
            try:
                name = process.name()
            except psutil.Error:
                name = "?"
            problems.append(f"process {process.pid} ({name}) still running")
        problems.extend(f"child process {pid} not reaped" for pid in child_pids() - self.children)
        return problems
