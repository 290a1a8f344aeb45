"""Hot reload: a call made after a file that a worker loaded was changed on disk never runs
in that worker. Edits are file writes; synchronization is by handshakes through FIFOs and
by the calls themselves, never sleeps."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import socket
import subprocess
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import freshproc
from freshproc._ledger import Lease, Ledger, TemplateLost
from freshproc._policy import PoolOptions
from freshproc._reload import Reloader, ReloadSettings
from freshproc._waiters import SyncWaiter
from tests.reload_helpers import (
    COARSE_CLOCK,
    SERVICE,
    EditedModule,
    Folder,
    caller_imports_from,
    check_preload_edits_restart_the_template,
    settle_clock,
)

pytestmark = pytest.mark.timeout(240)

_TARGET = """\
VALUE = {value}


def value(*_args):
    return VALUE
"""


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    return Folder(tmp_path / "reloaded")


@pytest.fixture
def on_caller_path(folder: Folder) -> Iterator[Folder]:
    """The folder on the caller's sys.path too (run() and @isolated ship functions by name)."""
    with caller_imports_from(folder):
        yield folder


# -- zero stale calls, through every entry point --------------------------------------------


def test_a_thousand_edits_each_seen_by_the_next_blocking_call(folder: Folder) -> None:
    target = EditedModule(folder, "target.py", _TARGET)
    target.edit(-1)
    with freshproc.Pool(2, env=folder.env) as pool:
        for value in range(1000):
            target.edit(value)
            target.expect("call", value, pool.call_sync("target", "value"))
    assert target.stale == []


def test_a_fresh_pool_runs_every_edit_and_watches_no_retired_worker_s_files(folder: Folder) -> None:
    # Its workers never serve a second call, so they report nothing after a call: what a
    # call loaded matters to nobody once its worker is gone. The template's files stay
    # watched (an edit of one restarts the template).
    folder.write("target_fresh.py", _TARGET.format(value=-1))
    folder.write(
        "reporting.py",
        """
        import sys

        def reports_calls():
            return sys.modules["freshproc._worker"].settings.report_loaded
        """,
    )
    with freshproc.Pool(1, fresh=True, env=folder.env) as pool:
        for value in range(20):
            folder.write("target_fresh.py", _TARGET.format(value=value))
            assert pool.call_sync("target_fresh", "value") == value
        watched = pool.watched_files()
        reports_calls = pool.call_sync("reporting", "reports_calls")
    assert any(path.endswith(os.path.join("freshproc", "_worker.py")) for path in watched)
    assert os.path.realpath(folder.root / "target_fresh.py") not in watched
    assert reports_calls is False
    with freshproc.Pool(1, env=folder.env) as pool:
        assert pool.call_sync("reporting", "reports_calls") is True  # a warm pool's workers do


async def test_edits_seen_through_call_run_and_map_async(on_caller_path: Folder) -> None:
    folder = on_caller_path
    edited = EditedModule(folder, "target_async.py", _TARGET)
    edited.edit(-1)
    target = importlib.import_module("target_async")
    async with freshproc.Pool(2, env=folder.env) as pool:
        for value in range(100):
            edited.edit(value)
            edited.expect("call", value, await pool.call("target_async", "value"))
            edited.edit(value + 1000)
            # By name: the function travels as a reference.
            edited.expect("run", value + 1000, await pool.run(target.value))
            edited.edit(value + 2000)
            edited.expect("map", [value + 2000] * 3, [item async for item in pool.map(target.value, range(3))])
    assert edited.stale == []


def test_edits_seen_through_run_and_map_blocking(on_caller_path: Folder) -> None:
    folder = on_caller_path
    edited = EditedModule(folder, "target_blocking.py", _TARGET)
    edited.edit(-1)
    target = importlib.import_module("target_blocking")
    with freshproc.Pool(2, env=folder.env) as pool:
        for value in range(100):
            edited.edit(value)
            edited.expect("run", value, pool.run_sync(target.value))
            edited.edit(value + 1000)
            edited.expect("map", [value + 1000] * 3, pool.map_sync(target.value, range(3)))
    assert edited.stale == []


