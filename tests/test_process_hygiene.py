"""Process hygiene: programs a call starts get normal signals, the template's command line
carries no configuration, no descriptor of freshproc's leaks into a program the caller
starts, and the processes name themselves. Deterministic: handshakes, files and process
exits, never sleeps."""

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
from tests.conftest import Invoke, ModuleFolder, open_fds
from tests.handshake import Handshake

pytestmark = pytest.mark.timeout(60)


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
