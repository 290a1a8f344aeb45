"""Pool options that meet other features, passed through ``freshproc.Executor``: hot
reload (an edited module is picked up between submits, or kept with ``reload=False``) and
``python=`` (a virtual environment, another Python minor version)."""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import freshproc
from tests.test_environments import OTHER_MINORS, OTHER_PYTHONS

pytestmark = pytest.mark.timeout(120)

_TARGET = """\
VALUE = {value}


def value(*_args):
    return VALUE
"""


@pytest.fixture
def edited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, ModuleType]]:
    """A module on the caller's path (so its functions travel by name), and its file."""
    path = tmp_path / "executor_edited.py"
    path.write_text(_TARGET.format(value=0))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "executor_edited", raising=False)
    yield path, importlib.import_module("executor_edited")
    sys.modules.pop("executor_edited", None)


def test_reload_picks_up_an_edit_between_submits(edited: tuple[Path, ModuleType]) -> None:
    path, module = edited
    stale: list[tuple[str, int, object]] = []
    with freshproc.Executor(max_workers=2, reload=True) as executor:
        for value in range(1, 41):
            path.write_text(_TARGET.format(value=value))
            got = executor.submit(module.value).result()
            if got != value:
                stale.append(("submit", value, got))
            path.write_text(_TARGET.format(value=value + 100))
            got_all = list(executor.map(module.value, range(4), chunksize=2))
            if got_all != [value + 100] * 4:
                stale.append(("map", value, got_all))
        assert os.path.realpath(path) in executor.pool.watched_files()
    assert stale == []


def test_reload_false_keeps_the_warm_worker_stale(edited: tuple[Path, ModuleType]) -> None:
    path, module = edited
    with freshproc.Executor(max_workers=1, reload=False) as executor:
        assert executor.submit(module.value).result() == 0
        path.write_text(_TARGET.format(value=1))
        assert executor.submit(module.value).result() == 0  # stale, as asked
        assert executor.pool.watched_files() == frozenset()
        executor.pool.recycle()
        assert executor.submit(module.value).result() == 1


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv without pip holding one package the caller cannot import."""
    root = tmp_path_factory.mktemp("executor-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    (site_packages,) = root.glob("lib/python3.*/site-packages")
    (site_packages / "fp_executor_venv.py").write_text("import sys\n\ndef where():\n    return sys.prefix\n")
    return root


def test_python_venv_runs_there(venv: Path) -> None:
    with freshproc.Executor(max_workers=1, python=venv) as executor:
        assert executor.submit(lambda: __import__("fp_executor_venv").where()).result() == str(venv)
        prefixes = list(executor.map(lambda _: sys.prefix, range(3)))
        assert prefixes == [str(venv)] * 3
        assert executor.pool.describe().python == str(venv / "bin" / "python3")
    with pytest.raises(ModuleNotFoundError):
        __import__("fp_executor_venv")


@pytest.mark.parametrize("minor", OTHER_MINORS, ids=[f"3.{minor}" for minor in OTHER_MINORS])
def test_python_of_another_version_runs_there(minor: int) -> None:
    python = OTHER_PYTHONS[minor]
    if python is None:
        pytest.skip(f"no Python 3.{minor} on this machine (pyenv has none, and none is on PATH)")
    with freshproc.Executor(max_workers=1, python=python) as executor:
        # A function of an importable module travels by name.
        assert executor.submit(platform.python_version).result().startswith(f"3.{minor}.")
        assert list(executor.map(abs, [-1, -2])) == [1, 2]
        # A lambda would be bytecode: its future says why it cannot go, before anything runs.
        with pytest.raises(freshproc.FreshprocError, match="bytecode does not cross Python versions"):
            executor.submit(lambda: 1).result()
        assert executor.submit(platform.python_version).result().startswith(f"3.{minor}.")
