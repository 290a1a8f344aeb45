"""Run every example script, each in its own interpreter under a deadline.

Prints one line per script (ok, skip or FAIL, with the time it took), the output of every
script that failed, and exits non-zero if any failed. ``--verbose`` prints every script's
output. This is what ``nox -s examples`` runs.

Run it: ``python examples/run_all.py [--verbose]``
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

#: Seconds each script may take before it counts as failed.
DEADLINE = 120.0

EXAMPLES = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    """Every example but this one; the demo last, since it repeats the others."""
    found = [
        path for path in EXAMPLES.glob("*.py") if path.name != Path(__file__).name and not path.name.startswith("_")
    ]
    return sorted(found, key=lambda path: (path.name == "demo.py", path.name))


def as_text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def run(script: Path) -> tuple[str, str, str]:
    """Run one script: (status, detail, its output)."""
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return "FAIL", f"no result within {DEADLINE:g} s", as_text(exc.output)
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED:")]
    if done.returncode != 0:
        return "FAIL", f"exit status {done.returncode}", done.stdout
    if skipped:
        return "skip", skipped[0].removeprefix("SKIPPED:").strip(), done.stdout
    return "ok", "", done.stdout


def main() -> int:
    verbose = "--verbose" in sys.argv[1:] or "-v" in sys.argv[1:]
    failed: list[str] = []
    for script in scripts():
        started = time.monotonic()
        status, detail, output = run(script)
        elapsed = time.monotonic() - started
        print(f"{status:<5} {script.name:<26} {elapsed:5.1f} s  {detail}".rstrip(), flush=True)
        if status == "FAIL":
            failed.append(script.name)
        if verbose or status == "FAIL":
            print("".join(f"    | {line}\n" for line in output.splitlines()), end="", flush=True)
    if failed:
        print(f"{len(failed)} example(s) failed: {', '.join(failed)}")
        return 1
    print("every example passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
