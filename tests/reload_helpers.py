"""What the hot reload tests share (``test_reload``, ``test_reload_environments``): a folder
of modules they edit on disk, a module rewritten edit after edit with a record of the calls
that missed an edit, and the sources of the modules that more than one test edits."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import freshproc

#: Linux's CLOCK_REALTIME_COARSE: the clock file timestamps are taken from.
COARSE_CLOCK = 5

#: A service's class whose every object starts counting its calls from one: a call that
#: returns a count of 1 ran on a new object.
SERVICE = """\
import os

VERSION = {value}


class Versioned:
    def __init__(self):
        self.calls = 0

    def version(self):
        self.calls += 1
        return os.getpid(), VERSION, self.calls
"""


class Folder:
    """Modules on the workers' path (bytecode caches allowed: reload must see through them)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.root)}

    def write(self, relative: str, source: str, *, settle: bool = False) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        if settle:
            settle_clock(path)
        return path

    def replace(self, relative: str, source: str) -> Path:
        """An editor's atomic save: a temporary file renamed over the module."""
        path = self.root / relative
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(textwrap.dedent(source))
        os.replace(temporary, path)
        return path


def settle_clock(path: Path) -> None:
    """Wait until the kernel's file clock has moved past ``path``'s last change (at most a
    clock tick), so that a worker loading it from now on is not suspected of having loaded
    an older version. A wait on a condition, bounded by one tick."""
    changed = path.stat().st_ctime_ns
    while time.clock_gettime_ns(COARSE_CLOCK) <= changed:
        pass


@contextmanager
def caller_imports_from(folder: Folder) -> Iterator[Folder]:
    """The folder on the caller's ``sys.path`` too (``run``, ``map`` and ``@isolated`` ship
    functions by name); the modules imported from it meanwhile are forgotten after."""
    sys.path.insert(0, str(folder.root))
    importlib.invalidate_caches()
    before = set(sys.modules)
    try:
        yield folder
    finally:
        sys.path.remove(str(folder.root))
        for name in set(sys.modules) - before:
            del sys.modules[name]


class EditedModule:
    """One module of a folder, rewritten from ``source`` (a template of ``{value}``) edit
    after edit; ``stale`` keeps each call that did not return what the last edit says."""

    def __init__(self, folder: Folder, relative: str, source: str) -> None:
        self.folder = folder
        self.relative = relative
        self.source = source
        self.stale: list[tuple[str, object, object]] = []

    def edit(self, value: int, *, atomic: bool = False) -> None:
        """Write the module with ``value`` (``atomic``: as an editor's rename over it)."""
        save = self.folder.replace if atomic else self.folder.write
        save(self.relative, self.source.format(value=value))

    def expect(self, how: str, expected: object, got: object) -> None:
        """Note a call (made ``how``) that returned ``got`` where ``expected`` was due."""
        if got != expected:
            self.stale.append((how, expected, got))


def check_preload_edits_restart_the_template(folder: Folder, module: str, source: str, **pool_options: Any) -> None:
    """Each edit of a ``preload`` module (``source``'s ``value()`` returns the value) starts
    a new template, and the next call runs the new code; ``on_reload`` says so each time."""
    folder.write(f"{module}.py", source.format(value=1), settle=True)
    events: list[freshproc.ReloadEvent] = []
    with freshproc.Pool(1, preload=[module], on_reload=events.append, **pool_options) as pool:
        assert pool.call_sync(module, "value") == 1
        template = pool.template_pid
        assert str(folder.root / f"{module}.py") in pool.watched_files()
        for value in (2, 3):
            folder.write(f"{module}.py", source.format(value=value))
            assert pool.call_sync(module, "value") == value
            assert pool.template_pid != template
            template = pool.template_pid
    assert [event.template_restarted for event in events] == [True, True]
