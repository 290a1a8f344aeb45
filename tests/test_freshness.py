"""The freshness invariants: what a worker holds, and that recycled or fresh workers run
the code on disk now, where in-process reloading cannot."""

from __future__ import annotations

import gc
import importlib
import math
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import anyio
import pytest

import freshproc
from tests.conftest import Invoke, ModuleFolder

pytestmark = pytest.mark.timeout(60)


def loaded_modules() -> list[str]:
    return sorted(sys.modules)


def has_module(name: str) -> bool:
    return name in sys.modules


def import_and_forget(name: str) -> None:
    importlib.import_module(name)


# -- 1. the caller never imports the target ------------------------------------------------


def test_call_never_imports_the_target_in_the_caller(invoke: Invoke, modules: ModuleFolder) -> None:
    modules.write("only_in_worker.py", "def answer():\n    return 42\n")
    with freshproc.Pool(1, env=modules.env) as pool:
        assert invoke(pool, "only_in_worker", "answer") == 42
    assert "only_in_worker" not in sys.modules


# -- 2. a worker starts from the template's modules only --------------------------------


def _allowed_modules() -> set[str]:
    """A bare interpreter's start-up modules plus what the worker runtime imports."""
    probe = (
        "import sys; start = set(sys.modules);"
        "import cloudpickle, ctypes, json, select, socket, resource, mmap, pickle, traceback,"
        " importlib, gc, struct, array, types, signal, time;"
        "print(' '.join(sorted(sys.modules)))"
    )
    names = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    return set(names) | {
        f"freshproc.{name}"
        for name in (
            "_protocol",
            "_errors",
            "_transport",
            "_worker",
            "_template",
            "_serialization",
            "_buffers",
            "_loaded",
        )
    }


def test_worker_holds_only_startup_and_runtime_modules(invoke: Invoke) -> None:
    with freshproc.Pool(1, fresh=True) as pool:
        worker_modules = set(invoke(pool, "tests.test_freshness", "loaded_modules"))
    worker_modules -= {"tests", "tests.test_freshness", "tests.conftest"}  # the target's own imports
    worker_modules = {name for name in worker_modules if not name.startswith(("_pytest", "pytest", "pluggy"))}
    worker_modules -= {"psutil", "freshproc", "freshproc._api", "freshproc._pool"}  # tests.conftest's imports
    unexpected = {name for name in worker_modules - _allowed_modules() if not _imported_by_test_modules(name)}
    assert not unexpected, f"modules beyond the template's: {sorted(unexpected)}"


def _imported_by_test_modules(name: str) -> bool:
    # tests/test_freshness.py and tests/conftest.py import anyio, psutil, pytest, hypothesis ...
    return (
        name.split(".")[0]
        in {
            "anyio",
            "psutil",
            "_psutil_linux",
            "_psutil_posix",
            "freshproc",
            "sniffio",
            "idna",
            "exceptiongroup",
            "typing_extensions",
        }
        or name in sys.modules
    )


def test_template_runtime_imports_no_event_loop(invoke: Invoke) -> None:
    """Principle 4: user code never starts with anyio, trio or asyncio loaded."""
    with freshproc.Pool(1, fresh=True) as pool:
        names = set(invoke(pool, "sys", "modules.keys"))
    assert not names & {"anyio", "trio", "asyncio", "freshproc._pool", "freshproc._api"}
    assert "freshproc._worker" in names


def test_modules_imported_by_the_caller_later_do_not_appear(invoke: Invoke, modules: ModuleFolder) -> None:
    modules.write("caller_side_module.py", "X = 1\n")
    sys.path.insert(0, str(modules.root))
    try:
        importlib.import_module("caller_side_module")
        with freshproc.Pool(1) as pool:
            assert not invoke(pool, "tests.test_freshness", "has_module", "caller_side_module")
    finally:
        sys.path.remove(str(modules.root))
        sys.modules.pop("caller_side_module", None)


def test_fresh_pool_every_call_starts_from_the_template(invoke: Invoke, modules: ModuleFolder) -> None:
    modules.write("leaves_a_trace.py", "import sys\nsys.modules['xml_trace_marker'] = sys\n")
    with freshproc.Pool(1, fresh=True, env=modules.env) as pool:
        first = set(invoke(pool, "tests.test_freshness", "loaded_modules"))
        invoke(pool, "tests.test_freshness", "import_and_forget", "leaves_a_trace")
        after = set(invoke(pool, "tests.test_freshness", "loaded_modules"))
    assert "xml_trace_marker" not in after
    # The template loads cloudpickle once, when first idle; a worker forked before that
    # lacks those modules. Nothing else may differ.
    assert after ^ first <= _warm_up_modules()


def _warm_up_modules() -> set[str]:
    probe = "import sys; before = set(sys.modules); import cloudpickle; print(' '.join(set(sys.modules) - before))"
    return set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split())


# -- 3. recycle runs code edited on disk, for importers too ------------------------------


