"""The README's quickstart runs exactly as written, and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_snippets() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_quickstart_has_two_snippets() -> None:
    assert len(_quickstart_snippets()) == 2


@pytest.mark.parametrize("index", [0, 1])
def test_a_quickstart_snippet_runs_as_written(index: int, tmp_path: Path) -> None:
    """Pasted into a file and run from an empty folder, the snippet exits cleanly and
    prints, in order, each value its ``print(...)  # value`` comments promise."""
    snippet = _quickstart_snippets()[index]
    script = tmp_path / "quickstart.py"
    script.write_text(snippet)
    completed = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    promised = re.findall(r"print\(.*\)\s+# (.+)$", snippet, flags=re.MULTILINE)
    assert promised
    printed = completed.stdout.splitlines()
    position = 0
    for expected in promised:
        while position < len(printed) and printed[position] != expected:
            position += 1
        assert position < len(printed), f"{expected!r} not printed in order; got {printed}"
        position += 1
