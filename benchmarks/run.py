"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--out DIR] [--baseline DIR | --baseline-ref REV]``.

Every applicable (contender, workload) pair is a job run in its own fresh interpreter.
Rounds are interleaved (round 1 of every job, then round 2, ...) and the order of the
contenders rotates from round to round, so machine noise spreads evenly over them. The
markdown table goes to stdout and ``DIR/benchmarks.md``, the raw data to
``DIR/benchmarks.json``; progress goes to stderr.

With a baseline (an older freshproc: ``--baseline DIR`` or ``--baseline-ref REV``, see
``benchmarks.baseline``), every freshproc contender also runs as "<label> [baseline]" with
the baseline's freshproc, interleaved with the rest, and the report adds current ÷ baseline.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.baseline import Baseline, BaselineError, prepared
from benchmarks.contenders import ENTRIES, Entry
from benchmarks.jobs import ROOT, JobResult, JobSpec, Outcome, launch
from benchmarks.workloads import WORKLOADS, Plan, Workload

DEFAULT_OUT = ROOT / "benchmarks" / "results"
FULL_ROUNDS = 5
QUICK_ROUNDS = 1
#: Seconds one job may take before it is ended and reported as failed.
FULL_JOB_TIMEOUT = 300.0
QUICK_JOB_TIMEOUT = 60.0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (small sizes, fewer contenders, 1 round)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write benchmarks.md and .json")
    parser.add_argument("--rounds", type=int, help="rounds per job (default: 5, or 1 with --quick)")
    parser.add_argument("--workloads", help="comma-separated workload keys (default: all)")
    parser.add_argument("--contenders", help="comma-separated contender names (default: all)")
    old = parser.add_mutually_exclusive_group()
    old.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run every freshproc contender with the freshproc of this source checkout (holds freshproc/)",
    )
    old.add_argument(
        "--baseline-ref",
        metavar="REV",
        help="as --baseline, with a temporary git worktree of REV (removed at the end)",
    )
    return parser.parse_args(argv)


def _selected(names: str | None, known: Sequence[str], what: str) -> set[str] | None:
    if names is None:
        return None
    chosen = {name.strip() for name in names.split(",") if name.strip()}
    unknown = chosen - set(known)
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    return chosen


def _rotated(items: list[Entry], by: int) -> list[Entry]:
    if not items:
        return items
    shift = by % len(items)
    return items[shift:] + items[:shift]


@dataclass
class Schedule:
    """What a run does: the workloads, who takes part in each, and how much."""

    workloads: list[Workload]
    plans: dict[str, Plan]
    taking_part: dict[str, list[Entry]]
    rounds: int
    timeout: float
    #: workload key -> contender name -> results so far
    outcomes: dict[str, dict[str, Outcome]] = field(default_factory=dict)
    #: Where baseline rows import freshproc from (set once the baseline is prepared).
    baseline: Baseline | None = None

    def pending(self) -> int:
        return sum(
            self.rounds
            for workload in self.workloads
            for outcome in self.outcomes[workload.key].values()
            if outcome.failure is None
        )


def _schedule(args: argparse.Namespace) -> Schedule:
    keys = _selected(args.workloads, [workload.key for workload in WORKLOADS], "workloads")
    names = _selected(args.contenders, [entry.name for entry in ENTRIES], "contenders")
    workloads = [workload for workload in WORKLOADS if keys is None or workload.key in keys]
    entries = [entry for entry in ENTRIES if (names is None or entry.name in names) and (entry.quick or not args.quick)]
    if args.baseline is not None or args.baseline_ref is not None:
        # Each baseline row right after its current row.
        entries = [
            row
            for entry in entries
            for row in ([entry, entry.as_baseline()] if entry.family == "freshproc" else [entry])
        ]
    schedule = Schedule(
        workloads=workloads,
        plans={workload.key: workload.plan(args.quick) for workload in workloads},
        taking_part={
            workload.key: [entry for entry in entries if workload.key in entry.workloads] for workload in workloads
        },
        rounds=args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS),
        timeout=QUICK_JOB_TIMEOUT if args.quick else FULL_JOB_TIMEOUT,
    )
    for workload in workloads:
        outcomes = schedule.outcomes[workload.key] = {}
        for entry in schedule.taking_part[workload.key]:
            # Known n/a (not installed, too old a Python) before anything runs.
            outcomes[entry.name] = Outcome(failure=entry.unavailable(workload))
    return schedule


