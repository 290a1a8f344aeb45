"""Targets for the process-hygiene tests (``test_process_hygiene.py``), run in workers."""

from __future__ import annotations

import signal
import subprocess
import sys


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