_ISOLATED = """\
import freshproc

VALUE = {value}


@freshproc.isolated
def value():
    return VALUE
"""


async def test_isolated_by_name_picks_up_edits(on_caller_path: Folder) -> None:
    """An @isolated function travels by name: the default pool (reload on) runs the code on
    disk, whatever the caller imported."""
    folder = on_caller_path
    edited = EditedModule(folder, "isolated_target.py", _ISOLATED)
    edited.edit(-1)
    # The default pool's workers find the module on the caller's sys.path, as made now.
    freshproc.default_pool().close()
    decorated = importlib.import_module("isolated_target").value
    # Each worker imports freshproc itself here (the module does): fewer edits than above.
    for value in range(15):
        edited.edit(value)
        edited.expect("aio", value, await decorated.aio())
        edited.edit(value + 100)
        edited.expect("blocking", value + 100, await anyio.to_thread.run_sync(decorated))
    assert edited.stale == []


# -- only the workers that loaded the file --------------------------------------------------

_PINNED = """\
import os

VALUE = {value}


def meet(fifo, writer):
    # Both calls wait here until the other one runs: they are in two workers at once.
    fd = os.open(fifo, os.O_WRONLY if writer else os.O_RDONLY)
    os.close(fd)
    return os.getpid(), VALUE


def value():
    return os.getpid(), VALUE
"""


async def test_an_edit_retires_only_the_worker_that_loaded_the_file(folder: Folder, tmp_path: Path) -> None:
    folder.write("alpha.py", _PINNED.format(value=1), settle=True)
    folder.write("beta.py", _PINNED.format(value=1), settle=True)
    fifo = tmp_path / "meet"
    os.mkfifo(fifo)
    async with freshproc.Pool(2, env=folder.env) as pool:
        results: dict[str, tuple[int, int]] = {}

        async def pinned(name: str, writer: bool) -> None:
            results[name] = await pool.call(name, "meet", str(fifo), writer)

        async with anyio.create_task_group() as group:
            group.start_soon(pinned, "alpha", True)
            group.start_soon(pinned, "beta", False)
        alpha_pid, beta_pid = results["alpha"][0], results["beta"][0]
        assert alpha_pid != beta_pid
        folder.write("alpha.py", _PINNED.format(value=2))
        await pool.call("os", "getpid")  # any call retires the workers that loaded alpha
        alive = pool.worker_pids()
        assert alpha_pid not in alive
        assert beta_pid in alive  # never loaded alpha: kept
        assert (await pool.call("alpha", "value"))[1] == 2


def test_a_save_that_changes_nothing_retires_nothing(folder: Folder) -> None:
    path = folder.write("unchanged.py", _PINNED.format(value=1), settle=True)
    events: list[freshproc.ReloadEvent] = []
    with freshproc.Pool(1, env=folder.env, on_reload=events.append) as pool:
        pid, _ = pool.call_sync("unchanged", "value")
        path.write_text(path.read_text())  # an editor rewriting the same bytes
        assert pool.call_sync("unchanged", "value") == (pid, 1)
    assert events == []


# -- how files change ---------------------------------------------------------------------


def test_atomic_save_delete_and_recreate(folder: Folder) -> None:
    folder.write("saved.py", _TARGET.format(value=0))
    with freshproc.Pool(1, env=folder.env) as pool:
        assert pool.call_sync("saved", "value") == 0
        folder.replace("saved.py", _TARGET.format(value=1))
        assert pool.call_sync("saved", "value") == 1
        (folder.root / "saved.py").unlink()
        with pytest.raises(ModuleNotFoundError):
            pool.call_sync("saved", "value")
        folder.write("saved.py", _TARGET.format(value=2))
        assert pool.call_sync("saved", "value") == 2


