"""The functions the benchmarks run in workers.

Kept tiny and free of heavy imports: a worker that imports this module pays only for what
the task itself needs (``numpy_dot`` imports numpy inside, on purpose).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: a worker that imports this module need not load typing
if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def echo(value: int) -> int:
    """The trivial call: return the argument."""
    return value


def numpy_dot(size: int) -> float:
    """Import numpy (cold in a fresh process unless preloaded) and dot two small arrays."""
    import numpy as np  # the import is what this task measures

    left = np.arange(size, dtype=np.float64)
    return float(np.dot(left, left))


def nbytes(array: npt.NDArray[np.float64]) -> int:
    """Receive an array, send back only its size (one-way transfer)."""
    return int(array.nbytes)


def identity(array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Receive an array and send it back (round trip)."""
    return array


def freshproc_modules(package: str) -> dict[str, str | None]:
    """Where this process got ``package``: the file of each of its loaded modules, and under
    ``"(import)"`` where a new ``import`` of it would come from (found, not imported)."""
    import importlib.util
    import sys

    found = {
        name: getattr(module, "__file__", None)
        for name, module in list(sys.modules.items())
        if name == package or name.startswith(f"{package}.")
    }
    spec = importlib.util.find_spec(package)
    found["(import)"] = spec.origin if spec is not None else None
    return found


class Echo:
    """The object the service workloads keep in another process (a freshproc service, a
    manager, a Pyro5 or RPyC server): a trivial method, and where its process got freshproc."""

    def echo(self, value: int) -> int:
        return value

    def freshproc_modules(self, package: str) -> dict[str, str | None]:
        return freshproc_modules(package)
