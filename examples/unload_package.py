"""Unloading a package in-process leaves a trail behind.

The problem
    ``pkg`` has two submodules, ``pkg.cache`` and ``pkg.util``; all three change on disk.
    Deleting ``sys.modules["pkg"]`` and importing again runs the new ``pkg/__init__.py``,
    but the ``pkg.cache`` and ``pkg.util`` entries are still in ``sys.modules``, so the new
    package is wired to the old submodules: a mix of versions. Deleting every ``pkg.*``
    entry gives a clean re-import, yet everything that referenced the old package keeps it
    alive and keeps running it: a function imported earlier (``from pkg import describe``)
    still runs the old code, and an object made from the old ``Cache`` class is not an
    instance of the new one.

The freshproc way
    Use the package in a worker. After ``pool.recycle()`` the next call runs in a new
    process that imports ``pkg`` and every submodule from disk: no entries, no references
    and no objects survive from the old version.

Run it: ``python examples/unload_package.py``
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import textwrap
import weakref
from pathlib import Path
from typing import Any, cast

from _support import expect, report, verdict

import freshproc

TITLE = "unloading a package: old submodules and objects linger"


def package_sources(version: str) -> dict[str, str]:
    """The files of ``pkg`` at ``version``."""
    return {
        "__init__.py": f"""
            VERSION = "{version}"
            from pkg.util import describe
        """,
        "cache.py": f"""
            VERSION = "{version}"


            class Cache:
                def __init__(self):
                    self.entries = {{}}
        """,
        "util.py": f"""
            from pkg import cache

            VERSION = "{version}"


            def describe():
                import pkg

                return f"pkg {{pkg.VERSION}}, cache {{cache.VERSION}}, util {{VERSION}}"
        """,
    }


V1 = package_sources("v1")
V2 = package_sources("v2")
ALL_NEW = "pkg v2, cache v2, util v2"


def write_package(folder: Path, files: dict[str, str]) -> None:
    """(Re)write the package. Each file's mtime moves 2 s past the previous one, so a cached
    .pyc of the previous version (stamped with the mtime in whole seconds) never passes."""
    for name, source in files.items():
        path = folder / "pkg" / name
        previous = path.stat().st_mtime if path.exists() else 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        stamp = max(path.stat().st_mtime, previous + 2)
        os.utime(path, (stamp, stamp))


def pkg_entries() -> list[str]:
    return sorted(name for name in sys.modules if name == "pkg" or name.startswith("pkg."))


def in_process(folder: Path) -> str:
    write_package(folder, V1)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        pkg = cast("Any", importlib.import_module("pkg"))
        old_describe = pkg.describe  # as any `from pkg import describe` elsewhere holds it
        old_cache = pkg.cache.Cache()
        old_cache_module = weakref.ref(pkg.cache)
        report("in-process", "import pkg; pkg.describe()", pkg.describe())

        write_package(folder, V2)
        report("in-process", "pkg/ edited; del sys.modules['pkg']; import pkg")
        del sys.modules["pkg"]
        report("in-process", "  left in sys.modules", pkg_entries())
        pkg = cast("Any", importlib.import_module("pkg"))
        mixed = pkg.describe()
        report("in-process", "  pkg.describe()", mixed, "a mix of versions!" if mixed != ALL_NEW else "new code")

        report("in-process", "delete every pkg.* entry; import pkg")
        for name in pkg_entries():
            del sys.modules[name]
        pkg = cast("Any", importlib.import_module("pkg"))
        report("in-process", "  pkg.describe()", pkg.describe(), verdict(pkg.describe(), ALL_NEW))
        stale = old_describe()
        report("in-process", "  describe imported earlier", stale, verdict(stale, ALL_NEW))
        report("in-process", "  isinstance(old_cache, pkg.cache.Cache)", isinstance(old_cache, pkg.cache.Cache))
        report("in-process", "  old pkg.cache module still alive", old_cache_module() is not None)
        return f"{stale}: {verdict(stale, ALL_NEW)}"
    finally:
        sys.path.remove(str(folder))
        for name in pkg_entries():
            del sys.modules[name]


def with_freshproc(folder: Path) -> str:
    write_package(folder, V1)
    with freshproc.Pool(1, env={"PYTHONPATH": str(folder)}) as pool:
        before = pool.call_sync("pkg", "describe")
        report("freshproc", "pool.call_sync('pkg', 'describe')", before)
        expect(before == "pkg v1, cache v1, util v1", "the worker imports pkg v1")

        write_package(folder, V2)
        report("freshproc", "pkg/ edited; pool.recycle()")
        pool.recycle()
        after = pool.call_sync("pkg", "describe")
        report("freshproc", "pool.call_sync('pkg', 'describe')", after, verdict(after, ALL_NEW))
        expect(after == ALL_NEW, "after recycle, every submodule is the new version")
    report("freshproc", "pkg entries in the caller's sys.modules", pkg_entries())
    expect(not pkg_entries(), "the caller never imports pkg")
    return f"{after}: new code"


def compare() -> tuple[str, str]:
    """Run both sides; return one line about each. Raises AssertionError if freshproc fails."""
    with tempfile.TemporaryDirectory() as tmp:
        first = in_process(Path(tmp, "in_process"))
        second = with_freshproc(Path(tmp, "freshproc"))
    return first, second


if __name__ == "__main__":
    print(TITLE)
    compare()
