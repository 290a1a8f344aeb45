"""Regression tests for defects found in review: each failed before its fix."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

import freshproc
from tests import faults
from tests.conftest import ModuleFolder
from tests.handshake import Handshake

pytestmark = pytest.mark.timeout(60)


def many_buffers(count: int) -> list[bytearray]:
    return [bytearray(300_000) for _ in range(count)]


def count_arrays(arrays: list[object]) -> int:
    return len(arrays)


def test_more_buffers_than_a_frame_can_carry_travel_both_ways() -> None:
    """70 large buffers: the ones past the frame's segment limit go in band."""
    numpy = pytest.importorskip("numpy")
    arrays = [numpy.zeros(40_000) for _ in range(70)]
    with freshproc.Pool(1) as pool:
        assert pool.run_sync(count_arrays, arrays) == 70
        returned = pool.run_sync(many_buffers, 70)
        assert len(returned) == 70
        assert pool.stats().workers_crashed == 0


def test_high_numbered_descriptors_work() -> None:
    """Channels above descriptor 1023 (a busy server) are waited on with poll()."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("cannot raise the descriptor limit above 1200 here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with freshproc.Pool(1, timeout=30) as pool:
            assert pool.call_sync("tests.faults", "ok", 3) == 3
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("option", ["timeout", "idle_timeout", "grace_period"])
def test_infinite_seconds_are_refused(option: str) -> None:
    with pytest.raises(ValueError, match="finite"):
        freshproc.Pool(1, **{option: float("inf")})  # type: ignore[arg-type]


def test_a_lost_template_is_replaced_for_the_next_call() -> None:
    with freshproc.Pool(1) as pool:
        assert pool.call_sync("tests.faults", "ok", 1) == 1
        template = pool.template_pid
        assert template is not None
        doomed = [psutil.Process(pid) for pid in [template, *pool.worker_pids()]]
        os.kill(template, signal.SIGKILL)
        _, alive = psutil.wait_procs(doomed, timeout=10)  # its workers die with it
        assert not alive
        assert pool.call_sync("tests.faults", "ok", 2) == 2
        assert pool.template_pid not in (None, template)


def test_an_exception_of_the_targets_module_does_not_import_it_in_the_caller(modules: ModuleFolder) -> None:
    modules.write(
        "plug.py",
        """
        class PlugError(Exception):
            pass

        def run():
            raise PlugError("plug broke")
        """,
    )
    with freshproc.Pool(1, env=modules.env) as pool, pytest.raises(freshproc.RemoteError, match="plug broke") as info:
        pool.call_sync("plug", "run")
    assert info.value.type_name == "plug.PlugError"
    assert "plug" not in sys.modules


def test_an_exception_of_an_imported_module_keeps_its_type() -> None:
    with freshproc.Pool(1) as pool, pytest.raises(ValueError, match="kept"):
        pool.call_sync("tests.faults", "raise_error", "kept")


def test_max_memory_does_not_count_a_result_the_worker_holds_for_the_caller() -> None:
    pytest.importorskip("numpy")
    with freshproc.Pool(1, max_memory="250MB") as pool:
        pids = {pool.run_sync(_pid_after_big_result, 300_000_000)[0] for _ in range(3)}
        assert len(pids) == 1
        assert pool.stats().workers_recycled == 0


def _pid_after_big_result(size: int) -> tuple[int, object]:
    """A result the size of ``size`` (held by the worker until the caller copies it)."""
    import numpy

    return os.getpid(), numpy.ones(size // 8)


def test_a_worker_handed_to_a_waiter_on_a_closed_loop_goes_to_the_next_caller() -> None:
    """A task waits for the only worker on an event loop that then closes: when the
    worker is released, it must not be lost with that waiter."""
    with freshproc.Pool(1) as pool:
        handshake = Handshake()
        holder = threading.Thread(target=pool.run_sync, args=(faults.handshake_then_pid, handshake.spec))
        holder.start()
        handshake.wait_started()
        loop = asyncio.new_event_loop()
        task = loop.create_task(pool.call("tests.faults", "ok", 1))
        while not pool._workers._ledger.waiting:  # run the loop until the task waits for a worker
            loop.run_until_complete(asyncio.sleep(0))
        loop.close()  # the waiting task is abandoned with its loop
        handshake.release()
        holder.join()
        assert pool.call_sync("tests.faults", "ok", 2) == 2
        del task


_FORK_SCRIPT = """
import os, sys, freshproc
assert freshproc.call_sync("tests.faults", "ok", 1) == 1
pool = freshproc.default_pool()
template = pool.template_pid
pid = os.fork()
if pid == 0:
    try:
        pool.call_sync("tests.faults", "ok", 1)
    except freshproc.PoolClosedError as exc:
        assert "forked" in str(exc), exc
    else:
        raise AssertionError("an inherited pool served the child")
    # The child's own default pool works, and its exit closes only its own.
    assert freshproc.call_sync("tests.faults", "ok", 5) == 5
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert pool.template_pid == template
assert freshproc.call_sync("tests.faults", "ok", 7) == 7
print("parent ok")
"""


def test_a_forked_child_disowns_the_parents_pools() -> None:
    root = str(Path(__file__).parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_FORK_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "parent ok" in result.stdout


def test_an_isolated_function_pickled_as_an_argument_keeps_its_module() -> None:
    from tests import isolated_targets

    with freshproc.Pool(1) as pool:
        assert pool.run_sync(_uses_module_globals, isolated_targets.worker_pid_plus)


def _uses_module_globals(function: object) -> bool:
    import tests.isolated_targets as module

    return getattr(function, "__globals__", None) is vars(module)
