"""Stale references: a module that imported ``foo`` keeps running the old ``foo``.

The problem
    ``bar`` does ``from foo import greet`` and ``import foo``. You edit ``foo.py`` and, to
    pick up the change, drop ``foo`` from ``sys.modules`` and import it again. ``foo`` is
    new now, but ``bar`` still holds the function and the module object it got when it
    was imported: calling ``bar`` runs the old code. ``importlib.reload(foo)`` patches the
    old module object in place, which helps ``import foo`` users but not ``from foo import
    greet`` users; fixing those means knowing, and reloading, the whole import graph.

The freshproc way
    Call ``bar`` in a worker. After ``pool.recycle()`` the next call runs in a new worker
    that imports ``bar`` and ``foo`` from disk, so ``bar`` runs the new ``foo``. The caller
    never imports either module.

Run it: ``python examples/stale_references.py``
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from _support import expect, report, verdict, write_module

import freshproc

TITLE = "stale references: bar keeps the foo it imported"

FOO_V1 = """
    def greet():
        return "foo v1"
"""

FOO_V2 = """
    def greet():
        return "foo v2"
"""

BAR = """
    import foo
    from foo import greet


    def run():
        return greet()


    def run_via_module():
        return foo.greet()
"""


def in_process(folder: Path) -> str:
    write_module(folder / "foo.py", FOO_V1)
    write_module(folder / "bar.py", BAR)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        bar = cast("Any", importlib.import_module("bar"))
        report("in-process", "import bar; bar.run()", bar.run())

        write_module(folder / "foo.py", FOO_V2)
        report("in-process", "foo.py edited; del sys.modules['foo']; import foo")
        del sys.modules["foo"]
        foo = cast("Any", importlib.import_module("foo"))
        new = foo.greet()
        report("in-process", "  foo.greet()", new, verdict(new, "foo v2"))
        stale = verdict(bar.run(), "foo v2")
        report("in-process", "  bar.run()             # from foo import greet", bar.run(), stale)
        stale_module = verdict(bar.run_via_module(), "foo v2")
        report("in-process", "  bar.run_via_module()  # import foo", bar.run_via_module(), stale_module)
        report("in-process", "  bar.foo is sys.modules['foo']", bar.foo is sys.modules["foo"])
        return f"bar.run() -> {bar.run()!r}: {stale}"
    finally:
        sys.path.remove(str(folder))
        for name in ("foo", "bar"):
            sys.modules.pop(name, None)


def with_freshproc(folder: Path) -> str:
    write_module(folder / "foo.py", FOO_V1)
    write_module(folder / "bar.py", BAR)
    with freshproc.Pool(1, env={"PYTHONPATH": str(folder)}) as pool:
        before = pool.call_sync("bar", "run")
        report("freshproc", "pool.call_sync('bar', 'run')", before)
        expect(before == "foo v1", "the worker runs bar with foo v1")

        write_module(folder / "foo.py", FOO_V2)
        report("freshproc", "foo.py edited; pool.recycle()")
        pool.recycle()
        after = pool.call_sync("bar", "run")
        report("freshproc", "pool.call_sync('bar', 'run')", after, verdict(after, "foo v2"))
        via_module = pool.call_sync("bar", "run_via_module")
        report("freshproc", "pool.call_sync('bar', 'run_via_module')", via_module, verdict(via_module, "foo v2"))
        expect(after == via_module == "foo v2", "after recycle, bar runs the new foo")
    leaked = "foo" in sys.modules or "bar" in sys.modules
    report("freshproc", "'foo' or 'bar' in the caller's sys.modules", leaked)
    expect(not leaked, "the caller never imports foo or bar")
    return f"bar.run() -> {after!r}: new code"


def compare() -> tuple[str, str]:
    """Run both sides; return one line about each. Raises AssertionError if freshproc fails."""
    with tempfile.TemporaryDirectory() as tmp:
        first = in_process(Path(tmp, "in_process"))
        second = with_freshproc(Path(tmp, "freshproc"))
    return first, second


if __name__ == "__main__":
    print(TITLE)
    compare()
