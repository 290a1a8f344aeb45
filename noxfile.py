"""Development sessions: ``nox -l`` lists them."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|venv"
nox.options.error_on_missing_interpreters = False  # skip, with a message, what a machine lacks
nox.options.download_python = "never"

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install(session: nox.Session, *groups: str, extras: str = "") -> None:
    """Install the package (editable) and dependency groups from pyproject.toml."""
    session.install("-e", f".{extras}")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (asyncio, trio and blocking) on each installed Python 3.10-3.13.

    The docs group is installed too: the suite runs every sample of the docs and builds the
    site in strict mode (``tests/test_docs.py``)."""
    _install(session, "test", "docs", extras="[dask]")  # dask: so that tests/test_dask.py runs
    session.run("python", "-m", "pytest", *(session.posargs or ["-q"]))


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (mkdocs build --strict: a broken link or reference fails)."""
    _install(session, "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(default=False)
def stress(session: nox.Session) -> None:
    """Run the full fault campaign (2,000 calls, 10% faults) and print its table."""
    _install(session, "test")
    session.run("python", "-m", "tests.stress.campaign", "--calls", "2000", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples, benchmarks and this file."""
    _install(session, "typecheck", extras="[dask]")
    session.run("mypy")


@nox.session
def examples(session: nox.Session) -> None:
    """Run every example script under a deadline."""
    _install(session, extras="[examples,dask]")
    session.run("python", "examples/run_all.py")


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The main demo: what in-process reloading gets wrong, and freshproc getting it right."""
    _install(session, extras="[examples]")
    session.run("python", "examples/demo.py")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmark freshproc against its peers and the raw limits (writes markdown and JSON).

    Before/after figures for a change: ``nox -s bench -- --baseline-ref main`` also runs
    freshproc at ``main`` in the same run (or ``--baseline DIR`` for a checkout).
    """
    _install(session, "bench", extras="[dask]")
    session.run("python", "-m", "benchmarks.run", *session.posargs)