def test_package_folder_removed_and_made_again(folder: Folder) -> None:
    """A package replaced whole (its folder removed, then written again): the new files are
    watched too, so a later edit is still seen."""
    folder.write("gone/__init__.py", "VALUE = 1\n")
    with freshproc.Pool(1, env=folder.env) as pool:
        assert pool.call_sync("gone", "__dict__.get", "VALUE") == 1
        shutil.rmtree(folder.root / "gone")
        folder.write("gone/__init__.py", "VALUE = 2\n")
        assert pool.call_sync("gone", "__dict__.get", "VALUE") == 2
        folder.write("gone/__init__.py", "VALUE = 3\n")
        assert pool.call_sync("gone", "__dict__.get", "VALUE") == 3


def test_package_submodule_and_init_edited(folder: Folder) -> None:
    folder.write("pack/__init__.py", "from pack.sub import VALUE as SUB\nTOP = 1\n")
    folder.write("pack/sub.py", "VALUE = 1\n")
    with freshproc.Pool(1, env=folder.env) as pool:
        assert pool.call_sync("pack", "__dict__.get", "SUB") == 1
        folder.write("pack/sub.py", "VALUE = 2\n")
        assert pool.call_sync("pack", "__dict__.get", "SUB") == 2
        folder.write("pack/__init__.py", "from pack.sub import VALUE as SUB\nTOP = 3\n")
        assert pool.call_sync("pack", "__dict__.get", "TOP") == 3


_LAZY = """\
import os


def load_then_wait(loaded_fifo, go_fifo):
    import lazy_inner  # mid-call

    with open(loaded_fifo, "w") as signal:
        signal.write("loaded")
    with open(go_fifo) as go:
        go.read()
    return lazy_inner.VALUE


def current():
    import lazy_inner

    return lazy_inner.VALUE
"""


def test_module_imported_mid_call_and_edited_before_the_call_returns(folder: Folder, tmp_path: Path) -> None:
    """The edit lands after the worker loaded the module but before the pool heard of it:
    the next call must still run the new code."""
    folder.write("lazy_outer.py", _LAZY, settle=True)
    folder.write("lazy_inner.py", "VALUE = 1\n", settle=True)
    loaded, go = tmp_path / "loaded", tmp_path / "go"
    os.mkfifo(loaded)
    os.mkfifo(go)
    with freshproc.Pool(1, env=folder.env) as pool:
        results: list[object] = []
        caller = threading.Thread(
            target=lambda: results.append(pool.call_sync("lazy_outer", "load_then_wait", str(loaded), str(go)))
        )
        caller.start()
        assert loaded.read_text() == "loaded"
        folder.write("lazy_inner.py", "VALUE = 2\n")
        go.write_text("go")
        caller.join()
        assert results == [1]  # it loaded the module before the edit
        assert pool.call_sync("lazy_outer", "current") == 2


# -- C extensions ---------------------------------------------------------------------------

_EXTENSION = """
#include <Python.h>
static PyObject *value(PyObject *self, PyObject *args) {{ return PyLong_FromLong({constant}); }}
static PyMethodDef methods[] = {{{{"value", value, METH_NOARGS, NULL}}, {{NULL, NULL, 0, NULL}}}};
static struct PyModuleDef module = {{PyModuleDef_HEAD_INIT, "reload_ext", NULL, -1, methods}};
PyMODINIT_FUNC PyInit_reload_ext(void) {{ return PyModule_Create(&module); }}
"""

_EXTENSION_USER = """\
import reload_ext


def call_after(loaded_fifo, go_fifo):
    with open(loaded_fifo, "w") as signal:
        signal.write("loaded")
    with open(go_fifo) as go:
        go.read()
    return reload_ext.value()
"""


def build_extension(folder: Path, constant: int) -> Path:
    """Compile the extension straight to its final path (as a rebuild does)."""
    source = folder / f"reload_ext_{constant}.c"
    source.write_text(_EXTENSION.format(constant=constant))
    target = folder / f"reload_ext{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    subprocess.run(["cc", "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(target)], check=True)
    return target


@pytest.fixture
def compiler() -> None:
    if subprocess.run(["cc", "--version"], capture_output=True, check=False).returncode != 0:  # pragma: no cover
        pytest.fail("a C compiler is required for the extension tests")


