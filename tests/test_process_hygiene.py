"""Process hygiene: a failed fork does not bring the pool down, nothing a call starts outlives
its worker, the caller's interpreter flags reach the workers, programs a call starts get
normal signals, the template's command line carries no configuration, no descriptor of
freshproc's leaks into a program the caller starts, and the processes name themselves.
Deterministic: handshakes, files and process exits, never sleeps."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

import freshproc
from freshproc._ledger import SPAWN_RETRIES, Lease, Ledger
from freshproc._policy import PoolOptions
from freshproc._protocol import SpawnFailed, decode, encode
from freshproc._waiters import SyncWaiter
from tests.conftest import Invoke, ModuleFolder, open_fds
from tests.handshake import Handshake

pytestmark = pytest.mark.timeout(60)

_ROOT = str(Path(__file__).resolve().parent.parent)


def _gone_within(pid: int, *, seconds: float) -> bool:
    """Wait for a process that is not our child to end (a zombie counts as ended)."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    _, alive = psutil.wait_procs([process], timeout=seconds)
    return all(proc.status() == psutil.STATUS_ZOMBIE for proc in alive if proc.is_running())


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _template_pid(pool: freshproc.Pool) -> int:
    pid = pool.template_pid
    assert pid is not None
    return pid


# -- 1. a failed fork does not kill the pool -----------------------------------------------------


def test_spawn_failed_round_trips() -> None:
    """The template's report of a failed fork survives the wire."""
    message = SpawnFailed(3, "[Errno 11] Resource temporarily unavailable")
    decoded = decode(encode(message))
    assert type(decoded) is SpawnFailed
    assert decoded == message


def test_fork_backoff_doubles_then_gives_up() -> None:
    """After a failed fork the pool asks again 10, 20, 40, 80 and 160 ms later; the next
    failure gives up: the caller waiting for a new worker is failed (and the next caller
    starts over)."""
    now = [100.0]
    ledger = Ledger(_options(workers=1), lambda: now[0])
    ledger.source_started()
    lease = Lease()
    assert ledger.checkout(lease, SyncWaiter()) is not None  # queued; a spawn is asked for
    delays = []
    for _ in range(SPAWN_RETRIES):
        effects = ledger.spawn_failed(1, "[Errno 11] Resource temporarily unavailable")
        assert not effects.wake_errors
        assert ledger.spawn_retry_at is not None
        delays.append(round(ledger.spawn_retry_at - now[0], 6))
        now[0] = ledger.spawn_retry_at
        assert ledger.timers_due().spawn == 1  # the retry
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.16]
    effects = ledger.spawn_failed(1, "[Errno 11] Resource temporarily unavailable")
    assert [waiting for waiting, _ in effects.wake_errors] == [lease]
    assert "cannot fork a worker: [Errno 11]" in str(effects.wake_errors[0][1])
    assert (ledger.spawn_failures, ledger.spawn_retry_at) == (0, None)


def _options(workers: int) -> PoolOptions:
    pool = freshproc.Pool(workers)  # never started: closing it ends nothing
    pool.close()
    return pool.options


def _fork_failures_pool(workers: int, **env: str) -> freshproc.Pool:
    return freshproc.Pool(workers, preload=["tests.fork_failures"], env=env)


def test_a_few_failed_forks_are_retried(invoke: Invoke) -> None:
    """Three failed forks in a row: the template carries on, the pool tries again after a
    backoff, and the call is served by the fourth fork."""
    with _fork_failures_pool(1, FRESHPROC_TEST_FAILED_FORKS="3") as pool:
        template = _template_pid(pool)
        assert invoke(pool, "tests.hygiene_targets", "echo", 7) == 7
        assert pool.template_pid == template
        assert pool.stats().workers_started == 1


def test_forks_that_keep_failing_fail_the_waiting_call_and_the_pool_recovers(invoke: Invoke) -> None:
    """Ten failed forks in a row: the first call gets a WorkerStartupError naming the fork
    error once the retries are used up (one fork and five retries); the template stays up,
    and the next call is served once a fork works again (after four more failures)."""
    with _fork_failures_pool(1, FRESHPROC_TEST_FAILED_FORKS="10") as pool:
        template = _template_pid(pool)
        with pytest.raises(freshproc.WorkerStartupError, match=r"cannot fork a worker: .*Resource temporarily"):
            invoke(pool, "tests.hygiene_targets", "echo", 1)
        assert pool.template_pid == template
        assert invoke(pool, "tests.hygiene_targets", "echo", 2) == 2
        assert pool.template_pid == template


