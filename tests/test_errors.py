"""The exception hierarchy: shapes, and every class survives pickling."""

from __future__ import annotations

import pickle
import types

import pytest

import freshproc
from freshproc import _errors

EXAMPLES: list[BaseException] = [
    freshproc.FreshprocError("base"),
    freshproc.WorkerError("worker", pid=1, exitcode=2),
    freshproc.WorkerStartupError("startup", pid=3, exitcode=1),
    freshproc.WorkerCrashedError("crashed", pid=4, exitcode=-11, signal=11, stage="running"),
    freshproc.CallTimeoutError("timeout"),
    freshproc.SerializationError("pickle", direction="result", stage="dump"),
    freshproc.ProtocolError("frame"),
    freshproc.PoolClosedError("closed"),
    freshproc.RemoteError("pkg.Error", "message", "Traceback ..."),
    freshproc.RemoteError("pkg.Error", "message", "Traceback ...", module="pkg", reason="module pkg is not imported"),
    _errors.remote_error_class((ValueError,))("pkg.Bad", "bad", "Traceback ...", module="pkg", reason="why"),
    _errors.remote_error_class((FileNotFoundError, KeyError))("pkg.Gone", "gone", "Traceback ...", module="pkg"),
    freshproc.RemoteTraceback("Traceback ..."),
    _errors.ServiceFailedError("service gave up after 5 restarts"),
    _errors.ServiceClosedError("service closed"),
]


@pytest.mark.parametrize("exc", EXAMPLES, ids=lambda exc: type(exc).__name__)
def test_every_exception_pickles_with_its_attributes(exc: BaseException) -> None:
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert vars(copy) == vars(exc)


def test_the_examples_cover_every_exception_class() -> None:
    """A new exception class in _errors fails here until it has an example above."""
    defined = {
        value
        for value in vars(_errors).values()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == _errors.__name__
    }
    # Generated RemoteError subclasses are made on demand: not in the module's namespace.
    assert defined <= {type(example) for example in EXAMPLES}


def test_hierarchy() -> None:
    assert issubclass(freshproc.CallTimeoutError, TimeoutError)
    assert issubclass(freshproc.WorkerCrashedError, freshproc.WorkerError)
    assert issubclass(freshproc.WorkerStartupError, freshproc.WorkerError)
    assert issubclass(_errors.ServiceClosedError, freshproc.PoolClosedError)
    assert issubclass(_errors.ServiceFailedError, freshproc.FreshprocError)
    for cls in (
        freshproc.SerializationError,
        freshproc.ProtocolError,
        freshproc.PoolClosedError,
        freshproc.RemoteError,
    ):
        assert issubclass(cls, freshproc.FreshprocError)


def test_all_matches_the_real_exports() -> None:
    """__all__ lists exactly the public names the facade defines. Public submodules
    (``freshproc.pytest_plugin``, loaded by pytest itself) and the helpers pytest's
    assertion rewriting adds to a plugin's package (``@py_builtins``) are not names it
    defines."""
    public = {
        name
        for name, value in vars(freshproc).items()
        if not name.startswith(("_", "@")) and not isinstance(value, types.ModuleType)
    } | {"__version__"}
    assert set(freshproc.__all__) == public
    for name in freshproc.__all__:
        assert getattr(freshproc, name) is not None
