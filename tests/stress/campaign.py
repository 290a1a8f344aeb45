"""The fault campaign: thousands of calls over one ``freshproc.Pool(4)`` at concurrency 64,
a tenth of them faulting in every way a call can, chosen at random from a seed. Hostile
workers count among the faults (``hostile_kinds``: sizes they do not have, memfds they
could still change, messages and output past every limit; ``--no-hostile`` leaves them out).

It checks that every healthy call got its own value back, every faulted call raised its
own specific error, nothing hung (a global deadline), no descriptor or process leaked,
the workers ended by faults are gone, ``pool.stats()`` adds up, the pool still serves at
the end, and hostile workers left the caller's memory bounded. It prints a table per API
and exits non-zero if any check fails::

    python -m tests.stress.campaign --calls 2000 --seed 7            # every API and phase
    python -m tests.stress.campaign --calls 2000 --seed 7 --api trio --phase none
    python -m tests.stress.campaign --seed 7 --api none --phase interrupts

After the APIs come four phases, each with a pool of its own (``--phase``, repeatable):
``interrupts`` (SIGINT every 1-3 ms during blocking calls on the main thread, see
``interrupts``), ``fork-failure`` (the template cannot fork during a burst, see
``fork_failure``), ``pipelined`` (the asyncio campaign over ``Pool(pipeline=2)``: calls
queued behind the ones that fault, hostile workers left out, see ``plan.fault_kinds``) and ``service`` (the plan's calls on
a service with replicas, see ``service_phase``).

The blocking API (``pool.call_sync`` from 64 threads) runs every fault but cancellation,
which it does not have. Run it from the repository root: the workers import ``tests.*``
through the caller's sys.path. The plan (which call faults, and how) depends only on the
seed; nothing waits on a sleep: kills and cancellations happen once the target reports
that it started.

This module is the command line. The rest, one job per module: ``plan`` (the fault kinds
and the seeded plan), ``targets`` (what each call runs), ``outcomes`` (what a call did,
and whether that was right), ``context`` (what a run's calls share, and its pool),
``processes`` (descriptors and processes, leaks), ``async_api`` and ``blocking_api``
(running a plan through an API), ``checks`` (what a run observed, and its checks),
``report`` (the table).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

import anyio

from tests.stress.async_api import run_async
from tests.stress.blocking_api import run_blocking
from tests.stress.fork_failure import run_fork_failure
from tests.stress.interrupts import run_interrupts
from tests.stress.plan import Config
from tests.stress.report import Report
from tests.stress.service_phase import run_service

APIS = ("asyncio", "trio", "blocking")
#: Runs beside the three APIs' campaigns, each with a pool of its own.
PHASES = ("interrupts", "fork-failure", "pipelined", "service")


def run_api(config: Config, api: str) -> Report:
    """One campaign through ``api``, or one phase (on the calling thread, which must be
    the main thread for "interrupts")."""
    if api == "blocking":
        return run_blocking(config)
    if api == "interrupts":
        return run_interrupts(config, watchdog=True)
    if api == "fork-failure":
        return run_fork_failure(config)
    if api == "pipelined":
        return anyio.run(run_async, config, api, backend="asyncio")
    if api == "service":
        return anyio.run(run_service, config, "asyncio", backend="asyncio")
    return anyio.run(run_async, config, api, backend=api)


def _parse(argv: Sequence[str] | None) -> tuple[Config, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m tests.stress.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed, printed")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--deadline", type=float, default=None, help="seconds per API (default: generous)")
    parser.add_argument("--api", choices=[*APIS, "all", "none"], default="all", help="which API drives the calls")
    parser.add_argument(
        "--phase",
        choices=[*PHASES, "all", "none"],
        action="append",
        help="a phase to run after the APIs (repeatable; default: all)",
    )
    parser.add_argument(
        "--hostile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mix hostile workers (tests/hostile.py) into the plan (default: yes)",
    )
    parser.add_argument("--interrupt-calls", type=int, default=1000, help="calls of the interrupts phase")
    parser.add_argument("--fork-burst", type=int, default=200, help="calls of the fork-failure phase's burst")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.concurrency < 1 or args.workers < 1 or not 0 <= args.fault_rate <= 1:
        parser.error("--calls, --concurrency and --workers must be positive, --fault-rate within [0, 1]")
    if args.interrupt_calls < 1 or args.fork_burst < 1:
        parser.error("--interrupt-calls and --fork-burst must be positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    deadline = args.deadline if args.deadline is not None else max(300.0, 0.3 * args.calls)
    config = Config(
        args.calls,
        seed,
        args.concurrency,
        args.workers,
        args.fault_rate,
        deadline,
        hostile=args.hostile,
        interrupt_calls=args.interrupt_calls,
        fork_burst=args.fork_burst,
    )
    apis = list(APIS) if args.api == "all" else [] if args.api == "none" else [args.api]
    phases = args.phase or ["all"]
    selected = [phase for phase in PHASES if "all" in phases or phase in phases]
    return config, apis + ([] if "none" in phases else selected)


def main(argv: Sequence[str] | None = None) -> int:
    config, apis = _parse(argv)
    print(f"seed {config.seed} (rerun with --seed {config.seed})", flush=True)
    results: list[tuple[str, bool, float]] = []
    for api in apis:
        started = time.monotonic()
        report = run_api(config, api)
        results.append((api, report.ok, time.monotonic() - started))
        print(report.table(), end="\n\n", flush=True)
    for api, ok, wall in results:
        print(f"{api:<12} {'PASS' if ok else 'FAIL'}  {wall:.1f} s")
    failed = [api for api, ok, _ in results if not ok]
    print(f"campaign {'FAILED: ' + ', '.join(failed) if failed else 'passed'} (seed {config.seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
