"""Preloaded into a template by the spawn-failure tests: its ``os.fork`` fails as it would
under RLIMIT_NPROC (which root, as CI runs, is exempt from), without touching the system.

``FRESHPROC_TEST_FAILED_FORKS`` (in the pool's ``env``): how many forks fail first.
``FRESHPROC_TEST_FORK_MARKER``: every fork fails while this file exists.
Only the template's own forks fail; the workers forked from it inherit a plain fork.
"""

from __future__ import annotations

import errno
import os

_real_fork = os.fork
_template_pid = os.getpid()
_failures_left = int(os.environ.get("FRESHPROC_TEST_FAILED_FORKS", "0"))
_marker = os.environ.get("FRESHPROC_TEST_FORK_MARKER")


def _fork() -> int:
    global _failures_left
    if os.getpid() == _template_pid:
        failing = _failures_left > 0 or (_marker is not None and os.path.exists(_marker))
        if failing:
            _failures_left = max(0, _failures_left - 1)
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return _real_fork()


os.fork = _fork
