"""Replacing ``sys.modules`` does not give you a clean import state.

The problem
    A common "sandbox" trick: snapshot ``sys.modules`` before importing some code, then
    put the snapshot back (``sys.modules = snapshot``) so that the next import starts over.
    It does not: the interpreter keeps its own reference to the original dict, and the
    ``import`` statement looks there first. After the swap, ``import plugin`` still hands
    back the old module object, even though ``plugin`` is not in the new ``sys.modules``
    and ``plugin.py`` has changed on disk. Meanwhile ``importlib.import_module`` consults
    the new dict and loads a second copy, so two versions of the module now live side by
    side, and which one you get depends on how you ask.

The freshproc way
    Import the code in a worker instead. ``pool.recycle()`` replaces the worker process,
    with every module it loaded; the next call imports ``plugin`` from disk in a process
    that has never seen it. The caller's ``sys.modules`` is never touched.

Run it: ``python examples/replace_sys_modules.py``
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from _support import expect, report, verdict, write_module

import freshproc

TITLE = "replacing sys.modules: the interpreter keeps the original dict"

PLUGIN_V1 = """
    def version():
        return "plugin v1"
"""

PLUGIN_V2 = """
    def version():
        return "plugin v2"
"""


def in_process(folder: Path) -> str:
    write_module(folder / "plugin.py", PLUGIN_V1)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    real_modules = sys.modules
    snapshot = dict(sys.modules)
    try:
        # __import__ is what the ``import plugin`` statement calls.
        old = cast("Any", __import__("plugin"))
        report("in-process", "snapshot = dict(sys.modules); import plugin", old.version())

        write_module(folder / "plugin.py", PLUGIN_V2)
        sys.modules = snapshot
        report("in-process", "plugin.py edited; sys.modules = snapshot")
        report("in-process", "  'plugin' in sys.modules", "plugin" in sys.modules)
        again = cast("Any", __import__("plugin"))
        stale = verdict(again.version(), "plugin v2")
        report("in-process", "  import plugin", again.version(), stale)
        report("in-process", "  ... the very same module object as before", again is old)
        second = cast("Any", importlib.import_module("plugin"))
        report("in-process", "  importlib.import_module('plugin')", second.version(), "a second copy")
        split = __import__("plugin") is not second
        report("in-process", "  two versions alive, import statement still old", split)
        return f"version() -> {again.version()!r}: {stale}"
    finally:
        sys.modules = real_modules
        sys.path.remove(str(folder))
        sys.modules.pop("plugin", None)


def with_freshproc(folder: Path) -> str:
    write_module(folder / "plugin.py", PLUGIN_V1)
    with freshproc.Pool(1, env={"PYTHONPATH": str(folder)}) as pool:
        before = pool.call_sync("plugin", "version")
        report("freshproc", "pool.call_sync('plugin', 'version')", before)
        expect(before == "plugin v1", "the worker imports plugin v1")

        write_module(folder / "plugin.py", PLUGIN_V2)
        report("freshproc", "plugin.py edited; pool.recycle()")
        pool.recycle()
        after = pool.call_sync("plugin", "version")
        report("freshproc", "pool.call_sync('plugin', 'version')", after, verdict(after, "plugin v2"))
        expect(after == "plugin v2", "after recycle, the worker imports the new plugin")
    leaked = "plugin" in sys.modules
    report("freshproc", "'plugin' in the caller's sys.modules", leaked)
    expect(not leaked, "the caller's sys.modules is never touched")
    return f"version() -> {after!r}: new code"


def compare() -> tuple[str, str]:
    """Run both sides; return one line about each. Raises AssertionError if freshproc fails."""
    with tempfile.TemporaryDirectory() as tmp:
        first = in_process(Path(tmp, "in_process"))
        second = with_freshproc(Path(tmp, "freshproc"))
    return first, second


if __name__ == "__main__":
    print(TITLE)
    compare()
