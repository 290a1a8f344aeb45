"""Hot reload: edit a plugin, a package and a C extension while the program runs.

The problem
    A long-running program calls into code that you are editing: a plugin module, a
    package, a C extension you rebuild. In one process, ``importlib.reload`` leaves stale
    references behind and cannot reload an extension at all; a file watcher that restarts
    the whole program (uvicorn ``--reload``) takes a new interpreter per save, and runs the
    old code until it notices the save.

The freshproc way
    A ``Pool`` reloads by default: every worker reports the files it loaded code from, the
    pool watches them, and before each call it retires the workers that loaded a file that
    changed (only those; the template too if a ``preload`` module changed). The call made
    right after a save runs the saved code, with no delay and no restart of the program.
    Each reload is an INFO record on the ``freshproc`` logger (shown below).

The C extension part needs a C compiler and Python's headers; without them it is skipped.

Run it: ``python examples/hot_reload.py``
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from _support import expect, report, verdict
from rebuild_c_extension import MODULE as EXTENSION
from rebuild_c_extension import build as build_extension

import freshproc

TITLE = "hot reload: edits seen by the very next call, C extensions included"

PLUGIN = """\
def greet(name):
    return "{greeting}, " + name
"""

PACKAGE_INIT = """\
from shapes.area import square
"""

PACKAGE_AREA = """\
def square(side):
    return side * side * {factor}
"""


def run(folder: Path) -> None:
    (folder / "shapes").mkdir(parents=True)
    (folder / "plugin.py").write_text(PLUGIN.format(greeting="Hello"))
    (folder / "shapes" / "__init__.py").write_text(PACKAGE_INIT)
    (folder / "shapes" / "area.py").write_text(PACKAGE_AREA.format(factor=1))
    events: list[freshproc.ReloadEvent] = []
    with freshproc.Pool(2, env={"PYTHONPATH": str(folder)}, on_reload=events.append) as pool:
        greeting = pool.call_sync("plugin", "greet", "Ada")
        report("freshproc", "plugin.greet('Ada')", greeting)

        (folder / "plugin.py").write_text(PLUGIN.format(greeting="Bonjour"))
        greeting = pool.call_sync("plugin", "greet", "Ada")
        report("freshproc", "edit plugin.py; plugin.greet('Ada')", greeting, verdict(greeting, "Bonjour, Ada"))
        expect(greeting == "Bonjour, Ada", "the call after an edit runs the edited plugin")

        area = pool.call_sync("shapes", "square", 3)
        report("freshproc", "shapes.square(3)", area)
        (folder / "shapes" / "area.py").write_text(PACKAGE_AREA.format(factor=10))
        area = pool.call_sync("shapes", "square", 3)
        report("freshproc", "edit shapes/area.py; shapes.square(3)", area, verdict(area, 90))
        expect(area == 90, "an edited submodule is seen through its package")

        try:
            build_extension(folder, 1)
        except unittest.SkipTest as skip:
            print(f"(C extension part skipped: {skip})")
        else:
            value = pool.call_sync(EXTENSION, "value")
            report("freshproc", f"{EXTENSION}.value()", value)
            build_extension(folder, 2)
            value = pool.call_sync(EXTENSION, "value")
            report("freshproc", f"rebuild {EXTENSION}; {EXTENSION}.value()", value, verdict(value, 2))
            expect(value == 2, "a rebuilt extension is loaded by the next call")

        watched = sorted(Path(path).name for path in pool.watched_files() if path.startswith(str(folder)))
        print("  watched now in the application's folder:", ", ".join(watched))
    expect(len(events) >= 2, "each reload reaches on_reload")
    expect("plugin" not in sys.modules, "the caller never imports the plugin")


def main() -> None:
    print(TITLE)
    logging.basicConfig(level=logging.WARNING, format="  log: %(message)s", stream=sys.stdout)
    logging.getLogger("freshproc").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            run(Path(tmp, "app"))
        except subprocess.CalledProcessError as exc:
            print(f"the C compiler failed:\n{exc.stderr}", file=sys.stderr)
            raise


if __name__ == "__main__":
    main()
