"""The freshproc tour: what in-process reloading gets wrong, and freshproc getting it right.

Python cannot really unload a module. ``del sys.modules[...]``, ``importlib.reload`` and
swapping ``sys.modules`` all leave old code reachable, and extension modules cannot be
loaded twice at all. freshproc runs calls in pooled worker processes forked from a clean
template; recycling a worker takes every module it loaded with it, and the caller's
``sys.modules`` is never touched.

Each step below runs one of the example scripts next to this file: first the in-process
attempt, then the freshproc way. A summary table follows. The script exits non-zero if
freshproc fails any of its claims.

Run it: ``nox -s demo`` or ``python examples/demo.py``
"""

from __future__ import annotations

import sys
import time
import traceback
import unittest
from typing import TYPE_CHECKING

import math_reload
import numpy_dot
import rebuild_c_extension
import replace_sys_modules
import stale_references
import unload_package

if TYPE_CHECKING:
    from collections.abc import Callable

#: (short name, the example's title, its compare())
STEPS: list[tuple[str, str, Callable[[], tuple[str, str]]]] = [
    ("stale references", stale_references.TITLE, stale_references.compare),
    ("sys.modules swap", replace_sys_modules.TITLE, replace_sys_modules.compare),
    ("package unload", unload_package.TITLE, unload_package.compare),
    ("math reload", math_reload.TITLE, math_reload.compare),
    ("C extension rebuild", rebuild_c_extension.TITLE, rebuild_c_extension.compare),
    ("numpy re-import", numpy_dot.TITLE, numpy_dot.compare),
]


def main() -> int:
    print("\n\n".join(__doc__.split("\n\n")[:2]))
    started = time.monotonic()
    rows: list[tuple[str, str, str, str]] = []
    for number, (name, title, compare) in enumerate(STEPS, 1):
        print(f"\n[{number}/{len(STEPS)}] {title}")
        try:
            in_process, with_freshproc = compare()
        except unittest.SkipTest as skip:
            print(f"(skipped: {skip})")
            rows.append((name, "-", f"skipped: {skip}", "skip"))
        except Exception as exc:  # noqa: BLE001 - reported in the table, and by the exit status
            traceback.print_exc()
            rows.append((name, "-", f"{type(exc).__name__}: {exc}", "FAIL"))
        else:
            rows.append((name, in_process, with_freshproc, "ok"))

    header = ("problem", "in-process", "freshproc", "claim")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(4)]
    rule = "  ".join("-" * width for width in widths)
    print(f"\nSummary ({time.monotonic() - started:.1f} s)\n{rule}")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if row is header:
            print(rule)
    print(rule)

    failed = [row[0] for row in rows if row[3] == "FAIL"]
    if failed:
        print(f"freshproc failed: {', '.join(failed)}")
        return 1
    skipped = sum(row[3] == "skip" for row in rows)
    print(f"freshproc kept every claim ({len(rows) - skipped} checked, {skipped} skipped).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
