"""NumPy in a worker: ``await freshproc.call("numpy", "dot", a, b)``.

The problem
    NumPy can be imported only once per process. Unloading it (deleting every ``numpy``
    entry from ``sys.modules``) and importing it again fails with ``ImportError: cannot
    load module more than once per process``, and ``importlib.reload(numpy)`` warns that
    it "can in some cases result in small but subtle issues". A process that wants a new
    NumPy (an upgraded install, a rebuilt extension, pristine global state) has to be a new
    process. The in-process attempt below runs in a scratch interpreter, so that this
    script keeps a working NumPy.

The freshproc way
    ``await freshproc.call("numpy", "dot", a, b)`` imports NumPy in a worker of the default
    pool, calls ``numpy.dot`` there and sends the result back. After ``pool.recycle()`` the
    next call imports NumPy afresh, in a new process.

Needs NumPy (``pip install 'freshproc[examples]'``); without it the script says so and
exits 0.

Run it: ``python examples/numpy_dot.py``
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import unittest

import anyio
from _support import expect, report

import freshproc

TITLE = "numpy: an extension that loads only once per process"

UNLOAD_AND_REIMPORT = """
    import sys

    import numpy

    for name in [name for name in sys.modules if name == "numpy" or name.startswith("numpy.")]:
        del sys.modules[name]
    try:
        import numpy
    except ImportError as exc:
        print(f"ImportError: {exc}")
    else:
        print(f"imported again: numpy {numpy.__version__}")
"""


def require_numpy() -> None:
    if importlib.util.find_spec("numpy") is None:
        raise unittest.SkipTest("numpy is not installed (pip install 'freshproc[examples]')")


def in_process() -> str:
    scratch = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(UNLOAD_AND_REIMPORT)], capture_output=True, text=True, check=False
    )
    outcome = scratch.stdout.strip() or f"the interpreter died (exit status {scratch.returncode})"
    failed = outcome.startswith("ImportError: ")
    shown: object = ImportError(outcome.removeprefix("ImportError: ")) if failed else outcome
    report("in-process", "(a scratch interpreter) import numpy; unload numpy.*")
    report("in-process", "  import numpy again", shown, "stuck!" if failed else "")
    return "re-import -> ImportError: stuck!" if failed else f"re-import -> {outcome}"


async def with_freshproc() -> str:
    import numpy as np

    a = np.arange(6).reshape(2, 3)
    b = np.arange(6).reshape(3, 2)
    product = await freshproc.call("numpy", "dot", a, b)
    expect(isinstance(product, np.ndarray) and np.array_equal(product, a @ b), "numpy.dot in a worker is right")
    assert isinstance(product, np.ndarray)
    report("freshproc", "await freshproc.call('numpy', 'dot', a, b)", product.tolist(), "== a @ b")

    async with freshproc.Pool(1) as pool:
        loaded = await pool.call("sys", "modules.__contains__", "numpy")
        report("freshproc", "numpy loaded in a new worker", loaded)
        expect(loaded is False, "a worker starts without numpy")
        first_pid = await pool.call("os", "getpid")
        await pool.call("numpy", "dot", a, b)
        loaded = await pool.call("sys", "modules.__contains__", "numpy")
        report("freshproc", "numpy loaded after pool.call('numpy', 'dot', a, b)", loaded)
        expect(loaded is True, "the worker imported numpy for the call")

        pool.recycle()
        loaded = await pool.call("sys", "modules.__contains__", "numpy")
        report("freshproc", "pool.recycle(); numpy loaded in the new worker", loaded)
        expect(loaded is False, "a recycled worker takes numpy with it")
        again = await pool.call("numpy", "dot", a, b)
        expect(isinstance(again, np.ndarray) and np.array_equal(again, a @ b), "numpy imports afresh after recycle")
        assert isinstance(again, np.ndarray)
        report("freshproc", "pool.call('numpy', 'dot', a, b)", again.tolist(), "numpy imported anew")
        second_pid = await pool.call("os", "getpid")
        expect(first_pid != second_pid, "recycle replaced the worker")
    return "recycle -> numpy imported anew: works"


def compare() -> tuple[str, str]:
    """Run both sides; return one line about each. Raises AssertionError if freshproc fails,
    unittest.SkipTest if numpy is not installed."""
    require_numpy()
    return in_process(), anyio.run(with_freshproc)


def main() -> None:
    print(TITLE)
    try:
        compare()
    except unittest.SkipTest as skip:
        print(f"SKIPPED: {skip}")


if __name__ == "__main__":
    main()
