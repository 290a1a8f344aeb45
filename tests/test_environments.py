"""Environments: other interpreters and virtual environments, two versions of one package
side by side, the workers' environment variables, cwd and sys.path, and describe()."""

from __future__ import annotations

import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import freshproc
from freshproc import _environments

#: Seconds a bad interpreter path may take to be reported (a real start takes well under one).
BAD_PATH_DEADLINE = 5.0


# -- finding interpreters the way CI enables them (PYENV_VERSION) -------------------------


def _find_python(minor: int) -> str | None:
    """An interpreter of Python 3.<minor>: the one pyenv enables (PYENV_VERSION), else one
    on PATH that is not a shim, else any that pyenv has installed."""
    name = f"python3.{minor}"
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        which = subprocess.run([pyenv, "which", name], capture_output=True, text=True, check=False)
        if which.returncode == 0 and which.stdout.strip():
            return which.stdout.strip()
    located = shutil.which(name)
    if located is not None and "shims" not in Path(located).parts:
        return located
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates = sorted(glob.glob(os.path.join(root, "versions", f"3.{minor}.*", "bin", name)))
    return candidates[-1] if candidates else None


OTHER_MINORS = [minor for minor in (10, 11, 12, 13) if minor != sys.version_info[1]]
OTHER_PYTHONS = {minor: _find_python(minor) for minor in OTHER_MINORS}


@pytest.fixture(params=OTHER_MINORS, ids=[f"3.{minor}" for minor in OTHER_MINORS])
def other_python(request: pytest.FixtureRequest) -> str:
    minor = int(request.param)
    found = OTHER_PYTHONS[minor]
    if found is None:
        pytest.skip(f"no Python 3.{minor} on this machine (pyenv has none, and none is on PATH)")
    return found


# -- packages on disk -----------------------------------------------------------------------


def _write_package(root: Path, name: str, source: str) -> Path:
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(source))
    return root


VERSIONED = """
__version__ = {version!r}

def work(x):
    return (__version__, {expression})
"""


@pytest.fixture
def two_versions(tmp_path: Path) -> tuple[Path, Path]:
    old = _write_package(tmp_path / "old", "fp_versioned", VERSIONED.format(version="1.0", expression="x + 1"))
    new = _write_package(tmp_path / "new", "fp_versioned", VERSIONED.format(version="2.0", expression="x * 2"))
    return old, new


def _expected(version: str, x: int) -> tuple[str, int]:
    return (version, x + 1) if version == "1.0" else (version, x * 2)


CALLS = 200


@pytest.mark.anyio
async def test_two_versions_side_by_side_async(two_versions: tuple[Path, Path]) -> None:
    old, new = two_versions
    results: dict[str, list[tuple[int, object]]] = {"1.0": [], "2.0": []}
    async with (
        freshproc.Pool(2, sys_path=[old]) as old_pool,
        freshproc.Pool(2, sys_path=[new]) as new_pool,
    ):

        async def one(pool: freshproc.Pool, version: str, x: int) -> None:
            results[version].append((x, await pool.call("fp_versioned", "work", x)))

        async with anyio.create_task_group() as group:
            for x in range(CALLS):
                group.start_soon(one, old_pool, "1.0", x)
                group.start_soon(one, new_pool, "2.0", x)
    for version, outcomes in results.items():
        assert len(outcomes) == CALLS
        assert all(value == _expected(version, x) for x, value in outcomes)
    assert "fp_versioned" not in sys.modules


def test_two_versions_side_by_side_blocking(two_versions: tuple[Path, Path]) -> None:
    old, new = two_versions
    with (
        freshproc.Pool(2, sys_path=[old]) as old_pool,
        freshproc.Pool(2, sys_path=[new]) as new_pool,
        concurrent.futures.ThreadPoolExecutor(8) as threads,
    ):
        futures = {
            (version, x): threads.submit(pool.call_sync, "fp_versioned", "work", x)
            for x in range(CALLS)
            for version, pool in (("1.0", old_pool), ("2.0", new_pool))
        }
        for (version, x), future in futures.items():
            assert future.result() == _expected(version, x)
    assert "fp_versioned" not in sys.modules


