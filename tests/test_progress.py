"""``progress=`` on ``Pool.map``, ``Pool.map_sync`` and ``Executor.map``: a callable sees
counts that only grow and end at the total; ``True`` draws a tqdm bar; without tqdm the
map runs plainly and a one-line hint is logged once."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

import anyio
import pytest

import freshproc
from freshproc import _progress


class Counts:
    """A progress callable that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.threads: set[int] = set()

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))
        self.threads.add(threading.get_ident())

    def assert_complete(self, total: int | None, items: int) -> None:
        done = [count for count, _ in self.calls]
        assert done == sorted(done), f"counts went back: {done}"
        assert len(set(done)) == len(done), f"a count was repeated: {done}"
        assert done[-1] == items
        assert {reported for _, reported in self.calls} == {total}


@pytest.fixture
def no_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm cannot be imported, and the once-only hint has not been given yet."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(_progress, "_hinted", False)


def test_map_sync_reports_counts_up_to_the_total(pool: freshproc.Pool) -> None:
    counts = Counts()
    assert pool.map_sync(abs, range(-1000, 0), progress=counts) == list(range(1000, 0, -1))
    counts.assert_complete(total=1000, items=1000)


def test_map_sync_of_an_input_without_length_reports_no_total(pool: freshproc.Pool) -> None:
    counts = Counts()
    assert pool.map_sync(abs, (n for n in range(-10, 0)), progress=counts) == list(range(10, 0, -1))
    counts.assert_complete(total=None, items=10)


def test_the_total_is_the_shortest_input(pool: freshproc.Pool) -> None:
    counts = Counts()
    assert pool.map_sync(pow, range(5), [2, 2, 2]) == [0, 1, 4]
    pool.map_sync(pow, range(5), [2, 2, 2], progress=counts)
    counts.assert_complete(total=3, items=3)


async def test_async_map_reports_counts_up_to_the_total(pool: freshproc.Pool) -> None:
    counts = Counts()
    results = [value async for value in pool.map(abs, range(-300, 0), progress=counts)]
    assert results == list(range(300, 0, -1))
    counts.assert_complete(total=300, items=300)


def test_failed_items_count_as_done(pool: freshproc.Pool) -> None:
    """An item that raised has finished: it is counted (its error is raised when its
    turn comes, here last, after every item has been counted)."""
    counts = Counts()
    with pytest.raises(ZeroDivisionError):
        pool.map_sync(divmod, [1, 1, 1], [1, 1, 0], progress=counts)
    counts.assert_complete(total=3, items=3)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_executor_map_reports_counts_up_to_the_total(chunksize: int) -> None:
    counts = Counts()
    with freshproc.Executor(max_workers=2) as executor:
        results = list(executor.map(abs, range(-10, 0), chunksize=chunksize, progress=counts))
    assert results == list(range(10, 0, -1))
    counts.assert_complete(total=10, items=10)


def test_a_raising_callable_is_logged_and_the_map_goes_on(
    pool: freshproc.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def broken(done: int, total: int | None) -> None:
        calls.append(done)
        raise RuntimeError("progress display broke")

    with caplog.at_level(logging.ERROR, logger="freshproc"):
        assert pool.map_sync(abs, range(-600, 0), progress=broken) == list(range(600, 0, -1))
    assert len(calls) == 1
    assert "the progress callable raised" in caplog.text
    assert "progress display broke" in caplog.text


def test_progress_must_be_a_bool_or_a_callable(pool: freshproc.Pool) -> None:
    with pytest.raises(TypeError, match="progress must be True, False or a callable"):
        pool.map_sync(abs, [1], progress="yes")  # type: ignore[arg-type]


def test_off_makes_no_progress_object() -> None:
    """progress=False costs a None check per batch: there is nothing to report to."""
    assert _progress.start(False, 10, abs) is None


def test_true_draws_a_tqdm_bar(pool: freshproc.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    """The bar goes to stderr, named after the function, and ends at the total."""
    assert pool.map_sync(abs, range(-1000, 0), progress=True) == list(range(1000, 0, -1))
    err = capsys.readouterr().err
    assert "abs" in err
    assert "1000/1000" in err
    assert "100%" in err


def test_true_on_executor_map_draws_a_tqdm_bar(capsys: pytest.CaptureFixture[str]) -> None:
    with freshproc.Executor(max_workers=2) as executor:
        assert list(executor.map(abs, range(-20, 0), chunksize=5, progress=True)) == list(range(20, 0, -1))
    err = capsys.readouterr().err
    assert "20/20" in err


def test_tqdm_auto_is_used(pool: freshproc.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar comes from ``tqdm.auto`` (a notebook widget in Jupyter, text elsewhere)."""
    import tqdm.auto

    made: list[dict[str, object]] = []
    updates: list[int] = []
    closed = threading.Event()

    class FakeBar:
        def __init__(self, **kwargs: object) -> None:
            made.append(kwargs)

        def update(self, n: int = 1) -> None:
            updates.append(n)

        def close(self) -> None:
            closed.set()

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    pool.map_sync(abs, range(700), progress=True)
    assert made[0]["total"] == 700
    assert sum(updates) == 700
    assert closed.is_set()


def test_without_tqdm_the_map_runs_plainly_with_one_hint(
    pool: freshproc.Pool, no_tqdm: None, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.WARNING, logger="freshproc"):
        assert pool.map_sync(abs, range(-5, 0), progress=True) == [5, 4, 3, 2, 1]
        assert pool.map_sync(abs, range(-5, 0), progress=True) == [5, 4, 3, 2, 1]
    hints = [record for record in caplog.records if "freshproc[progress]" in record.getMessage()]
    assert len(hints) == 1
    assert "\n" not in hints[0].getMessage()
    assert "5/5" not in capsys.readouterr().err


def test_a_callable_works_without_tqdm(pool: freshproc.Pool, no_tqdm: None) -> None:
    counts = Counts()
    pool.map_sync(abs, range(5), progress=counts)
    counts.assert_complete(total=5, items=5)


def test_leaving_a_map_early_closes_the_bar(pool: freshproc.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm.auto

    closed = threading.Event()

    class FakeBar:
        def __init__(self, **kwargs: object) -> None:
            pass

        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            closed.set()

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)

    async def first() -> int:
        async for value in pool.map(abs, _endless(), progress=True):
            return int(value)
        raise AssertionError("the map yielded nothing")

    assert anyio.run(first) == 0
    assert closed.is_set()


def _endless() -> Iterator[int]:
    n = 0
    while True:
        yield n
        n += 1