def test_failing_forks_leave_running_calls_alone(invoke: Invoke, tmp_path: Path) -> None:
    """While every fork fails, a call already running on a worker finishes normally, a call
    that needs a new worker gets WorkerStartupError, and once forks work again the pool
    forks workers and serves."""
    marker = tmp_path / "forks-fail"
    with _fork_failures_pool(2, FRESHPROC_TEST_FORK_MARKER=str(marker)) as pool:
        template = _template_pid(pool)
        running = Handshake()
        results: list[object] = []
        thread = threading.Thread(
            target=lambda: results.append(pool.call_sync("tests.faults", "handshake_then_pid", running.spec))
        )
        thread.start()
        running.wait_started()
        marker.touch()
        with pytest.raises(freshproc.WorkerStartupError, match="cannot fork a worker"):
            invoke(pool, "tests.hygiene_targets", "echo", 1)
        running.release()
        thread.join()
        (first_worker,) = results
        assert isinstance(first_worker, int)

        marker.unlink()
        # Two calls at once need two workers: the second is forked now that forks work.
        holding = Handshake()
        held: list[object] = []
        thread = threading.Thread(
            target=lambda: held.append(pool.call_sync("tests.faults", "handshake_then_pid", holding.spec))
        )
        thread.start()
        holding.wait_started()
        other = invoke(pool, "tests.faults", "worker_pid")
        holding.release()
        thread.join()
        assert other != held[0]
        assert first_worker in (other, held[0])
        assert pool.stats().workers_started == 2
        assert pool.template_pid == template


# -- 2. nothing a call starts outlives its worker ------------------------------------------------


def test_session_grandchild_ends_with_a_timed_out_worker(invoke: Invoke) -> None:
    """A process a call started in a session of its own (which the worker's process group
    does not reach) is killed once a policy timeout has ended its worker."""
    with freshproc.Pool(1, timeout=1.0, grace_period=0.1) as pool:
        grandchild = invoke(pool, "tests.hygiene_targets", "start_session_child")
        assert isinstance(grandchild, int)
        with pytest.raises(freshproc.CallTimeoutError):
            invoke(pool, "tests.faults", "hang")  # on the same, only, worker
        assert _gone_within(grandchild, seconds=30)


def test_session_grandchild_ends_when_the_pool_closes(invoke: Invoke) -> None:
    """close() leaves no process a call started in a session of its own."""
    pool = freshproc.Pool(1)
    grandchild = invoke(pool, "tests.hygiene_targets", "start_session_child")
    assert isinstance(grandchild, int)
    assert psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
    pool.close()
    assert _gone_within(grandchild, seconds=30)


def test_orphans_of_a_live_worker_are_left_alone() -> None:
    """A daemon a call starts (an orphan: its parent exited) belongs to its worker while
    that worker lives: it survives another worker's death, which makes the template end
    the orphans it holds, and it ends with the pool."""
    with freshproc.Pool(2) as pool:
        handshake = Handshake()
        results: list[tuple[int, int]] = []
        thread = threading.Thread(
            target=lambda: results.append(
                pool.call_sync("tests.hygiene_targets", "start_daemon_then_wait", handshake.spec)
            )
        )
        thread.start()
        handshake.wait_started()
        # Another worker dies, and the template has reaped it before the call hears why.
        with pytest.raises(freshproc.WorkerCrashedError, match="SIGSEGV"):
            pool.call_sync("tests.faults", "segfault")
        handshake.release()
        thread.join()
        ((daemon, worker),) = results
        parent, state = pool.call_sync("tests.hygiene_targets", "parent_and_state", daemon)
        assert parent == worker
        assert state != "Z"
        assert worker in pool.worker_pids()
    assert _gone_within(daemon, seconds=30)


# -- 3. the caller's interpreter flags reach the workers -----------------------------------------

