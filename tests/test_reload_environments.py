"""Hot reload under another interpreter (``python=``): a virtual environment, and every
other Python minor version the machine has. Zero stale calls, a ``preload`` module that
restarts the template, a service that restarts on edit, and the workers' own standard
library left unwatched. Synchronization is by the calls themselves, never sleeps."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import freshproc
from tests.reload_helpers import (
    SERVICE,
    EditedModule,
    Folder,
    caller_imports_from,
    check_preload_edits_restart_the_template,
)
from tests.test_environments import OTHER_MINORS, OTHER_PYTHONS

pytestmark = pytest.mark.timeout(240)

#: The same length for every value: a rewrite keeps the file's size, so only a fresh
#: bytecode cache (or none) tells the new code from the old within one second.
_TARGET = """\
VALUE = {value:>6}


def value(*_args):
    return VALUE
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv of the caller's Python, without pip and without the system's site-packages."""
    root = tmp_path_factory.mktemp("reload-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    return root


@pytest.fixture(params=["venv", *(f"3.{minor}" for minor in OTHER_MINORS)])
def python(request: pytest.FixtureRequest) -> str:
    """The interpreter the pool is given: a venv's folder, or another Python minor version."""
    if request.param == "venv":
        return str(request.getfixturevalue("venv"))
    found = OTHER_PYTHONS[int(request.param.split(".")[1])]
    if found is None:
        pytest.skip(f"no Python {request.param} on this machine (pyenv has none, and none is on PATH)")
    return found


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Folder]:
    """Modules on the caller's path too (``run`` and ``map`` ship functions by name); the
    workers may write bytecode caches (under another version, with its own cache tag)."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    with caller_imports_from(Folder(tmp_path / "reloaded")) as reloaded:
        yield reloaded


def _cross_version(pool: freshproc.Pool) -> bool:
    return pool.describe().version.split(".")[:2] != [str(part) for part in sys.version_info[:2]]


# -- zero stale calls -------------------------------------------------------------------------


def test_edits_seen_by_the_next_call_blocking(python: str, folder: Folder) -> None:
    edited = EditedModule(folder, "target_env.py", _TARGET)
    edited.edit(0)
    with freshproc.Pool(2, python=python, sys_path=[folder.root]) as pool:
        for value in range(1, 301):
            edited.edit(value)
            edited.expect("call", value, pool.call_sync("target_env", "value"))
        target = importlib.import_module("target_env")  # by name: its module travels, not bytecode
        for value in range(1000, 1040):
            edited.edit(value)
            edited.expect("run", value, pool.run_sync(target.value))
            edited.edit(value + 1000)
            edited.expect("map", [value + 1000] * 3, pool.map_sync(target.value, range(3)))
        cross_version = _cross_version(pool)
    assert edited.stale == []
    if cross_version:
        # The workers cached bytecode under their own tag, which the caller's does not name.
        cached = {path.name for path in (folder.root / "__pycache__").glob("target_env.*.pyc")}
        assert cached
        assert all(sys.implementation.cache_tag not in name for name in cached)


async def test_edits_seen_by_the_next_call_async(python: str, folder: Folder) -> None:
    edited = EditedModule(folder, "target_env_async.py", _TARGET)
    edited.edit(0)
    target = importlib.import_module("target_env_async")
    async with freshproc.Pool(2, python=python, sys_path=[folder.root]) as pool:
        for value in range(1, 61):
            edited.edit(value)
            edited.expect("call", value, await pool.call("target_env_async", "value"))
            edited.edit(value + 1000, atomic=True)
            edited.expect("run", value + 1000, await pool.run(target.value))
    assert edited.stale == []


def test_stat_fallback_gives_zero_stale_calls(python: str, folder: Folder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHPROC_RELOAD_WATCHER", "stat")
    polled = EditedModule(folder, "polled_env.py", _TARGET)
    polled.edit(0)
    with freshproc.Pool(2, python=python, sys_path=[folder.root]) as pool:
        for value in range(1, 101):
            polled.edit(value)
            polled.expect("call", value, pool.call_sync("polled_env", "value"))
    assert polled.stale == []


def test_the_workers_standard_library_is_not_watched(python: str, folder: Folder) -> None:
    folder.write("uses_stdlib.py", "import json, decimal\n\ndef value():\n    return json.dumps(1)\n", settle=True)
    with freshproc.Pool(1, python=python, sys_path=[folder.root]) as pool:
        assert pool.call_sync("uses_stdlib", "value") == "1"
        stdlib = os.path.realpath(pool.call_sync("sysconfig", "get_path", "stdlib"))
        watched = pool.watched_files()
    assert str(folder.root / "uses_stdlib.py") in watched
    assert [path for path in watched if path.startswith(stdlib + os.sep) and "site-packages" not in path] == []


# -- the template, and services ------------------------------------------------------------------


def test_preload_edited_restarts_the_template(python: str, folder: Folder) -> None:
    check_preload_edits_restart_the_template(folder, "preloaded_env", _TARGET, python=python, sys_path=[folder.root])


def test_service_with_reload_restarts_on_edit(python: str, folder: Folder) -> None:
    folder.write("versioned_env.py", SERVICE.format(value=1), settle=True)
    # max_restarts=0: a reload's restart must not count toward the restart intensity.
    options = freshproc.ServiceOptions(reload=True, max_restarts=0, python=python, sys_path=[folder.root])
    with freshproc.service("versioned_env", "Versioned", options=options) as service:
        pid, version, calls = service.call_sync("version")
        assert (version, calls) == (1, 1)
        for value in range(2, 12):
            folder.write("versioned_env.py", SERVICE.format(value=value))
            new_pid, version, calls = service.call_sync("version")
            assert (version, calls) == (value, 1)  # a new process, a new object
            assert new_pid != pid
            pid = new_pid
        assert service.alive
        assert service.restarts == 10
