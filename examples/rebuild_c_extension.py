"""A rebuilt C extension cannot be loaded again in the same process.

The problem
    You compile an extension module, import it, change the C code and rebuild it to the
    same file name. ``importlib.reload`` hands back the old code: a single-phase extension
    module is initialised once per process and reload reuses the cached copy, and the
    shared library itself stays mapped (CPython never unloads it; ``dlopen`` of the same
    path returns the library already loaded). Deleting it from ``sys.modules`` and
    importing it again does not help either. Only a new process sees the new build.

The freshproc way
    Call the extension in a ``Pool(1, fresh=True)``: every call runs in a new process that
    has never loaded the library, so each call loads the build that is on disk now.

Needs a C compiler and Python's headers; without them the script says so and exits 0.

Run it: ``python examples/rebuild_c_extension.py``
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import unittest
from pathlib import Path
from typing import Any, cast

from _support import expect, report, verdict

import freshproc

TITLE = "rebuilt C extension: a process loads a library only once"

MODULE = "constant"

C_SOURCE = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *value(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(%(value)d);
}

static PyMethodDef methods[] = {
    {"value", value, METH_NOARGS, "The constant this build was compiled with."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "%(name)s", NULL, -1, methods};

PyMODINIT_FUNC PyInit_%(name)s(void) { return PyModule_Create(&module); }
"""


def find_compiler() -> list[str]:
    """The C compiler command: $CC, the one Python was built with, or cc/gcc/clang."""
    candidates = [os.environ.get("CC", ""), sysconfig.get_config_var("CC") or "", "cc", "gcc", "clang"]
    for candidate in candidates:
        command = shlex.split(candidate)
        if command and shutil.which(command[0]):
            return command
    raise unittest.SkipTest("no C compiler found (set CC or install gcc/clang)")


def build(folder: Path, value: int) -> Path:
    """Compile the extension returning ``value``, replacing any earlier build in ``folder``."""
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").exists():
        raise unittest.SkipTest(f"Python's C headers are not installed (no Python.h in {include})")
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{MODULE}.c"
    source.write_text(C_SOURCE % {"value": value, "name": MODULE})
    target = folder / f"{MODULE}{sysconfig.get_config_var('EXT_SUFFIX')}"
    # Link to a new file and rename it over the old one, as build tools do: rewriting a
    # library in place under a process that has it mapped would crash that process.
    partial = target.with_name(target.name + ".partial")
    command = [*find_compiler(), "-shared", "-fPIC", "-O1", f"-I{include}", str(source), "-o", str(partial)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    os.replace(partial, target)
    return target


def in_process(folder: Path) -> str:
    build(folder, 1)
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        module = cast("Any", importlib.import_module(MODULE))
        report("in-process", f"build(1); import {MODULE}; {MODULE}.value()", module.value())

        build(folder, 2)
        report("in-process", "build(2) to the same file name")
        reloaded = cast("Any", importlib.reload(module))
        report("in-process", f"  importlib.reload({MODULE}).value()", reloaded.value(), verdict(reloaded.value(), 2))
        del sys.modules[MODULE]
        value = cast("Any", importlib.import_module(MODULE)).value()
        report("in-process", f"  del sys.modules[{MODULE!r}]; re-import; .value()", value, verdict(value, 2))
        return f"value() -> {value} after build(2): {verdict(value, 2)}"
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(MODULE, None)


def with_freshproc(folder: Path) -> str:
    build(folder, 1)
    with freshproc.Pool(1, fresh=True, env={"PYTHONPATH": str(folder)}) as pool:
        before = pool.call_sync(MODULE, "value")
        report("freshproc", f"build(1); pool.call_sync({MODULE!r}, 'value')", before)
        expect(before == 1, "the worker loads the first build")

        build(folder, 2)
        report("freshproc", "build(2) to the same file name")
        after = pool.call_sync(MODULE, "value")
        report("freshproc", f"pool.call_sync({MODULE!r}, 'value')  # fresh=True", after, verdict(after, 2))
        expect(after == 2, "a fresh worker loads the new build")
    expect(MODULE not in sys.modules, "the caller never loads the extension")
    return f"value() -> {after} after build(2): new code"


def compare() -> tuple[str, str]:
    """Run both sides; return one line about each. Raises AssertionError if freshproc fails,
    unittest.SkipTest if no extension can be built here."""
    with tempfile.TemporaryDirectory() as tmp:
        first = in_process(Path(tmp, "in_process"))
        second = with_freshproc(Path(tmp, "freshproc"))
    return first, second


def main() -> None:
    print(TITLE)
    try:
        compare()
    except unittest.SkipTest as skip:
        print(f"SKIPPED: {skip}")
    except subprocess.CalledProcessError as exc:
        print(f"the C compiler failed ({shlex.join(exc.cmd)}):\n{exc.stderr}", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
