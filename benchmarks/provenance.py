"""Which freshproc a job measures: the job and its workers must both use the one it was given.

A baseline job puts the baseline's package first on ``sys.path``, but an editable install,
the job's working directory (the current checkout) or a worker's own imports could still
bring in the current freshproc, and the "before" figures would silently be "after" ones.
So the job checks its own modules, and each freshproc contender asks a worker for its.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from benchmarks.tasks import freshproc_modules

PACKAGE = "freshproc"


class WrongFreshprocError(RuntimeError):
    """The job or a worker imported another freshproc than the job was given: the run stops."""


def put_first(path_entry: str) -> None:
    """Make ``path_entry`` the first place this process (and its workers) import from."""
    if PACKAGE in sys.modules:
        raise WrongFreshprocError(f"{PACKAGE} was imported before {path_entry} was put first on sys.path")
    sys.path.insert(0, path_entry)


def check(modules: Mapping[str, str | None], package_dir: Path, where: str) -> None:
    """Raise unless every module in ``modules`` (as ``freshproc_modules`` reports them) comes
    from ``package_dir``; ``where`` names the process in the message."""
    expected = package_dir.resolve()
    wrong = {
        name: file
        for name, file in modules.items()
        if file is None or not Path(file).resolve().is_relative_to(expected)
    }
    if wrong or len(modules) < 2:  # besides "(import)", at least one module must be loaded
        listed = (
            ", ".join(f"{name} from {file}" for name, file in sorted(wrong.items())) or "no freshproc module loaded"
        )
        raise WrongFreshprocError(f"the {where} must use {PACKAGE} from {expected}, but: {listed}")


def check_job(package_dir: Path) -> None:
    """Check this (job) process: see ``check``."""
    check(freshproc_modules(PACKAGE), package_dir, "job")


def imported_package() -> Path:
    """The folder of the freshproc this process imported."""
    module = sys.modules.get(PACKAGE)
    if module is None or module.__file__ is None:
        raise WrongFreshprocError(f"{PACKAGE} is not imported")
    return Path(module.__file__).resolve().parent
