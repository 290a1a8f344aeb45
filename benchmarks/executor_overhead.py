"""What the Executor and progress reporting cost, next to the pool's own API and to
``ProcessPoolExecutor``: ``python -m benchmarks.executor_overhead [--rounds N]``.

Every pool has 2 workers and is warm before timing. Each figure is the median of the rounds.
Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import statistics
import time
from collections.abc import Callable

import freshproc

SEQUENTIAL_CALLS = 200
BATCH_CALLS = 2000
MAP_ITEMS = 20000


def _median_seconds(rounds: int, run: Callable[[], object]) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _sequential(submit: Callable[[], object]) -> Callable[[], object]:
    def run() -> None:
        for _ in range(SEQUENTIAL_CALLS):
            submit()

    return run


def _with_bar(run: Callable[[], object]) -> object:
    with contextlib.redirect_stderr(io.StringIO()):
        return run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    rows: list[tuple[str, str, float]] = []

    with (
        freshproc.Pool(2) as pool,
        freshproc.Executor(max_workers=2) as executor,
        concurrent.futures.ProcessPoolExecutor(max_workers=2) as stdlib,
    ):
        for warm in (pool.run_sync, executor.submit, stdlib.submit):
            warm(abs, -1)
        executor.submit(abs, -1).result()
        stdlib.submit(abs, -1).result()

        per_call = "µs per call, one at a time"
        rows.append(("Pool.run_sync", per_call, _median_seconds(rounds, _sequential(lambda: pool.run_sync(abs, -1)))))
        rows.append(
            (
                "Executor.submit().result()",
                per_call,
                _median_seconds(rounds, _sequential(lambda: executor.submit(abs, -1).result())),
            )
        )
        rows.append(
            (
                "ProcessPoolExecutor.submit().result()",
                per_call,
                _median_seconds(rounds, _sequential(lambda: stdlib.submit(abs, -1).result())),
            )
        )
        rows = [(name, unit, seconds / SEQUENTIAL_CALLS * 1e6) for name, unit, seconds in rows]

        per_batch = f"ms for {BATCH_CALLS} submits, then every result"

        def submit_all(submit: Callable[..., concurrent.futures.Future[int]]) -> Callable[[], object]:
            return lambda: [future.result() for future in [submit(abs, -n) for n in range(BATCH_CALLS)]]

        for name, submit in (("Executor.submit", executor.submit), ("ProcessPoolExecutor.submit", stdlib.submit)):
            rows.append((name, per_batch, _median_seconds(rounds, submit_all(submit)) * 1e3))

        per_map = f"ms for a map of {MAP_ITEMS} items"
        items = range(-MAP_ITEMS, 0)
        maps: list[tuple[str, Callable[[], object]]] = [
            ("Pool.map_sync", lambda: pool.map_sync(abs, items)),
            ("Pool.map_sync, progress=callable", lambda: pool.map_sync(abs, items, progress=lambda done, total: None)),
            (
                "Pool.map_sync, progress=True (tqdm, to a buffer)",
                lambda: _with_bar(lambda: pool.map_sync(abs, items, progress=True)),
            ),
            ("Executor.map, chunksize=1", lambda: list(executor.map(abs, items))),
            ("Executor.map, chunksize=256", lambda: list(executor.map(abs, items, chunksize=256))),
            (
                "Executor.map, chunksize=256, progress=callable",
                lambda: list(executor.map(abs, items, chunksize=256, progress=lambda done, total: None)),
            ),
            ("ProcessPoolExecutor.map, chunksize=1", lambda: list(stdlib.map(abs, items))),
            ("ProcessPoolExecutor.map, chunksize=256", lambda: list(stdlib.map(abs, items, chunksize=256))),
        ]
        for name, run in maps:
            rows.append((name, per_map, _median_seconds(rounds, run) * 1e3))

    print("| what | unit | median |")
    print("|---|---|---|")
    for name, unit, value in rows:
        print(f"| {name} | {unit} | {value:,.1f} |")


if __name__ == "__main__":
    main()