# -- a virtual environment made here ----------------------------------------------------------


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv of the caller's Python (no pip, no system site-packages) holding one small
    package, and nothing of freshproc's or cloudpickle's."""
    root = tmp_path_factory.mktemp("env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    (site_packages,) = root.glob("lib/python3.*/site-packages")
    _write_package(
        site_packages,
        "fp_venv_only",
        """
        import sys

        def where():
            return sys.prefix

        class Counter:
            def __init__(self, start):
                self.count = start

            def bump(self):
                self.count += 1
                return self.count
        """,
    )
    return root


def _site_packages_names(venv: Path) -> set[str]:
    (site_packages,) = venv.glob("lib/python3.*/site-packages")
    return {path.name for path in site_packages.iterdir()}


def test_pool_in_a_virtual_environment(venv: Path) -> None:
    before = _site_packages_names(venv)
    with freshproc.Pool(1, python=venv) as pool:
        assert pool.call_sync("fp_venv_only", "where") == str(venv)
        # Its own sys.path: the venv's site-packages, none of the caller's.
        worker_path = pool.call_sync("sys", "path.copy")
        assert any(entry.startswith(str(venv)) for entry in worker_path)
        assert sys.prefix not in worker_path
        assert not any(entry.startswith(sys.prefix + "/") for entry in worker_path)
        # freshproc is not importable there; cloudpickle is the caller's, borrowed, so a
        # lambda still travels (same Python version).
        assert pool.call_sync("importlib.util", "find_spec", "freshproc") is None
        assert pool.run_sync(lambda: 40 + 2) == 42
        assert pool.describe().python == str(venv / "bin" / "python3")
    with pytest.raises(ModuleNotFoundError):
        __import__("fp_venv_only")
    assert _site_packages_names(venv) == before  # nothing was written into it


def test_service_in_a_virtual_environment(venv: Path, two_versions: tuple[Path, Path]) -> None:
    options = freshproc.ServiceOptions(python=venv, sys_path=[two_versions[1]])
    with freshproc.service("fp_venv_only", "Counter", 10, options=options) as counter:
        assert [counter.call_sync("bump") for _ in range(3)] == [11, 12, 13]
        assert counter.pid is not None
    with freshproc.service(
        "fp_versioned", "work", 4, options=freshproc.ServiceOptions(sys_path=[two_versions[0]])
    ) as result:
        assert result.call_sync("__getitem__", 1) == 5  # version 1.0: x + 1


# -- another Python minor version -------------------------------------------------------------


VALUES: list[object] = [0, -(2**70), "naïve ✓", [1, [2, "three"]], {"a": 1, "b": [None, True]}, b"\x00\xffbytes"]


@pytest.mark.parametrize("value", VALUES, ids=["int", "bigint", "str", "list", "dict", "bytes"])
def test_plain_data_by_name_across_versions(other_python: str, value: object) -> None:
    with freshproc.Pool(1, python=other_python) as pool:
        assert pool.call_sync("copy", "deepcopy", value) == value
        assert pool.call_sync("builtins", "repr", value) == repr(value)


@pytest.mark.anyio
async def test_calls_across_versions_async(other_python: str) -> None:
    async with freshproc.Pool(1, python=other_python) as pool:
        version = await pool.call("platform", "python_version")
        assert version.split(".")[:2] == other_python.rsplit("python", 1)[1].split(".")[:2]
        assert await pool.call("builtins", "sorted", [3, 1, 2]) == [1, 2, 3]
        with pytest.raises(freshproc.FreshprocError, match="bytecode does not cross Python versions"):
            await pool.run(lambda: 1)


def _numpy_version(python: str) -> str | None:
    done = subprocess.run(
        [python, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def test_numpy_array_across_versions(other_python: str) -> None:
    numpy = pytest.importorskip("numpy")
    if _numpy_version(other_python) is None:
        pytest.skip(f"numpy is not importable under {other_python}")
    with freshproc.Pool(1, python=other_python) as pool:
        small = numpy.arange(10, dtype=numpy.int64)
        assert pool.call_sync("numpy", "sum", small) == 45
        large = numpy.arange(200_000, dtype=numpy.float64)  # travels out of band
        assert numpy.array_equal(pool.call_sync("numpy", "ascontiguousarray", large), large)


def test_by_value_refused_across_versions_before_anything_runs(other_python: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def touch() -> None:
        marker.write_text("ran")

    with freshproc.Pool(1, python=other_python) as pool:
        for target in (lambda: 1, touch):
            with pytest.raises(freshproc.FreshprocError, match="bytecode does not cross Python versions") as caught:
                pool.run_sync(target)
            assert not isinstance(caught.value, freshproc.SerializationError)
            assert "call(module, name" in str(caught.value)
        with pytest.raises(freshproc.FreshprocError, match="bytecode does not cross"):
            pool.call_sync("builtins", "len", [lambda: 1])  # a lambda among the arguments
        # Data that merely mentions __main__ is plain data.
        assert pool.call_sync("builtins", "str", "__main__") == "__main__"
        # Something nothing can pickle is a SerializationError, as on one version.
        with open(os.devnull) as handle, pytest.raises(freshproc.SerializationError):
            pool.call_sync("builtins", "id", handle)
    assert not marker.exists()


def test_importable_function_travels_by_name_across_versions(
    other_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fp_cross_target.py").write_text("import sys\n\ndef minor(x):\n    return (sys.version_info[1], x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fp_cross_target  # type: ignore[import-not-found]

    try:
        with freshproc.Pool(1, python=other_python, sys_path=[tmp_path]) as pool:
            minor, value = pool.run_sync(fp_cross_target.minor, 7)
            assert value == 7
            assert minor != sys.version_info[1]
    finally:
        sys.modules.pop("fp_cross_target", None)


def test_crash_and_timeout_across_versions(other_python: str) -> None:
    with freshproc.Pool(1, python=other_python, timeout=2.0) as pool:
        with pytest.raises(freshproc.WorkerCrashedError):
            pool.call_sync("os", "abort")
        with pytest.raises(freshproc.CallTimeoutError):
            pool.call_sync("time", "sleep", 60)
        assert pool.call_sync("builtins", "abs", -3) == 3


def test_service_across_versions(other_python: str, two_versions: tuple[Path, Path]) -> None:
    options = freshproc.ServiceOptions(python=other_python, sys_path=[two_versions[1]])
    with freshproc.service("fp_versioned", "work", 5, options=options) as result:
        assert result.call_sync("__getitem__", 1) == 10  # version 2.0: x * 2
    refused = freshproc.service(lambda: object(), options=freshproc.ServiceOptions(python=other_python))
    try:
        with pytest.raises(freshproc.FreshprocError, match="bytecode does not cross"), refused:
            pass
    finally:
        refused.close()


# -- the workers' environment ------------------------------------------------------------------


@pytest.fixture(params=["own", "venv"])
def interpreter(request: pytest.FixtureRequest) -> str | None:
    if request.param == "own":
        return None
    venv: Path = request.getfixturevalue("venv")
    return str(venv)


def test_env_cwd_and_sys_path_reach_the_workers(
    interpreter: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FP_CALLER_ONLY", "caller")
    folder = tmp_path / "first"
    folder.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    with freshproc.Pool(
        1, python=interpreter, env={"FP_GIVEN": "given"}, inherit_env=False, cwd=workdir, sys_path=[folder]
    ) as pool:
        assert pool.call_sync("os", "getenv", "FP_GIVEN") == "given"
        assert pool.call_sync("os", "getenv", "FP_CALLER_ONLY") is None
        assert pool.call_sync("os", "getcwd") == str(workdir)
        worker_path = pool.call_sync("sys", "path.copy")
        assert worker_path[0] == str(folder)
        described = pool.describe()
    assert described.env_set == ("FP_GIVEN",)
    assert "FP_CALLER_ONLY" in described.env_removed
    assert described.cwd == str(workdir)
    assert described.sys_path == tuple(worker_path)
    assert described.version == ".".join(map(str, sys.version_info[:3]))
    assert described.caller_version == described.version
    assert described.implementation == sys.implementation.name
    assert described.pickle_protocol == 5
    assert described.pdeathsig is True
    assert described.template_pid is not None
    assert "FP_GIVEN" in str(described)


def test_inherit_env_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FP_CALLER_ONLY", "caller")
    monkeypatch.setenv("FP_OVERRIDDEN", "caller")
    with freshproc.Pool(1, env={"FP_OVERRIDDEN": "pool"}) as pool:
        assert pool.call_sync("os", "getenv", "FP_CALLER_ONLY") == "caller"
        assert pool.call_sync("os", "getenv", "FP_OVERRIDDEN") == "pool"
        described = pool.describe()
    assert described.env_set == ("FP_OVERRIDDEN",)
    assert described.env_removed == ()


def test_describe_reports_another_version(other_python: str) -> None:
    with freshproc.Pool(1, python=other_python) as pool:
        described = pool.describe()
        assert described.version == pool.call_sync("platform", "python_version")
    assert described.version.split(".")[:2] != [str(part) for part in sys.version_info[:2]]
    assert described.caller_version == ".".join(map(str, sys.version_info[:3]))
    assert described.python == other_python


def test_describe_command(other_python: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "freshproc", "describe", "--python", other_python],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"python:          {other_python}" in done.stdout
    assert "sys.path:" in done.stdout


# -- bad interpreter paths ----------------------------------------------------------------------


def _script(path: Path, text: str, *, executable: bool = True) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(0o755)
    return str(path)


def _old_python(tmp_path: Path) -> str:
    """A Python older than 3.10: pyenv's, or a stand-in that answers the probe as one."""
    for minor in (9, 8, 7):
        found = _find_python(minor)
        if found is not None:
            return found
    return _script(tmp_path / "python3.9", "#!/bin/sh\necho 'freshproc-probe 3.9.18 cpython 5 /old/python3.9'\n")


