"""The exception hierarchy: shapes, and every class survives pickling."""

from __future__ import annotations

import pickle

import pytest

import freshproc

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
    freshproc.RemoteTraceback("Traceback ..."),
]


@pytest.mark.parametrize("exc", EXAMPLES, ids=lambda exc: type(exc).__name__)
def test_every_exception_pickles_with_its_attributes(exc: BaseException) -> None:
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert vars(copy) == vars(exc)


def test_hierarchy() -> None:
    assert issubclass(freshproc.CallTimeoutError, TimeoutError)
    assert issubclass(freshproc.WorkerCrashedError, freshproc.WorkerError)
    assert issubclass(freshproc.WorkerStartupError, freshproc.WorkerError)
    for cls in (
        freshproc.SerializationError,
        freshproc.ProtocolError,
        freshproc.PoolClosedError,
        freshproc.RemoteError,
    ):
        assert issubclass(cls, freshproc.FreshprocError)


def test_all_matches_the_real_exports() -> None:
    """__all__ lists exactly the public names the facade defines."""
    public = {name for name in vars(freshproc) if not name.startswith("_")}
    assert set(freshproc.__all__) == public
    for name in freshproc.__all__:
        assert getattr(freshproc, name) is not None
