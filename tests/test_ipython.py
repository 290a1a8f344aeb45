"""The IPython extension on IPython's own shell (no kernel): ``%%fresh`` cells,
``%freshproc_reload`` and ``%freshproc stats``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from traitlets.config import Config

import freshproc
from freshproc import _api


@pytest.fixture(scope="module")
def ipython_shell(tmp_path_factory: pytest.TempPathFactory) -> InteractiveShell:
    os.environ.setdefault("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    return InteractiveShell.instance(config=config)


@pytest.fixture
def shell(ipython_shell: InteractiveShell) -> Iterator[InteractiveShell]:
    """The shell with the extension loaded; unloading it closes the pool of ``%%fresh``."""
    ipython_shell.run_line_magic("load_ext", "freshproc")
    yield ipython_shell
    ipython_shell.run_line_magic("unload_ext", "freshproc")
    ipython_shell.reset()


def fresh_cell(shell: InteractiveShell, body: str, options: str = "") -> ExecutionResult:
    return cast("ExecutionResult", shell.run_cell(f"%%fresh {options}\n" + textwrap.dedent(body)))


def test_a_cell_reads_by_value_and_its_bindings_come_back(shell: InteractiveShell) -> None:
    shell.user_ns["numbers"] = [1, 2, 3]
    shell.user_ns["kernel_pid"] = os.getpid()
    result = fresh_cell(
        shell,
        """
        import os
        assert os.getpid() != kernel_pid
        numbers.append(4)
        total = sum(numbers)
        def double(x):
            return 2 * x
        total * 10
        """,
    )
    assert result.error_in_exec is None
    value: object = result.result
    assert value == 100
    assert shell.user_ns["total"] == 10
    assert shell.user_ns["double"](21) == 42
    # The list travelled by value: the kernel's own is unchanged.
    assert shell.user_ns["numbers"] == [1, 2, 3]


def test_each_cell_gets_a_fresh_worker(shell: InteractiveShell) -> None:
    assert fresh_cell(shell, "import json\njson.marked = True").success
    result = fresh_cell(shell, "import json\nhasattr(json, 'marked')")
    assert result.result is False


def test_bindings_that_do_not_pickle_are_listed(shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    result = fresh_cell(shell, "import threading\nlock = threading.Lock()\nkept = 'yes'")
    assert result.success
    assert shell.user_ns["kept"] == "yes"
    assert "lock" not in shell.user_ns
    assert "%%fresh: not brought back, as they do not pickle: lock (cannot pickle '_thread.lock' object)" in (
        capsys.readouterr().err
    )


def test_a_read_name_that_does_not_pickle_is_a_usage_error(shell: InteractiveShell) -> None:
    shell.user_ns["lock"] = threading.Lock()
    result = fresh_cell(shell, "lock.locked()")
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert "lock (cannot pickle '_thread.lock' object)" in str(result.error_in_exec)


def test_output_streams_into_the_cell_as_it_is_written(shell: InteractiveShell, tmp_path: Path) -> None:
    """The cell prints, then blocks until the test has seen that line: only output that
    arrives while the cell runs lets it finish."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    seen_first_line = threading.Event()

    class Watched(io.StringIO):
        def write(self, text: str) -> int:
            written = super().write(text)
            if "first line" in self.getvalue():
                seen_first_line.set()
            return written

    stdout = Watched()
    results: list[ExecutionResult] = []
    shell.user_ns["gate"] = str(gate)
    previous, sys.stdout = sys.stdout, stdout
    try:
        cell = threading.Thread(
            target=lambda: results.append(fresh_cell(shell, "print('first line')\nopen(gate).read()\nprint('done')"))
        )
        cell.start()
        assert seen_first_line.wait(60)
        with open(gate, "w") as release:
            release.write("go")
        cell.join()
    finally:
        sys.stdout = previous
    assert results[0].success
    assert stdout.getvalue().splitlines()[:2] == ["first line", "done"]


def test_output_of_child_processes_and_stderr_arrives_too(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    result = fresh_cell(
        shell,
        """
        import os, subprocess, sys
        os.write(1, b"from the descriptor\\n")
        subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
        print("to stderr", file=sys.stderr)
        """,
    )
    assert result.success
    out, err = capsys.readouterr()
    assert out.splitlines() == ["from the descriptor", "from a child"]
    assert err.splitlines() == ["to stderr"]


def test_an_error_in_the_cell_shows_the_cells_traceback(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    result = fresh_cell(shell, "def divide(x):\n    return x / 0\ndivide(1)")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    out = capsys.readouterr().out
    assert 'File "<fresh cell>", line 2, in divide' in out
    assert "return x / 0" in out
    assert "freshproc" not in out


def test_a_crash_shows_the_signal_and_the_kernel_carries_on(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    result = fresh_cell(
        shell, "import os, signal\nprint('last words', flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)"
    )
    assert isinstance(result.error_in_exec, freshproc.WorkerCrashedError)
    out = capsys.readouterr().out
    assert "last words" in out
    assert "killed by SIGSEGV" in out
    assert "This kernel carries on" in out
    assert fresh_cell(shell, "1 + 1").result == 2


def test_the_timeout_option_ends_a_hung_cell(shell: InteractiveShell) -> None:
    result = fresh_cell(shell, "import threading\nthreading.Event().wait()", options="--timeout 2")
    assert isinstance(result.error_in_exec, freshproc.CallTimeoutError)


def test_freshproc_stats_prints_the_default_pools_counters(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    assert freshproc.run_sync(abs, -3) == 3
    capsys.readouterr()
    shell.run_line_magic("freshproc", "stats")
    lines = capsys.readouterr().out.splitlines()
    assert "calls_ok           1" in lines
    assert len(lines) == len(freshproc.PoolStats.__dataclass_fields__)
    assert type(shell.run_cell("%freshproc nonsense").error_in_exec).__name__ == "UsageError"


def test_freshproc_reload_switches_the_default_pools_hot_reload(
    shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real default pool, made anew by the magic: with ``off`` a warm worker keeps
    running the code it loaded; with ``on`` the call after an edit runs the new code."""
    target = tmp_path / "notebook_target.py"
    target.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the default pool's workers take the caller's path
    # One worker, so that the second call goes to the warm worker of the first.
    monkeypatch.setattr(_api, "_default_options", {"workers": 1})
    monkeypatch.delitem(sys.modules, "notebook_target", raising=False)

    def value_and_pid() -> tuple[int, int]:
        return freshproc.call_sync("notebook_target", "VALUE.__int__"), freshproc.call_sync("os", "getpid")

    first = freshproc.default_pool()
    assert shell.run_cell("%freshproc_reload off").success
    assert first.closed
    assert freshproc.default_pool().watched_files() == frozenset()
    value, pid = value_and_pid()
    assert value == 1
    target.write_text("VALUE = 2\n")
    assert value_and_pid() == (1, pid)  # stale, as asked: the warm worker kept the old module

    assert shell.run_cell("%freshproc_reload on").success
    value, pid = value_and_pid()
    assert value == 2
    assert os.path.realpath(target) in freshproc.default_pool().watched_files()
    target.write_text("VALUE = 3\n")
    value, new_pid = value_and_pid()
    assert value == 3  # the edit is picked up by the very next call
    assert new_pid != pid
    assert type(shell.run_cell("%freshproc_reload maybe").error_in_exec).__name__ == "UsageError"
    assert "notebook_target" not in sys.modules


def test_importing_freshproc_does_not_import_ipython() -> None:
    code = "import sys, freshproc; assert callable(freshproc.load_ipython_extension); print('IPython' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"