def _run(schedule: Schedule, scratch: Path) -> None:
    """Run every round of every job, interleaved; a job that failed is not run again."""
    total, done = schedule.pending(), 0
    for round_index in range(schedule.rounds):
        for workload in schedule.workloads:
            for entry in _rotated(schedule.taking_part[workload.key], round_index):
                outcome = schedule.outcomes[workload.key][entry.name]
                if outcome.failure is not None:
                    continue
                done += 1
                stem = scratch / str(done)
                spec = JobSpec(
                    workload.key,
                    entry.contender,
                    schedule.plans[workload.key],
                    f"{stem}.json",
                    _baseline_path(schedule, entry),
                )
                started = time.perf_counter()
                result = launch(spec, schedule.timeout, stem.with_suffix(".log"))
                if result.abort is not None:
                    _abort(entry, result, stem.with_suffix(".log"))
                outcome.add(result, round_index)
                status = "ok" if outcome.failure is None else f"FAILED: {outcome.failure}"
                print(
                    f"[{done:>3}/{total}] round {round_index + 1}/{schedule.rounds}  {workload.key:<3} "
                    f"{entry.name:<28} {time.perf_counter() - started:6.1f} s  {status}",
                    file=sys.stderr,
                    flush=True,
                )


def _baseline_path(schedule: Schedule, entry: Entry) -> str | None:
    if entry.baseline_of is None:
        return None
    assert schedule.baseline is not None, "baseline rows without a baseline"
    return str(schedule.baseline.path_entry)


def _abort(entry: Entry, result: JobResult, log_path: Path) -> None:
    """Stop the run: a job measured another freshproc than the one it was given."""
    log = log_path.read_text(errors="replace").strip().splitlines()
    print("\n".join(log[-20:]), file=sys.stderr)
    raise SystemExit(f"stopped: {entry.label} did not measure the freshproc it was given: {result.abort}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    schedule = _schedule(args)
    started = time.perf_counter()
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="freshproc-bench-")))
        try:
            schedule.baseline = stack.enter_context(prepared(args.baseline, args.baseline_ref, scratch))
        except BaselineError as exc:
            raise SystemExit(f"baseline: {exc}") from exc
        revision, digest = _revision(ROOT), _source_digest(ROOT)
        old = schedule.baseline
        _compile_bytecode([ROOT / "freshproc", ROOT / "benchmarks", *([old.package] if old else [])])
        old_revision, old_digest = (_revision(old.checkout), _source_digest(old.checkout)) if old else ("", "")
        _run(schedule, scratch)
        meta = _meta(args, argv, schedule.rounds, time.perf_counter() - started)
        meta["freshproc_revision"] = revision
        meta["freshproc_changed_during_run"] = digest != _source_digest(ROOT)
        meta["baseline"] = (
            {
                "checkout": str(old.checkout),
                "ref": old.ref,
                "commit": old.commit,
                "revision": old_revision,
                "changed_during_run": old_digest != _source_digest(old.checkout),
            }
            if old
            else None
        )
    sections = [
        report.build_section(
            workload, schedule.plans[workload.key], schedule.taking_part[workload.key], schedule.outcomes[workload.key]
        )
        for workload in schedule.workloads
    ]
    text = report.markdown(sections, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.md").write_text(text)
    (args.out / "benchmarks.json").write_text(json.dumps(report.to_json(sections, meta), indent=2) + "\n")
    print(text)
    return 0


def _compile_bytecode(folders: list[Path]) -> None:
    """Write the bytecode caches of the sources measured, as an installed package has.

    With PYTHONDONTWRITEBYTECODE set (or a read-only checkout) nothing writes them at
    import, and every fresh worker, every template start and every job would compile
    ``benchmarks.tasks`` and the freshproc runtime from source: a cost of the checkout,
    not of the library, and one the peers (which fork a process that imported them
    already) never pay. ``compileall`` writes them whatever the flag says.
    """
    for folder in folders:
        compileall.compile_dir(folder, quiet=1)


def _meta(args: argparse.Namespace, argv: Sequence[str] | None, rounds: int, wall: float) -> dict[str, Any]:
    arguments = list(sys.argv[1:] if argv is None else argv)
    return {
        "command": shlex.join(["python", "-m", "benchmarks.run", *arguments]),
        "quick": args.quick,
        "rounds": rounds,
        "wall_seconds": wall,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _revision(root: Path) -> str:
    """The checkout's commit (with -dirty for local changes), or "unknown"."""
    if not (root / ".git").exists():  # not a checkout of its own (a copy, or inside another one)
        return "unknown"
    try:
        completed = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return completed.stdout.strip() or "unknown"


def _source_digest(root: Path) -> str:
    """A digest of freshproc's source files: tells whether they changed during the run."""
    digest = hashlib.sha256()
    for path in sorted((root / "freshproc").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
