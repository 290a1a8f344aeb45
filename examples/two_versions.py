"""Two versions of one package side by side, and a call into a separate virtual environment.

The problem
    One program needs both the old and the new version of a library (an old file-format
    reader next to the new one, a migration that reads with one and writes with the
    other), or a library whose dependencies conflict with the program's own. One
    interpreter holds one ``sys.modules``: one version of each package, ever.

The freshproc way
    A pool per version: ``Pool(sys_path=[folder])`` puts that version's folder first on
    its workers' ``sys.path``. Both pools serve calls at once; the caller imports neither.
    ``Pool(python=venv_folder)`` runs its workers under a virtual environment's own
    interpreter and site-packages, without installing anything there; ``describe()`` says
    what the workers run under.

Run it: ``python examples/two_versions.py``
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
from _support import expect, write_module

import freshproc

TITLE = "two versions of one package, and a separate virtual environment"

READER = """
__version__ = "{version}"


def read(record):
    # Version 1 reads "name:age"; version 2 reads "name;age;city".
    separator = "{separator}"
    return {{"reader": __version__, "fields": record.split(separator)}}
"""


async def side_by_side(old_folder: Path, new_folder: Path) -> None:
    async with (
        freshproc.Pool(2, sys_path=[old_folder]) as old,
        freshproc.Pool(2, sys_path=[new_folder]) as new,
        anyio.create_task_group() as group,
    ):
        results: list[dict[str, object]] = []

        async def read(pool: freshproc.Pool, record: str) -> None:
            results.append(await pool.call("records", "read", record))

        for number in range(5):
            group.start_soon(read, old, f"ada:{30 + number}")
            group.start_soon(read, new, f"ada;{30 + number};paris")
    for result in sorted(results, key=str)[:2] + sorted(results, key=str)[-2:]:
        print(f"  {result}")
    expect(len(results) == 10, "every call answered")
    expect(
        all(len(r["fields"]) == (2 if r["reader"] == "1.0" else 3) for r in results),  # type: ignore[arg-type]
        "each call ran the version its pool names",
    )
    expect("records" not in sys.modules, "the caller imported neither version")
    print("both versions served calls at once; the caller imported neither")


def in_a_venv(root: Path) -> None:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = venv.glob("lib/python3.*/site-packages")
    write_module(site_packages / "venv_only.py", "def hello(name):\n    return f'hello {name} from the venv'\n")
    with freshproc.Pool(1, python=venv) as pool:
        print(f"  {pool.call_sync('venv_only', 'hello', 'ada')}")
        described = pool.describe()
        print(f"  workers run {described.implementation} {described.version} at {described.python}")
        expect(described.python.startswith(str(venv)), "the workers run the venv's interpreter")
    expect(not any(site_packages.glob("freshproc*")), "nothing of freshproc was installed into the venv")
    print("the venv's package was imported there, and nothing was installed into it")


def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        write_module(root / "v1" / "records.py", READER.format(version="1.0", separator=":"))
        write_module(root / "v2" / "records.py", READER.format(version="2.0", separator=";"))
        print("two versions of `records`, side by side:")
        anyio.run(side_by_side, root / "v1", root / "v2")
        print("a call into a separate virtual environment:")
        in_a_venv(root)


if __name__ == "__main__":
    print(TITLE)
    main()