def test_recycle_runs_edited_code_including_through_importers(invoke: Invoke, modules: ModuleFolder) -> None:
    modules.write("foo.py", "def version():\n    return 1\n")
    modules.write("bar.py", "from foo import version\n\ndef report():\n    return version()\n")
    with freshproc.Pool(2, env=modules.env, reload=False) as pool:
        assert invoke(pool, "bar", "report") == 1
        modules.write("foo.py", "def version():\n    return 2  # edited\n")
        assert invoke(pool, "bar", "report") == 1  # without hot reload, a warm worker keeps what it loaded
        pool.recycle()
        assert invoke(pool, "bar", "report") == 2
        assert invoke(pool, "foo", "version") == 2


def test_del_sys_modules_leaves_stale_references(modules: ModuleFolder) -> None:
    """The in-process way, for contrast: bar keeps the old foo."""
    modules.write("foo_inproc.py", "def version():\n    return 1\n")
    modules.write("bar_inproc.py", "from foo_inproc import version\n")
    sys.path.insert(0, str(modules.root))
    try:
        bar = importlib.import_module("bar_inproc")
        modules.write("foo_inproc.py", "def version():\n    return 2  # edited\n")
        del sys.modules["foo_inproc"]
        importlib.invalidate_caches()
        assert importlib.import_module("foo_inproc").version() == 2
        assert bar.version() == 1  # stale
    finally:
        sys.path.remove(str(modules.root))
        for name in ("foo_inproc", "bar_inproc"):
            sys.modules.pop(name, None)


# -- 4. math.cos ---------------------------------------------------------------------


def delete_math_cos() -> bool:
    del math.cos
    return hasattr(math, "cos")


def math_has_cos() -> bool:
    return hasattr(math, "cos")


def test_deleting_math_cos_does_not_leak_into_the_next_fresh_worker(invoke: Invoke) -> None:
    with freshproc.Pool(1, fresh=True) as pool:
        assert invoke(pool, "tests.test_freshness", "delete_math_cos") is False
        assert invoke(pool, "tests.test_freshness", "math_has_cos") is True


def test_reload_does_not_bring_math_cos_back_in_process() -> None:
    """Contrast: PEP 489 reload does not re-initialise an extension module."""
    script = "import importlib, math\ndel math.cos\nimportlib.reload(math)\nprint(hasattr(math, 'cos'))\n"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"


# -- 5. a package with submodules -----------------------------------------------------------


def _write_package(modules: ModuleFolder, version: int) -> None:
    padding = "#" * version  # a different size, whatever the clock says
    modules.write("pkg/__init__.py", f"VERSION = {version}\nfrom pkg import cache, util\n{padding}\n")
    modules.write("pkg/cache.py", f"VERSION = {version}\n")
    modules.write("pkg/util.py", f"VERSION = {version}\nfrom pkg.cache import VERSION as CACHE_VERSION\n")


def package_versions() -> dict[str, int]:
    importlib.import_module("pkg")
    return {name: module.VERSION for name, module in sys.modules.items() if name.split(".")[0] == "pkg"}


def stale_package_objects() -> int:
    """Module objects named pkg* reachable in this process that are not the current ones."""
    current = {id(module) for name, module in sys.modules.items() if name.split(".")[0] == "pkg"}
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, type(sys)) and obj.__name__.split(".")[0] == "pkg" and id(obj) not in current
    )


def test_package_with_submodules_is_replaced_whole(invoke: Invoke, modules: ModuleFolder) -> None:
    _write_package(modules, 1)
    with freshproc.Pool(1, env=modules.env) as pool:
        assert invoke(pool, "tests.test_freshness", "package_versions") == {"pkg": 1, "pkg.cache": 1, "pkg.util": 1}
        _write_package(modules, 2)
        pool.recycle()
        assert invoke(pool, "tests.test_freshness", "package_versions") == {"pkg": 2, "pkg.cache": 2, "pkg.util": 2}
        assert invoke(pool, "pkg.util", "CACHE_VERSION.__int__") == 2
        assert invoke(pool, "tests.test_freshness", "stale_package_objects") == 0


# -- 6. a rebuilt C extension -----------------------------------------------------------

_EXTENSION = """
#include <Python.h>
static PyObject *value(PyObject *self, PyObject *args) {{ return PyLong_FromLong({constant}); }}
static PyMethodDef methods[] = {{{{"value", value, METH_NOARGS, NULL}}, {{NULL, NULL, 0, NULL}}}};
static struct PyModuleDef module = {{PyModuleDef_HEAD_INIT, "constant_ext", NULL, -1, methods}};
PyMODINIT_FUNC PyInit_constant_ext(void) {{ return PyModule_Create(&module); }}
"""


