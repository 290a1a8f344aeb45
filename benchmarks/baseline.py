"""The baseline: an older freshproc measured beside the current one in the same run.

``--baseline DIR`` names a source checkout that holds a ``freshproc/`` package folder;
``--baseline-ref REV`` makes a temporary ``git worktree`` of REV (of this repository) and
removes it when the run ends, also when it fails or is interrupted.

Baseline jobs do not put DIR itself on ``sys.path``: its ``benchmarks/`` folder (another
version of this harness, or none) would then shadow the current one in the workers, which
import ``benchmarks.tasks`` to run the tasks. They put first a folder of the run's scratch
space that holds only a ``freshproc`` link to DIR's package (see ``benchmarks.provenance``
for how the jobs check what they import).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from benchmarks.jobs import ROOT

PACKAGE = "freshproc"
#: Seconds a git command may take.
GIT_TIMEOUT = 120.0


class BaselineError(Exception):
    """The baseline cannot be used (no freshproc package there, unknown revision, ...)."""


@dataclass(frozen=True)
class Baseline:
    #: The baseline's source checkout (a temporary worktree for ``--baseline-ref``).
    checkout: Path
    #: The folder baseline jobs put first on ``sys.path``: only a link to its package.
    path_entry: Path
    #: The revision asked for with ``--baseline-ref``, if any.
    ref: str | None
    #: The commit the worktree was made from (``--baseline-ref`` only).
    commit: str | None

    @property
    def package(self) -> Path:
        return self.checkout / PACKAGE


@contextmanager
def prepared(directory: Path | None, ref: str | None, scratch: Path) -> Iterator[Baseline | None]:
    """The baseline the options name (None without one), ready for the jobs while in use.

    :param directory: ``--baseline DIR``.
    :param ref: ``--baseline-ref REV``; its worktree is removed on leaving.
    :param scratch: the run's scratch folder, where the import folder is made.
    :raises BaselineError: if the baseline cannot be used.
    """
    if directory is not None and ref is not None:
        raise BaselineError("give --baseline or --baseline-ref, not both")
    if ref is not None:
        with _worktree(ref) as (checkout, commit):
            yield _import_folder(checkout, ref, commit, scratch)
    elif directory is not None:
        yield _import_folder(directory, None, None, scratch)
    else:
        yield None


def _import_folder(checkout: Path, ref: str | None, commit: str | None, scratch: Path) -> Baseline:
    checkout = checkout.resolve()
    package = checkout / PACKAGE
    if not (package / "__init__.py").is_file():
        raise BaselineError(f"{checkout} holds no {PACKAGE}/ package folder")
    if package.resolve() == (ROOT / PACKAGE).resolve():
        raise BaselineError(f"{checkout} is the current checkout, not a baseline")
    path_entry = scratch / "baseline-import"
    path_entry.mkdir()
    (path_entry / PACKAGE).symlink_to(package, target_is_directory=True)
    return Baseline(checkout, path_entry, ref, commit)


@contextmanager
def _worktree(ref: str) -> Iterator[tuple[Path, str]]:
    """A detached worktree of ``ref`` in a new temporary folder, and its commit."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}", what=f"resolve {ref!r}")
    parent = Path(tempfile.mkdtemp(prefix="freshproc-baseline-"))
    checkout = parent / "checkout"
    try:
        with _sigterm_as_exit():
            _git("worktree", "add", "--detach", "--quiet", str(checkout), commit, what=f"check out {ref}")
            try:
                yield checkout, commit
            finally:
                _remove_worktree(checkout)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _remove_worktree(checkout: Path) -> None:
    try:
        _git("worktree", "remove", "--force", str(checkout), what="remove the baseline worktree")
    except BaselineError:
        # Remove the files, then let git forget the worktree whose folder is gone.
        shutil.rmtree(checkout, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True, timeout=GIT_TIMEOUT, check=False)


def _git(*args: str, what: str) -> str:
    try:
        completed = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BaselineError(f"cannot {what}: {exc}") from exc
    if completed.returncode != 0:
        detail = completed.stderr.strip() or f"git exited with status {completed.returncode}"
        raise BaselineError(f"cannot {what}: {detail}")
    return completed.stdout.strip()


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While inside, SIGTERM raises SystemExit, so that ``finally`` blocks still clean up."""

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
