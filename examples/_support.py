"""What the example scripts share: rewriting modules on disk, printing the in-process and
the freshproc side by side, and failing loudly when freshproc does not do as claimed."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path


def write_module(path: Path, source: str) -> None:
    """(Re)write a module. Its mtime moves 2 s past the previous one, so a cached .pyc of
    the previous version (stamped with the mtime in whole seconds) never passes for it."""
    previous = path.stat().st_mtime if path.exists() else 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    stamp = max(path.stat().st_mtime, previous + 2)
    os.utime(path, (stamp, stamp))


def expect(condition: bool, claim: str) -> None:
    """Fail (even under ``python -O``) if freshproc does not do what it claims."""
    if not condition:
        raise AssertionError(f"freshproc claim failed: {claim}")


def report(side: str, action: str, result: object = None, note: str = "") -> None:
    """One line of a side-by-side: who did what, what came back, and a verdict."""
    line = f"{side + ':':<12}{action}"
    if result is not None:
        shown = f"{type(result).__name__}: {result}" if isinstance(result, BaseException) else repr(result)
        line = f"{line:<62} -> {shown}"
    print(f"{line}  {note}".rstrip())


def verdict(value: object, new: object) -> str:
    return "new code" if value == new else "stale!"
