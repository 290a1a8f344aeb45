"""``python -m freshproc describe [--python PATH]``: what a pool's workers run under."""

from __future__ import annotations

import argparse
import sys

from freshproc._errors import WorkerStartupError
from freshproc._pool import Pool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m freshproc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser("describe", help="start a pool and print what its workers run under")
    describe.add_argument("--python", help="an interpreter or a virtual environment folder (default: this one)")
    arguments = parser.parse_args(argv)
    try:
        with Pool(1, python=arguments.python) as pool:
            sys.stdout.write(f"{pool.describe()}\n")
    except WorkerStartupError as exc:
        sys.stderr.write(f"freshproc: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
