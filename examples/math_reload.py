"""``importlib.reload`` cannot repair an extension module.

The problem
    Some code deletes (or monkeypatches) an attribute of an extension module: here
    ``del math.cos``. Reloading does not bring it back: ``importlib.reload`` does not
    initialise an extension module again (PEP 489: reloading one has no effect beyond
    re-setting its import-related attributes), so it hands back the same, damaged module
    and ``math.cos`` stays gone for every later user in the process. The in-process side
    below restores ``math.cos`` by hand afterwards, which only works because it kept a
    reference to the original function.

The freshproc way
    Run the damaging code in a worker of a ``Pool(1, fresh=True)``: every call runs in a
    process that ran no earlier call, forked from a clean template, so the next call
    sees an intact ``math`` whatever the previous one did.

Run it: ``python examples/math_reload.py``
"""

from __future__ import annotations

import importlib
import math

from _support import expect, report

import freshproc

TITLE = "math reload: reload does not re-initialise an extension module"


def vandalise_math(name: str) -> bool:
    """Delete ``math.<name>`` (``del math.cos``), reload ``math``; say whether it came back."""
    delattr(math, name)
    importlib.reload(math)
    return hasattr(math, name)


def in_process() -> str:
    original_cos = math.cos
    try:
        came_back = vandalise_math("cos")
        report("in-process", "del math.cos; importlib.reload(math)")
        report("in-process", "  hasattr(math, 'cos')", came_back, "still gone!" if not came_back else "")
        try:
            value: object = math.cos(0)
        except AttributeError as exc:
            value = exc
        broken = isinstance(value, AttributeError)
        report("in-process", "  math.cos(0)", value, "broken for the whole process" if broken else "")
        return "math.cos(0) -> AttributeError: gone!" if broken else f"math.cos(0) -> {value!r}"
    finally:
        math.cos = original_cos
        report("in-process", "(math.cos put back by hand from a saved reference)")


def with_freshproc() -> str:
    with freshproc.Pool(1, fresh=True) as pool:
        came_back = pool.run_sync(vandalise_math, "cos")
        report("freshproc", "pool.run_sync(vandalise_math, 'cos')  # del, reload", came_back, "gone in that worker")
        value = pool.call_sync("math", "cos", 0)
        report("freshproc", "pool.call_sync('math', 'cos', 0)  # the next call", value, "intact: a fresh worker")
        expect(value == 1.0, "the next call runs in a fresh worker, where math.cos works")
    expect(math.cos(0) == 1.0, "the caller's math is untouched")
    return "math.cos(0) -> 1.0 next call: intact"


def compare() -> tuple[str, str]:
    """Run both sides; return one line about each. Raises AssertionError if freshproc fails."""
    return in_process(), with_freshproc()


if __name__ == "__main__":
    print(TITLE)
    compare()
