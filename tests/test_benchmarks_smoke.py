"""The benchmark suite runs end to end in quick mode (about 40 short-lived interpreters).

Timings are never checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {"A", "B", "C", "C'", "D", "E1", "E2", "F", "G"}


@pytest.mark.slow
def test_quick_run_writes_markdown_and_json(tmp_path: Path) -> None:
    pytest.importorskip("numpy")  # peers that are missing are reported n/a; numpy is needed
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert set(data["workloads"]) == WORKLOADS
    for key, workload in data["workloads"].items():
        assert any(row["status"] == "ok" for row in workload["contenders"]), f"nothing measured for {key}"

    header = "| Workload | Unit | Better |"
    assert header in (tmp_path / "benchmarks.md").read_text()
    assert header in completed.stdout


def test_provenance_check_names_modules_from_elsewhere(tmp_path: Path) -> None:
    """Only modules from the given package folder pass, and at least one must be loaded."""
    # Importable when the checkout is on sys.path, as with ``python -m pytest`` (nox).
    provenance = pytest.importorskip("benchmarks.provenance", reason="needs the checkout on sys.path")
    package = tmp_path / "freshproc"
    mine = {"freshproc._worker": str(package / "_worker.py"), "(import)": str(package / "__init__.py")}
    provenance.check(mine, package, "worker")

    elsewhere = {**mine, "freshproc._transport": str(ROOT / "freshproc" / "_transport.py")}
    with pytest.raises(provenance.WrongFreshprocError, match=r"worker .* freshproc\._transport from "):
        provenance.check(elsewhere, package, "worker")
    with pytest.raises(provenance.WrongFreshprocError, match="no freshproc module loaded"):
        provenance.check({"(import)": str(package / "__init__.py")}, package, "job")
    with pytest.raises(provenance.WrongFreshprocError, match=r"freshproc\._worker from None"):
        provenance.check({**mine, "freshproc._worker": None}, package, "job")
