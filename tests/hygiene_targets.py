"""Targets for the process-hygiene tests (``test_process_hygiene.py``), run in workers."""

from __future__ import annotations


def echo(value: object) -> object:
    return value
