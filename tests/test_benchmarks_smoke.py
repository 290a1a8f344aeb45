"""The benchmark suite runs end to end in quick mode (about 50 short-lived interpreters),
also beside a baseline freshproc. Timings are never checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {"A", "B", "C", "C'", "D", "E1", "E2", "F", "G", "S1", "S2", "S3", "R", "K1", "K2", "K3"}


def run_benchmarks(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def worktrees() -> str:
    return subprocess.run(
        ["git", "worktree", "list", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.slow
def test_quick_run_writes_markdown_and_json(tmp_path: Path) -> None:
    pytest.importorskip("numpy")  # peers that are missing are reported n/a; numpy is needed
    pytest.importorskip("distributed")  # the Dask workloads (K) need the dask extra
    completed = run_benchmarks("--quick", "--out", str(tmp_path), timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]

    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert set(data["workloads"]) == WORKLOADS
    for key, workload in data["workloads"].items():
        assert any(row["status"] == "ok" for row in workload["contenders"]), f"nothing measured for {key}"
    # A reference row is shown, never picked as freshproc's best.
    assert data["workloads"]["S1"]["best_freshproc"] != "freshproc-pool-call-sync"
    assert data["workloads"]["A"]["best_freshproc"] != "freshproc-blocking-no-reload"

    header = "| Workload | Unit | Better |"
    assert header in (tmp_path / "benchmarks.md").read_text()
    assert header in completed.stdout


@pytest.mark.slow
def test_baseline_ref_adds_baseline_rows_and_removes_its_worktree(tmp_path: Path) -> None:
    """--baseline-ref runs each freshproc contender again as "[baseline]" from a temporary
    worktree, reports current ÷ baseline, and leaves no worktree behind."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout")
    before = worktrees()
    completed = run_benchmarks(
        "--quick", "--baseline-ref", "HEAD", "--workloads", "A", "--contenders", "freshproc-blocking,raw-pipe",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert worktrees() == before

    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["meta"]["baseline"]["ref"] == "HEAD"
    rows = {row["name"]: row for row in data["workloads"]["A"]["contenders"]}
    assert list(rows) == ["freshproc-blocking", "freshproc-blocking@baseline", "raw-pipe"]
    current, old = rows["freshproc-blocking"], rows["freshproc-blocking@baseline"]
    assert old["baseline_of"] == "freshproc-blocking"
    assert old["status"] == current["status"] == "ok"
    assert current["ratio_to_baseline"] == pytest.approx(current["median"] / old["median"])
    assert data["workloads"]["A"]["ratio_to_baseline"] == current["ratio_to_baseline"]

    text = (tmp_path / "benchmarks.md").read_text()
    assert "| freshproc blocking [baseline] |" in text
    assert "Current ÷ baseline |" in text


@pytest.mark.slow
def test_baseline_whose_workers_import_the_current_freshproc_stops_the_run(tmp_path: Path) -> None:
    """A baseline whose template loads the current checkout's worker modules is caught:
    the run stops instead of reporting current figures as the baseline's."""
    shutil.copytree(ROOT / "freshproc", tmp_path / "freshproc", ignore=shutil.ignore_patterns("__pycache__"))
    local = tmp_path / "freshproc" / "_backends" / "_local.py"
    source = local.read_text()
    origin = "_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)"
    assert origin in source, "update this test: how the template finds its package changed"
    local.write_text(source.replace(origin, f"_PACKAGE_DIR = {str(ROOT / 'freshproc')!r}"))

    completed = run_benchmarks(
        "--quick", "--baseline", str(tmp_path), "--workloads", "A", "--contenders", "freshproc-blocking",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert completed.returncode != 0
    assert "did not measure the freshproc it was given: the worker must use freshproc" in completed.stderr
    assert not (tmp_path / "out").exists()


def test_baseline_without_a_freshproc_package_is_refused(tmp_path: Path) -> None:
    completed = run_benchmarks("--baseline", str(tmp_path), "--workloads", "A", timeout=30)
    assert completed.returncode != 0
    assert "holds no freshproc/ package folder" in completed.stderr


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