@pytest.mark.usefixtures("compiler")
def test_c_extension_rebuilt_in_place_runs_the_new_code(folder: Folder) -> None:
    build_extension(folder.root, 1)
    with freshproc.Pool(1, env=folder.env) as pool:
        assert pool.call_sync("reload_ext", "value") == 1
        build_extension(folder.root, 2)
        assert pool.call_sync("reload_ext", "value") == 2
        build_extension(folder.root, 3)
        assert pool.call_sync("reload_ext", "value") == 3


@pytest.mark.usefixtures("compiler")
def test_crash_after_a_shared_object_is_overwritten_names_the_file(folder: Folder, tmp_path: Path) -> None:
    target = build_extension(folder.root, 1)
    folder.write("ext_user.py", _EXTENSION_USER, settle=True)
    settle_clock(target)
    loaded, go = tmp_path / "loaded", tmp_path / "go"
    os.mkfifo(loaded)
    os.mkfifo(go)
    with freshproc.Pool(1, env=folder.env) as pool:
        assert pool.call_sync("ext_user", "reload_ext.value") == 1  # loaded by an earlier call
        errors: list[BaseException] = []

        def run() -> None:
            try:
                pool.call_sync("ext_user", "call_after", str(loaded), str(go))
            except freshproc.WorkerCrashedError as exc:
                errors.append(exc)

        caller = threading.Thread(target=run)
        caller.start()
        assert loaded.read_text() == "loaded"
        # Overwritten in place (truncated): the pages the worker mapped are gone.
        with open(target, "wb"):
            pass
        go.write_text("go")
        caller.join()
        assert len(errors) == 1
        assert str(target) in str(errors[0])
        build_extension(folder.root, 2)
        assert pool.call_sync("ext_user", "reload_ext.value") == 2


# -- the template -------------------------------------------------------------------------


@pytest.mark.parametrize("fresh", [False, True])
def test_preload_edited_restarts_the_template(folder: Folder, fresh: bool) -> None:
    check_preload_edits_restart_the_template(folder, "preloaded", _TARGET, env=folder.env, fresh=fresh)


def test_busy_worker_of_a_replaced_template_finishes_its_call(folder: Folder, tmp_path: Path) -> None:
    folder.write("preloaded_busy.py", _LAZY.replace("lazy_inner", "busy_inner"), settle=True)
    folder.write("busy_inner.py", "VALUE = 1\n", settle=True)
    loaded, go = tmp_path / "loaded", tmp_path / "go"
    os.mkfifo(loaded)
    os.mkfifo(go)
    with freshproc.Pool(2, env=folder.env, preload=["preloaded_busy"]) as pool:
        results: list[object] = []
        caller = threading.Thread(
            target=lambda: results.append(pool.call_sync("preloaded_busy", "load_then_wait", str(loaded), str(go)))
        )
        caller.start()
        assert loaded.read_text() == "loaded"
        folder.write("preloaded_busy.py", _LAZY.replace("lazy_inner", "busy_inner") + "\nEDITED = True\n")
        assert pool.call_sync("preloaded_busy", "__dict__.get", "EDITED") is True  # a new template
        go.write_text("go")
        caller.join()
        assert results == [1]  # the call that was running was left to finish


# -- turning it off, the fallback, diagnostics ----------------------------------------------


def test_reload_false_keeps_workers_stale_until_recycle(folder: Folder) -> None:
    folder.write("kept.py", _TARGET.format(value=1))
    with freshproc.Pool(1, env=folder.env, reload=False) as pool:
        assert pool.call_sync("kept", "value") == 1
        folder.write("kept.py", _TARGET.format(value=2))
        assert pool.call_sync("kept", "value") == 1  # stale, as asked
        assert pool.watched_files() == frozenset()
        pool.recycle()
        assert pool.call_sync("kept", "value") == 2