BadPath = Callable[[Path], tuple[str, str]]
BAD_PATHS: dict[str, BadPath] = {
    "missing": lambda tmp: (str(tmp / "no-such-python"), "no such file or folder"),
    "not executable": lambda tmp: (_script(tmp / "notes.txt", "just text\n", executable=False), "not executable"),
    "no exec format": lambda tmp: (_script(tmp / "blob", "just text\n"), "not a Python interpreter"),
    "another program": lambda tmp: (_script(tmp / "python", "#!/bin/sh\necho hello\n"), "not a Python interpreter"),
    "plain folder": lambda tmp: (str(tmp), "neither a virtual environment"),
    "venv without python": lambda tmp: (
        _script(tmp / "pyvenv.cfg", "home = /nowhere\n", executable=False) and str(tmp),
        "virtual environment folder",
    ),
    "too old": lambda tmp: (_old_python(tmp), "freshproc's workers need Python 3.10 or newer"),
    "runtime cannot import": lambda tmp: (
        # The real interpreter, with a ctypes that cannot be imported ahead of the stdlib's.
        _script(tmp / "ctypes" / "__init__.py", "raise ImportError('no ctypes here')\n", executable=False)
        and _script(tmp / "python3", f'#!/bin/sh\nPYTHONPATH={tmp} exec {sys.executable} "$@"\n'),
        "cannot import freshproc's worker runtime",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PATHS))
def test_bad_interpreter_path(case: str, tmp_path: Path, fd_guard: Callable[[], None]) -> None:
    path, what = BAD_PATHS[case](tmp_path)
    started = time.monotonic()
    pool = freshproc.Pool(1, python=path)
    try:
        with pytest.raises(freshproc.WorkerStartupError) as caught:
            pool.call_sync("builtins", "len", ())
    finally:
        pool.close()
    assert time.monotonic() - started < BAD_PATH_DEADLINE
    assert path in str(caught.value)
    assert what in str(caught.value)
    fd_guard()


def test_probe_gives_up_on_a_program_that_never_answers(tmp_path: Path) -> None:
    silent = _script(tmp_path / "python", "#!/bin/sh\nexec sleep 600\n")
    started = time.monotonic()
    with pytest.raises(freshproc.WorkerStartupError, match=r"did not answer within 0\.5 s") as caught:
        _environments.resolve(silent, env=dict(os.environ), cwd=None, timeout=0.5)
    assert silent in str(caught.value)
    assert time.monotonic() - started < BAD_PATH_DEADLINE
