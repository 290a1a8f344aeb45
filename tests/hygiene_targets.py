"""Targets for the process-hygiene tests (``test_process_hygiene.py``), run in workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.handshake import signal_started, wait_go

# Children a call started and left running: referenced here, so that no Popen finalizer
# warns about them or reaps them behind the test's back.
_children: list[subprocess.Popen[bytes]] = []


def start_session_child() -> int:
    """Starts ``sleep 600`` in a session of its own (out of reach of the worker's process
    group) and returns its pid, leaving it running."""
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    _children.append(child)
    return child.pid


def start_daemon_then_wait(spec: str) -> tuple[int, int]:
    """Starts a daemon the classic way (its parent, a shell in a session of its own,
    exits at once, so the daemon is an orphan), signals the test, waits for its go, then
    returns (daemon pid, worker pid)."""
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $!"], stdout=subprocess.PIPE, start_new_session=True
    )
    output, _ = shell.communicate()
    signal_started(spec)
    wait_go(spec)
    return int(output), os.getpid()


def parent_and_state(pid: int) -> tuple[int, str]:
    """(parent pid, state letter) of process ``pid``, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        stat = file.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]), fields[0].decode()


def interrupt_a_child() -> int | None:
    """Starts ``sleep 600``, sends it SIGINT, and returns how it ended."""
    child = subprocess.Popen(["sleep", "600"])
    child.send_signal(signal.SIGINT)
    return child.wait(timeout=30)


def interpreter_flags() -> tuple[int, list[str], dict[str, str | bool], int, int, int, int]:
    """The interpreter options this process runs with."""
    flags = sys.flags
    return (
        flags.optimize,
        sys.warnoptions,
        sys._xoptions,
        flags.isolated,
        flags.ignore_environment,
        flags.no_user_site,
        flags.dev_mode,
    )


def echo(value: object) -> object:
    return value
