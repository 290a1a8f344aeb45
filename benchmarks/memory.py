"""Process memory: proportional set size, and finding a pool's processes by ancestry."""

from __future__ import annotations

import psutil

from benchmarks.contenders.base import Processes

#: Command-line fragments of the helper processes peers start besides their workers.
_HELPER_MARKERS = ("forkserver", "resource_tracker", "semaphore_tracker")


def pss(pid: int) -> int:
    """Proportional set size in bytes: shared pages count divided by their sharers."""
    return int(psutil.Process(pid).memory_full_info().pss)


def descendant_processes(exclude: frozenset[int] = frozenset()) -> Processes:
    """The processes below this one, split into workers and helpers.

    A helper is recognised by its command line; a process forked from a helper (a fork
    server's worker) inherits that command line but is a worker.
    """
    marked: dict[int, str] = {}
    children: list[psutil.Process] = []
    for child in psutil.Process().children(recursive=True):
        if child.pid in exclude:
            continue
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        children.append(child)
        marker = next((marker for marker in _HELPER_MARKERS if marker in cmdline), None)
        if marker is not None:
            marked[child.pid] = marker
    processes = Processes([])
    for child in children:
        try:
            parent = child.ppid()
        except psutil.Error:
            continue
        if child.pid in marked and parent not in marked:
            processes.helpers.append((marked[child.pid], child.pid))
        else:
            processes.workers.append(child.pid)
    return processes
