"""Targets for the process-hygiene tests (``test_process_hygiene.py``), run in workers."""

from __future__ import annotations

import signal
import subprocess


def interrupt_a_child() -> int | None:
    """Starts ``sleep 600``, sends it SIGINT, and returns how it ended."""
    child = subprocess.Popen(["sleep", "600"])
    child.send_signal(signal.SIGINT)
    return child.wait(timeout=30)


def echo(value: object) -> object:
    return value