def _build_extension(folder: Path, constant: int) -> None:
    source = folder / f"constant_ext_{constant}.c"
    source.write_text(_EXTENSION.format(constant=constant))
    target = folder / f"constant_ext{sysconfig.get_config_var('EXT_SUFFIX')}"
    built = folder / f"build_{constant}.so"
    include = sysconfig.get_paths()["include"]
    subprocess.run(["cc", "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(built)], check=True)
    os.replace(built, target)  # a new inode: processes that mapped the old file are unharmed


@pytest.fixture
def extension_folder(tmp_path: Path) -> Path:
    if subprocess.run(["cc", "--version"], capture_output=True, check=False).returncode != 0:  # pragma: no cover
        pytest.fail("a C compiler is required for the extension tests")
    folder = tmp_path / "ext"
    folder.mkdir()
    return folder


def test_rebuilt_extension_runs_new_code_in_a_fresh_worker(invoke: Invoke, extension_folder: Path) -> None:
    _build_extension(extension_folder, 1)
    with freshproc.Pool(1, fresh=True, env={"PYTHONPATH": str(extension_folder)}) as pool:
        assert invoke(pool, "constant_ext", "value") == 1
        _build_extension(extension_folder, 2)
        assert invoke(pool, "constant_ext", "value") == 2


def test_reload_keeps_the_old_extension_in_process(extension_folder: Path) -> None:
    """Contrast: importlib.reload cannot replace a loaded extension module."""
    _build_extension(extension_folder, 1)
    script = textwrap.dedent(
        f"""
        import importlib, os, subprocess, sys
        sys.path.insert(0, {str(extension_folder)!r})
        import constant_ext
        before = constant_ext.value()
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from tests.test_freshness import _build_extension
        from pathlib import Path
        _build_extension(Path({str(extension_folder)!r}), 2)
        importlib.invalidate_caches()
        importlib.reload(constant_ext)
        print(before, constant_ext.value())
        """
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["1", "1"]


# -- 7. many concurrent calls, none lost or swapped -----------------------------------------


def echo(value: int) -> int:
    return value


async def test_500_calls_from_200_tasks_each_get_their_own_result() -> None:
    results: dict[int, object] = {}
    async with freshproc.Pool(2) as pool:

        async def task(task_index: int) -> None:
            for call_index in range(task_index * 3, task_index * 3 + 3):
                if call_index < 500:
                    results[call_index] = await pool.call("tests.test_freshness", "echo", call_index)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for task_index in range(200):
                    group.start_soon(task, task_index)
    assert results == {index: index for index in range(500)}


def test_concurrent_blocking_calls_from_threads_each_get_their_own_result() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with freshproc.Pool(2) as pool, ThreadPoolExecutor(16) as threads:
        results = list(threads.map(lambda value: pool.call_sync("tests.test_freshness", "echo", value), range(300)))
    assert results == list(range(300))


# -- 8. __main__ is never re-executed ------------------------------------------------------


def test_main_script_runs_once_and_its_functions_travel_by_value(tmp_path: Path) -> None:
    marker = tmp_path / "side_effects.txt"
    (tmp_path / "sibling.py").write_text("def triple(x):\n    return 3 * x\n")
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import anyio
            import freshproc
            print("TOP LEVEL RAN")
            with open({str(marker)!r}, "a") as file:
                file.write("ran\\n")

            def double(x):
                return 2 * x

            if __name__ == "__main__":
                with freshproc.Pool(2) as pool:
                    print("double", pool.run_sync(double, 21))
                    print("lambda", pool.run_sync(lambda: double(5)))
                    print("sibling", pool.call_sync("sibling", "triple", 3))
                with freshproc.Pool(1, fresh=True) as pool:
                    print("fresh", pool.run_sync(double, 1), pool.run_sync(double, 2))
                    print("asyncio", anyio.run(pool.run, double, 3))
                    print("trio", anyio.run(pool.run, double, 4, backend="trio"))
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("TOP LEVEL RAN") == 1
    assert marker.read_text() == "ran\n"
    assert "double 42" in result.stdout
    assert "lambda 10" in result.stdout
    assert "sibling 9" in result.stdout
    assert "fresh 2 4" in result.stdout
    assert "asyncio 6" in result.stdout
    assert "trio 8" in result.stdout


# -- what a worker can import -----------------------------------------------------------------


def current_directory() -> str:
    return os.getcwd()


def test_relative_path_entries_mean_the_workers_cwd(
    invoke: Invoke, modules: ModuleFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    modules.write("in_cwd.py", "VALUE = 'found via cwd'\n")
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    with freshproc.Pool(1, cwd=modules.root) as pool:
        assert invoke(pool, "in_cwd", "VALUE.upper") == "FOUND VIA CWD"
        assert invoke(pool, "tests.test_freshness", "current_directory") == str(modules.root)


def worker_sys_path() -> list[str]:
    return list(sys.path)


def test_pythonpath_in_env_goes_first(invoke: Invoke, modules: ModuleFolder) -> None:
    modules.root.mkdir(parents=True)
    with freshproc.Pool(1, env=modules.env) as pool:
        path = invoke(pool, "tests.test_freshness", "worker_sys_path")
    assert isinstance(path, list)
    assert path[0] == str(modules.root)
    assert path[1:] == [entry for entry in sys.path if entry != str(modules.root)]