def test_stat_fallback_gives_zero_stale_calls(folder: Folder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHPROC_RELOAD_WATCHER", "stat")
    polled = EditedModule(folder, "polled.py", _TARGET)
    polled.edit(-1)
    with freshproc.Pool(2, env=folder.env) as pool:
        assert pool._workers._reloader is not None
        assert pool._workers._reloader.mode == "stat"
        for value in range(200):
            polled.edit(value, atomic=bool(value % 2))
            polled.expect("call", value, pool.call_sync("polled", "value"))
    assert polled.stale == []


def test_unknown_watcher_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHPROC_RELOAD_WATCHER", "fanotify")
    with pytest.raises(ValueError, match="FRESHPROC_RELOAD_WATCHER"):
        freshproc.Pool(1)


def test_on_reload_and_log_record_name_the_file_and_workers(folder: Folder, caplog: pytest.LogCaptureFixture) -> None:
    path = folder.write("logged.py", _PINNED.format(value=1), settle=True)
    events: list[freshproc.ReloadEvent] = []
    caplog.set_level(logging.INFO, logger="freshproc")
    with freshproc.Pool(1, env=folder.env, on_reload=events.append) as pool:
        pid, _ = pool.call_sync("logged", "value")
        assert str(path) in pool.watched_files()
        assert not any(name.startswith(sysconfig.get_paths()["stdlib"] + os.sep) for name in pool.watched_files())
        folder.write("logged.py", _PINNED.format(value=2))
        assert pool.call_sync("logged", "value")[1] == 2
    assert events == [freshproc.ReloadEvent((str(path),), (pid,), False)]
    records = [record for record in caplog.records if getattr(record, "event", None) == "reload"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert str(path) in records[0].getMessage()
    assert str(pid) in records[0].getMessage()


def test_a_failing_on_reload_callback_is_logged_and_calls_go_on(
    folder: Folder, caplog: pytest.LogCaptureFixture
) -> None:
    folder.write("callback.py", _TARGET.format(value=1))

    def broken(event: freshproc.ReloadEvent) -> None:
        raise RuntimeError("callback bug")

    with freshproc.Pool(1, env=folder.env, on_reload=broken) as pool:
        assert pool.call_sync("callback", "value") == 1
        folder.write("callback.py", _TARGET.format(value=2))
        assert pool.call_sync("callback", "value") == 2
    assert any("on_reload" in record.getMessage() for record in caplog.records)


def test_on_reload_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_reload"):
        freshproc.Pool(1, on_reload=42)  # type: ignore[arg-type]


def test_inotify_watch_limit_falls_back_to_stat(folder: Folder, caplog: pytest.LogCaptureFixture) -> None:
    """A watch that cannot be added (ENOSPC past the limit) switches to stat, logged once."""
    caplog.set_level(logging.INFO, logger="freshproc")
    reloader = Reloader(ReloadSettings(), "pool-test")
    assert reloader.mode == "inotify"
    reloader.worker_loaded(2, [(0, (__file__,))], {2}, reloader.epoch)  # the first watch
    watcher = reloader._watcher
    assert watcher is not None

    def refuse(folder_path: str) -> None:
        raise OSError(28, "No space left on device")

    watcher.watch = refuse  # type: ignore[method-assign,assignment]
    path = folder.write("limited.py", "X = 1\n", settle=True)
    started = time.clock_gettime_ns(COARSE_CLOCK)
    assert reloader.worker_loaded(1, [(started, (str(path),))], {1}, reloader.epoch) == []
    assert str(reloader.mode) == "stat"
    folder.write("limited.py", "X = 2\n")
    change = reloader.poll()
    assert change is not None
    assert change.pids == frozenset({1})  # not 2: its file did not change
    reloader.close()
    fallbacks = [record for record in caplog.records if getattr(record, "event", None) == "reload_stat_fallback"]
    assert len(fallbacks) == 1


# -- services ----------------------------------------------------------------------------


async def test_service_with_reload_restarts_on_edit_and_others_do_not(
    folder: Folder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="freshproc")
    path = folder.write("versioned.py", SERVICE.format(value=1), settle=True)
    # max_restarts=0: a single restart counted toward the intensity would fail the service.
    reloading = freshproc.ServiceOptions(reload=True, max_restarts=0, env=folder.env)
    plain = freshproc.ServiceOptions(env=folder.env)
    async with (
        freshproc.service("versioned", "Versioned", options=reloading) as service,
        freshproc.service("versioned", "Versioned", options=plain) as unchanged,
    ):
        pid, version, calls = await service.call("version")
        plain_pid, _, _ = await unchanged.call("version")
        assert (version, calls) == (1, 1)
        for edit in (2, 3):
            folder.write("versioned.py", SERVICE.format(value=edit))
            new_pid, version, calls = await service.call("version")
            assert (version, calls) == (edit, 1)  # a new process, a new object
            assert new_pid != pid
            pid = new_pid
        assert service.alive
        assert service.restarts == 2
        assert await unchanged.call("version") == (plain_pid, 1, 2)  # reload off: untouched
    messages = [record.getMessage() for record in caplog.records if "versioned:Versioned" in record.getMessage()]
    assert any(str(path) in message for message in messages)


def test_service_reload_blocking(folder: Folder) -> None:
    versioned = EditedModule(folder, "versioned_sync.py", SERVICE)
    versioned.edit(1)
    options = freshproc.ServiceOptions(reload=True, env=folder.env)
    with freshproc.service("versioned_sync", "Versioned", options=options) as service:
        for value in range(2, 40):
            versioned.edit(value)
            versioned.expect("call", value, service.call_sync("version")[1])
        assert versioned.stale == []


# -- services with max_concurrency (calls through slots) ----------------------------------

_SLOTTED = (
    SERVICE
    + """
    def hold(self, started_fifo, go_fifo):
        with open(started_fifo, "w") as started:
            started.write("x")
        with open(go_fifo) as go:
            go.read(1)
        return os.getpid(), VERSION
"""
)


def _slotted(folder: Folder, *, reload: bool = True) -> freshproc.ServiceOptions:
    # max_restarts=0: a single restart counted toward the intensity would fail the service.
    return freshproc.ServiceOptions(reload=reload, max_concurrency=3, max_restarts=0, env=folder.env)


def test_service_with_max_concurrency_sees_every_edit_blocking(folder: Folder) -> None:
    folder.write("slotted_sync.py", _SLOTTED.format(value=0), settle=True)
    with freshproc.service("slotted_sync", "Versioned", options=_slotted(folder)) as service:
        pids = {service.call_sync("version")[0]}
        seen = []
        for value in range(1, 51):
            folder.write("slotted_sync.py", _SLOTTED.format(value=value))
            pid, version, calls = service.call_sync("version")
            seen.append(version)
            assert calls == 1  # a new object
            pids.add(pid)
        assert seen == list(range(1, 51))
        assert len(pids) == 51  # a new process for every edit
        assert service.alive
        assert service.restarts >= 50


async def test_service_with_max_concurrency_sees_every_edit_async(folder: Folder) -> None:
    folder.write("slotted_async.py", _SLOTTED.format(value=0), settle=True)
    async with freshproc.service("slotted_async", "Versioned", options=_slotted(folder)) as service:
        first_pid, _, _ = await service.call("version")
        for value in range(1, 16):
            folder.write("slotted_async.py", _SLOTTED.format(value=value))
            pid, version, calls = await service.call("version")
            assert (version, calls) == (value, 1)
            assert pid != first_pid
        assert service.alive
        assert service.restarts >= 15


async def test_service_with_max_concurrency_edit_while_a_call_runs(folder: Folder, tmp_path: Path) -> None:
    folder.write("slotted_held.py", _SLOTTED.format(value=1), settle=True)
    started_fifo, go_fifo = tmp_path / "started", tmp_path / "go"
    os.mkfifo(started_fifo)
    os.mkfifo(go_fifo)
    results: dict[str, tuple[int, ...]] = {}
    async with freshproc.service("slotted_held", "Versioned", options=_slotted(folder)) as service:
        old_pid, _, _ = await service.call("version")

        async def held() -> None:
            results["held"] = await service.call("hold", str(started_fifo), str(go_fifo))

        async def after_edit() -> None:
            results["after"] = await service.call("version")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(held)
            await anyio.to_thread.run_sync(started_fifo.read_text)  # the held call runs
            folder.write("slotted_held.py", _SLOTTED.format(value=2))
            tasks.start_soon(after_edit)  # made while the held call still runs
            await anyio.to_thread.run_sync(go_fifo.write_text, "x")
        assert results["held"] == (old_pid, 1)  # it finished normally, on the old code
        new_pid, version, calls = results["after"]
        assert (version, calls) == (2, 1)
        assert new_pid != old_pid
        assert await service.call("version") == (new_pid, 2, 2)
        assert service.alive  # max_restarts=0: the reload restart did not count
        assert service.restarts == 1


_LAZY_SERVICE = """\
import os


class Lazy:
    def hold(self, started_fifo, go_fifo):
        import lazy_dep  # loaded mid-call: reported only with the reply

        with open(started_fifo, "w") as started:
            started.write("x")
        with open(go_fifo) as go:
            go.read(1)
        return os.getpid(), lazy_dep.VALUE

    def dep(self):
        import lazy_dep

        return os.getpid(), lazy_dep.VALUE
"""


async def test_a_process_whose_running_call_may_have_loaded_a_changed_file_takes_no_new_call(
    folder: Folder, tmp_path: Path
) -> None:
    folder.write("slotted_lazy.py", _LAZY_SERVICE)
    folder.write("lazy_dep.py", "VALUE = 1\n", settle=True)
    fifos = [tmp_path / name for name in ("started1", "go1", "started2", "go2")]
    for fifo in fifos:
        os.mkfifo(fifo)
    started1, go1, started2, go2 = (str(fifo) for fifo in fifos)
    options = freshproc.ServiceOptions(reload=True, max_concurrency=3, replicas=2, max_restarts=0, env=folder.env)
    results: dict[str, tuple[int, int]] = {}
    async with freshproc.service("slotted_lazy", "Lazy", options=options) as service:

        async def run(key: str, method: str, *args: str) -> None:
            results[key] = await service.call(method, *args)

        async with anyio.create_task_group() as tasks:
            # Process A imports lazy_dep in a call that stays running.
            tasks.start_soon(run, "a", "hold", started1, go1)
            await anyio.to_thread.run_sync(Path(started1).read_text)
            # Process B (the one with more free slots) imports it too, and says so.
            b_pid, _ = await service.call("dep")
            folder.write("lazy_dep.py", "VALUE = 2\n")
            # B is retired; its replacement C takes a call that stays running.
            tasks.start_soon(run, "c", "hold", started2, go2)
            await anyio.to_thread.run_sync(Path(started2).read_text)
            # A and C have as many free slots; A's running call may hold the old lazy_dep.
            after_pid, value = await service.call("dep")
            assert value == 2
            await anyio.to_thread.run_sync(Path(go1).write_text, "x")
            await anyio.to_thread.run_sync(Path(go2).write_text, "x")
        a_pid, a_value = results["a"]
        c_pid, c_value = results["c"]
        assert (a_value, c_value) == (1, 2)
        assert after_pid == c_pid
        assert len({a_pid, b_pid, c_pid}) == 3
        assert service.alive


async def test_service_with_max_concurrency_preload_edited_while_a_call_runs(folder: Folder, tmp_path: Path) -> None:
    folder.write("slotted_pre.py", _SLOTTED.format(value=1), settle=True)
    started_fifo, go_fifo = tmp_path / "started", tmp_path / "go"
    os.mkfifo(started_fifo)
    os.mkfifo(go_fifo)
    options = freshproc.ServiceOptions(
        reload=True, max_concurrency=3, max_restarts=0, env=folder.env, preload=["slotted_pre"]
    )
    results: dict[str, tuple[int, ...]] = {}
    async with freshproc.service("slotted_pre", "Versioned", options=options) as service:
        old_pid, _, _ = await service.call("version")

        async def held() -> None:
            results["held"] = await service.call("hold", str(started_fifo), str(go_fifo))

        async def after_edit() -> None:
            results["after"] = await service.call("version")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(held)
            await anyio.to_thread.run_sync(started_fifo.read_text)
            folder.write("slotted_pre.py", _SLOTTED.format(value=2))  # the template's own file
            tasks.start_soon(after_edit)
            await anyio.to_thread.run_sync(go_fifo.write_text, "x")
        assert results["held"] == (old_pid, 1)
        new_pid, version, _ = results["after"]
        assert version == 2
        assert new_pid != old_pid
        folder.write("slotted_pre.py", _SLOTTED.format(value=3))
        assert (await service.call("version"))[1] == 3
        assert service.alive


def test_service_with_max_concurrency_and_reload_off_stays_stale(folder: Folder) -> None:
    folder.write("slotted_off.py", _SLOTTED.format(value=1), settle=True)
    with freshproc.service("slotted_off", "Versioned", options=_slotted(folder, reload=False)) as service:
        pid, version, _ = service.call_sync("version")
        assert version == 1
        for value in (2, 3):
            folder.write("slotted_off.py", _SLOTTED.format(value=value))
            assert service.call_sync("version")[:2] == (pid, 1)
        assert service.restarts == 0


# -- the bookkeeping, with plain values ----------------------------------------------------


def _ledger_with_two_workers() -> tuple[Ledger, list[socket.socket]]:
    options = PoolOptions.build(
        workers=2,
        fresh=False,
        max_calls_per_worker=None,
        idle_timeout=None,
        timeout=None,
        preload=(),
        env=None,
        cwd=None,
        max_memory=None,
        memory_limit=None,
        capture_output=False,
        grace_period=1.0,
        max_result_size=None,
        backend="local",
    )
    ledger = Ledger(options, lambda: 0.0)
    ledger.source_started()
    ledger.warm = 2
    channels = [end for pair in (socket.socketpair(), socket.socketpair()) for end in pair]
    ledger.spawned(101, channels[0])
    ledger.spawned(102, channels[2])
    return ledger, channels


def test_retire_stale_retires_idle_now_and_busy_at_check_in() -> None:
    ledger, channels = _ledger_with_two_workers()
    try:
        busy = Lease()
        assert ledger.checkout(busy, None) is None
        assert busy.worker is not None
        busy_pid = busy.worker.pid
        idle_pid = next(pid for pid in ledger.workers if pid != busy_pid)
        effects = ledger.retire_stale([busy_pid, idle_pid], "reload: plugin.py")
        assert (idle_pid, 0.0) in effects.terminate  # idle: at once
        assert busy_pid in ledger.workers  # busy: still running its call
        effects = ledger.release(busy, "ok", calls_ok=1)
        assert busy_pid not in ledger.workers  # never handed another call
        assert (busy_pid, 0.0) in effects.terminate
        assert effects.spawn >= 1  # replacements, forked ahead
    finally:
        for channel in channels:
            channel.close()


def test_replace_source_retires_every_worker_and_sends_waiters_to_a_new_template() -> None:
    ledger, channels = _ledger_with_two_workers()
    try:
        first, second, waiting = Lease(), Lease(), Lease()
        assert ledger.checkout(first, None) is None
        assert ledger.checkout(second, None) is None
        assert ledger.checkout(waiting, SyncWaiter()) is not None
        effects = ledger.replace_source("a preload module changed")
        assert [lease for lease, _ in effects.wake_errors] == [waiting]
        assert isinstance(effects.wake_errors[0][1], TemplateLost)
        assert not ledger.has_source
        assert first.worker is not None
        pid = first.worker.pid
        effects = ledger.release(first, "ok", calls_ok=1)
        assert pid not in ledger.workers
        assert effects.spawn == 0  # nothing is forked until the new template is there
        with pytest.raises(TemplateLost):
            ledger.checkout(Lease(), None)
        ledger.release(second, "ok", calls_ok=1)
    finally:
        for channel in channels:
            channel.close()
