"""Which files a process has loaded code from: worker-side half of hot reload.

Runs in the template and the workers, so it imports only the stdlib. A process keeps what
it has reported already; ``new_files`` returns only what was loaded since: the ``__file__``
of each new ``sys.modules`` entry, and the shared objects newly mapped (``/proc/self/maps``
lists libraries that an extension links, which ``sys.modules`` never names). Cheap when
nothing was imported: the length and the last key of ``sys.modules`` say so in O(1).
"""

from __future__ import annotations

import sys
import time

_MAPS = "/proc/self/maps"
#: Linux's CLOCK_REALTIME_COARSE (the time module does not name it).
_CLOCK_REALTIME_COARSE = 5


class _Known:
    """What this process has reported (a forked worker inherits the template's)."""

    def __init__(self) -> None:
        self.modules: set[str] = set()
        self.files: set[str] = set()
        #: (length, last key) of sys.modules when last looked at.
        self.mark: tuple[int, str | None] = (0, None)


known = _Known()


def coarse_now_ns() -> int:
    """The wall clock that file timestamps are taken from (its coarse, tick-grained form):
    a file written after this moment has a ctime at least this."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


def _mark() -> tuple[int, str | None]:
    modules = sys.modules
    return len(modules), next(reversed(modules.keys()), None)


def new_files() -> list[str]:
    """Files loaded since the last call (the first call: everything loaded so far)."""
    mark = _mark()
    if mark == known.mark:
        return []
    known.mark = mark
    found: list[str] = []
    seen = known.files
    for name, module in list(sys.modules.items()):
        if name in known.modules:
            continue
        known.modules.add(name)
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path not in seen:
            seen.add(path)
            found.append(path)
    # A new module may be an extension, or load one (ctypes): look at the mappings too.
    try:
        with open(_MAPS, "rb") as maps:
            for line in maps:
                path_start = line.find(b"/")
                if path_start < 0 or b".so" not in line:
                    continue
                path = line[path_start:].rstrip(b"\n").decode("utf-8", "surrogateescape")
                if path.endswith(" (deleted)") or path in seen:
                    continue
                seen.add(path)
                found.append(path)
    except OSError:
        pass
    return found