_FLAGS_SCRIPT = """
import sys
sys.path.insert(0, {root!r})  # -I leaves the current folder off sys.path
import freshproc
with freshproc.Pool(1, env={{"PYTHONPATH": {modules!r}}}) as pool:
    worker = pool.call_sync("tests.hygiene_targets", "interpreter_flags")
    found = pool.call_sync("on_pythonpath", "where")
flags = sys.flags
caller = (
    flags.optimize, sys.warnoptions, sys._xoptions, flags.isolated, flags.ignore_environment,
    flags.no_user_site, flags.dev_mode,
)
# Not assert: -O strips it.
if worker != caller or found != "on the pool's PYTHONPATH":
    sys.exit(f"worker {{worker}} != caller {{caller}}, or {{found!r}}")
print("same flags", caller)
"""


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["-O"], id="-O"),
        pytest.param(["-OO"], id="-OO"),
        pytest.param(["-W", "error::DeprecationWarning"], id="-W"),
        pytest.param(["-X", "dev"], id="-X dev"),
        pytest.param(["-X", "faulthandler", "-X", "custom=1"], id="-X options"),
        pytest.param(["-I"], id="-I"),
        pytest.param(["-E", "-s"], id="-E -s"),
    ],
)
def test_interpreter_flags_reach_the_workers(flags: list[str], modules: ModuleFolder) -> None:
    """A worker runs with the caller's -O, -W, -X, -I, -E and -s, and under -I or -E
    (which ignore PYTHONPATH) a PYTHONPATH given in the pool's env still reaches sys.path."""
    modules.write("on_pythonpath.py", 'def where():\n    return "on the pool\'s PYTHONPATH"\n')
    script = _FLAGS_SCRIPT.format(root=_ROOT, modules=str(modules.root))
    completed = subprocess.run(
        [sys.executable, *flags, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("same flags")


# -- 4. programs a call starts get normal signal dispositions ------------------------------------


def _signal_masks(pid: int) -> tuple[int, int]:
    """(ignored, caught) signal masks of process ``pid``."""
    masks = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("SigIgn", "SigCgt"):
                masks[key] = int(value, 16)
    return masks["SigIgn"], masks["SigCgt"]


def test_a_program_a_call_starts_can_be_interrupted(invoke: Invoke) -> None:
    """Workers and the template catch SIGINT with a handler that does nothing, not SIG_IGN,
    so a program a call starts has SIGINT at its default (exec resets handlers, not an
    ignored signal): SIGINT ends it."""
    with freshproc.Pool(1) as pool:
        assert invoke(pool, "tests.hygiene_targets", "interrupt_a_child") == -signal.SIGINT
        worker = invoke(pool, "tests.faults", "worker_pid")
        assert isinstance(worker, int)
        sigint = 1 << (signal.SIGINT - 1)
        for pid in (worker, _template_pid(pool)):
            ignored, caught = _signal_masks(pid)
            assert not ignored & sigint
            assert caught & sigint
        os.kill(worker, signal.SIGINT)  # still harmless to the worker itself
        assert invoke(pool, "tests.faults", "worker_pid") == worker


# -- 5. the template's command line --------------------------------------------------------------


def test_template_command_line_carries_no_configuration(modules: ModuleFolder) -> None:
    """The template's argv is a short, readable bootstrap and three descriptor numbers: the
    configuration (sys.path, preload, the probe of the caller's memory) comes on a
    descriptor that the template has closed once read."""
    modules.write("distinctive_preload_name.py", "")
    with freshproc.Pool(1, preload=["distinctive_preload_name"], env=modules.env) as pool:
        template = _template_pid(pool)
        cmdline = Path(f"/proc/{template}/cmdline").read_bytes()
        argv = cmdline.rstrip(b"\0").split(b"\0")
        assert len(cmdline) < 300, cmdline
        assert b"distinctive_preload_name" not in cmdline
        assert os.fsencode(modules.root) not in cmdline
        assert not re.search(rb"[0-9a-f]{32}", cmdline)
        assert all(arg.isdigit() for arg in argv[-3:])
        links = [os.readlink(f"/proc/{template}/fd/{fd}") for fd in os.listdir(f"/proc/{template}/fd")]
        assert not [link for link in links if "config" in link]
        assert pool.call_sync("distinctive_preload_name", "__name__.upper") == "DISTINCTIVE_PRELOAD_NAME"


# -- 6. no descriptor of freshproc's reaches a program the caller starts -------------------------


@pytest.mark.parametrize("direct_copy", ["1", "0"], ids=["by-address", "memfd"])
def test_callers_descriptors_are_close_on_exec(direct_copy: str, fd_guard: Callable[[], None]) -> None:
    """With live workers, after calls whose large numpy arguments and results travel out of
    band (by address or in memfds), every descriptor the pool holds in the caller (the
    control channel, each worker's channel) is close-on-exec: a program started with
    close_fds=False inherits none of them."""
    holding = Handshake()
    array = np.arange(1 << 20, dtype=np.float64)
    before = {fd for fd in open_fds() if _is_open(fd)}
    with freshproc.Pool(2, env={"FRESHPROC_DIRECT_COPY": direct_copy}) as pool:
        thread = threading.Thread(target=pool.call_sync, args=("tests.faults", "handshake_then_pid", holding.spec))
        thread.start()
        holding.wait_started()
        echoed = pool.call_sync("tests.hygiene_targets", "echo", array)  # on a second worker
        holding.release()
        thread.join()
        assert np.array_equal(echoed, array)
        assert len(pool.worker_pids()) == 2
        held = {fd for fd in open_fds() - before if _is_open(fd)}  # not listdir's own
        assert len(held) >= 3, held  # the control channel and two worker channels at least
        assert not [fd for fd in held if os.get_inheritable(fd)]
        listing = subprocess.run(
            [sys.executable, "-c", "import json, os; print(json.dumps(sorted(map(int, os.listdir('/proc/self/fd')))))"],
            close_fds=False,
            capture_output=True,
            text=True,
            check=True,
        )
        inherited = set(json.loads(listing.stdout))
        assert not inherited & held
    del echoed  # a result mapped from a memfd holds it
    holding.close()
    fd_guard()


# -- 7. processes name themselves ----------------------------------------------------------------


def test_template_and_workers_name_themselves(invoke: Invoke) -> None:
    """The template is freshproc-tmpl and each worker freshproc-work (in ps, top, psutil)."""
    with freshproc.Pool(1) as pool:
        worker = invoke(pool, "tests.faults", "worker_pid")
        assert isinstance(worker, int)
        assert psutil.Process(_template_pid(pool)).name() == "freshproc-tmpl"
        assert psutil.Process(worker).name() == "freshproc-work"
