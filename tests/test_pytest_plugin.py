"""The pytest plugin, run on small test files through pytester (pytest's fixture for
testing plugins): each outcome kind, assertion messages, crashes, timeouts, fixtures that
do not pickle, ``--fresh-all``, ``--fresh-reload`` and ``-p no:freshproc``.

Each run is a pytest subprocess, which loads the plugin through its entry point as users
get it, and whose imports cannot leak into this session's ``sys.modules``."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# Every test file below gets these: the test process's pid, to tell where a test ran.
_PID_FIXTURE = """
import os
import pytest

@pytest.fixture
def test_process_pid():
    return os.getpid()
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def _write_tests(pytester: pytest.Pytester, body: str, name: str = "test_subject") -> None:
    pytester.makeconftest(_PID_FIXTURE)
    pytester.makepyfile(**{name: textwrap.dedent(body)})


def test_each_outcome_kind_comes_back_as_pytest_reports_it(pytester: pytest.Pytester) -> None:
    _write_tests(
        pytester,
        """
        import os
        import pytest

        class Custom(Exception):
            pass

        @pytest.mark.fresh
        def test_passes(test_process_pid):
            assert os.getpid() != test_process_pid

        @pytest.mark.fresh
        def test_fails():
            assert 1 + 1 == 3

        @pytest.mark.fresh
        def test_skips():
            pytest.skip("not today")

        @pytest.mark.fresh
        @pytest.mark.xfail(reason="known bug", strict=True)
        def test_xfails():
            raise ValueError("the known bug")

        @pytest.mark.fresh
        @pytest.mark.xfail(reason="fixed already", strict=True)
        def test_xpasses_strictly():
            pass

        @pytest.mark.fresh
        def test_imperative_xfail():
            pytest.xfail("said inside")

        @pytest.mark.fresh
        def test_raises_its_own_error():
            raise Custom("from the test's own code")

        @pytest.mark.fresh
        def test_fails_without_traceback():
            pytest.fail("plain message", pytrace=False)
        """,
    )
    result = run(pytester, "-rfsx")
    result.assert_outcomes(passed=1, failed=4, skipped=1, xfailed=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_subject.py::test_fails - assert (1 + 1) == 3",
            "FAILED test_subject.py::test_xpasses_strictly - [[]XPASS(strict)[]] fixed already",
            "FAILED test_subject.py::test_raises_its_own_error - test_subject.Custom: *",
            "FAILED test_subject.py::test_fails_without_traceback - Failed: plain message",
            "SKIPPED [[]1[]] test_subject.py:17: not today",
            "XFAIL test_subject.py::test_xfails - known bug",
            "XFAIL test_subject.py::test_imperative_xfail - said inside",
        ],
        consecutive=False,
    )


def test_a_failure_shows_the_rewritten_assertion_and_the_test_traceback(pytester: pytest.Pytester) -> None:
    _write_tests(
        pytester,
        """
        import pytest

        @pytest.fixture
        def numbers():
            return [1, 2, 3]

        def helper(total):
            assert total == 5, "the total is off"

        @pytest.mark.fresh
        def test_sum(numbers):
            expected = 5
            helper(sum(numbers))
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "numbers = [[]1, 2, 3[]]",
            ">       helper(sum(numbers))",
            "test_subject.py:13: ",
            '>       assert total == 5, "the total is off"',
            "E       AssertionError: the total is off",
            "E       assert 6 == 5",
            "test_subject.py:8: AssertionError",
        ]
    )
    # The plugin's own frames stay out of the report.
    result.stdout.no_fnmatch_line("*pytest_plugin.py*")


def test_each_fresh_test_starts_from_a_new_worker(pytester: pytest.Pytester) -> None:
    """Module state set by one test is gone in the next: each imports the module anew."""
    _write_tests(
        pytester,
        """
        import pytest

        seen = []

        @pytest.mark.fresh
        @pytest.mark.parametrize("n", range(3))
        def test_alone(n):
            seen.append(n)
            assert seen == [n]

        class TestInAClass:
            @pytest.mark.fresh
            def test_method(self):
                seen.append("method")
                assert seen == ["method"]
        """,
    )
    run(pytester).assert_outcomes(passed=4)


def test_a_crash_fails_that_test_with_its_signal_and_output_and_the_session_goes_on(
    pytester: pytest.Pytester,
) -> None:
    _write_tests(
        pytester,
        """
        import os
        import signal
        import pytest

        @pytest.mark.fresh
        def test_crashes():
            print("last words", flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)

        def test_after():
            pass
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*the test's freshproc worker crashed: worker * killed by SIGSEGV*",
            "*Captured stdout call*",
            "last words",
        ]
    )


def test_the_marker_timeout_ends_a_hung_test(pytester: pytest.Pytester) -> None:
    _write_tests(
        pytester,
        """
        import threading
        import pytest

        @pytest.mark.fresh(timeout=2)
        def test_hangs():
            print("waiting forever", flush=True)
            threading.Event().wait()

        @pytest.mark.fresh(timeout=30)
        def test_quick():
            pass
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*the test's freshproc worker timed out: * did not finish within 2.0 s*",
            "*Captured stdout call*",
            "waiting forever",
        ]
    )


def test_a_bad_timeout_fails_the_test_saying_why(pytester: pytest.Pytester) -> None:
    _write_tests(pytester, "import pytest\n\n@pytest.mark.fresh(timeout=-1)\ndef test_x():\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["@pytest.mark.fresh(timeout=-1): must be a positive number of seconds"])


def test_a_fixture_that_does_not_pickle_is_named(pytester: pytest.Pytester) -> None:
    _write_tests(
        pytester,
        """
        import threading
        import pytest

        @pytest.fixture
        def lock():
            return threading.Lock()

        @pytest.mark.fresh
        def test_uses_lock(lock):
            pass
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "fixture 'lock' cannot travel to the test's freshproc worker: its value, a lock, does not pickle *",
            "*build the object in the test or in a helper the test calls: that runs on the fresh side.",
        ]
    )


def test_fixture_values_travel_and_the_working_directory_follows(pytester: pytest.Pytester) -> None:
    _write_tests(
        pytester,
        """
        import os
        import pytest

        @pytest.fixture
        def settings(tmp_path, monkeypatch):
            monkeypatch.chdir(tmp_path)
            monkeypatch.setenv("FRESH_PLUGIN_SETTING", "on")
            return {"path": tmp_path, "depth": 3}

        @pytest.mark.fresh
        def test_reads(settings, test_process_pid):
            assert os.getpid() != test_process_pid
            assert settings["depth"] == 3
            assert os.getcwd() == str(settings["path"])
            assert os.environ["FRESH_PLUGIN_SETTING"] == "on"
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_fresh_all_runs_every_test_in_a_worker(pytester: pytest.Pytester) -> None:
    _write_tests(
        pytester,
        """
        import os

        def test_unmarked(test_process_pid):
            assert os.getpid() != test_process_pid
        """,
    )
    run(pytester, "--fresh-all").assert_outcomes(passed=1)
    run(pytester).assert_outcomes(failed=1)


def test_async_tests_run_on_their_anyio_backend_in_the_worker(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        _PID_FIXTURE
        + textwrap.dedent(
            """
            @pytest.fixture(params=["asyncio", "trio"])
            def anyio_backend(request):
                return request.param
            """
        )
    )
    pytester.makepyfile(
        test_subject="""
        import os
        import sniffio
        import pytest

        @pytest.mark.fresh
        @pytest.mark.anyio
        async def test_async(anyio_backend, test_process_pid):
            assert os.getpid() != test_process_pid
            assert sniffio.current_async_library() == anyio_backend
        """
    )
    run(pytester).assert_outcomes(passed=2)


def test_a_package_test_module_under_importlib_mode(pytester: pytest.Pytester) -> None:
    """The project's own layout: tests in a package, ``--import-mode=importlib``, a
    helper imported by its package name, and an exception class of the test module."""
    pytester.makeconftest(_PID_FIXTURE)
    pytester.mkpydir("suite")
    pytester.makepyfile(
        **{
            "suite/helpers": "ANSWER = 42\n",
            "suite/test_in_package": """
            import pytest
            from suite.helpers import ANSWER

            class Mismatch(Exception):
                pass

            @pytest.mark.fresh
            def test_answer():
                assert ANSWER == 42

            @pytest.mark.fresh
            def test_raises_the_modules_own_class():
                raise Mismatch(ANSWER)
            """,
        }
    )
    result = run(pytester, "--import-mode=importlib")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["E       suite.test_in_package.Mismatch: 42"])


def test_fresh_reload_keeps_a_warm_worker_per_module_until_a_file_changes(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(_PID_FIXTURE)
    pytester.makepyfile(
        helper="VALUE = 1\n",
        test_subject="""
        import os
        import pathlib
        import pytest

        import helper

        HERE = pathlib.Path(__file__).parent
        PIDS = HERE / "pids.txt"

        @pytest.mark.fresh
        def test_first():
            PIDS.write_text(str(os.getpid()))
            assert helper.VALUE == 1

        @pytest.mark.fresh
        def test_warm_worker_serves_again(test_process_pid):
            assert os.getpid() != test_process_pid
            assert PIDS.read_text() == str(os.getpid())
            # Change a module the worker imported: the next test gets a new worker.
            (HERE / "helper.py").write_text("VALUE = 22\\n")

        @pytest.mark.fresh
        def test_after_the_change():
            assert PIDS.read_text() != str(os.getpid())
            assert helper.VALUE == 22
        """,
    )
    run(pytester, "--fresh-reload").assert_outcomes(passed=3)


def test_disabled_with_p_no_freshproc(pytester: pytest.Pytester) -> None:
    _write_tests(
        pytester,
        """
        import os
        import pytest

        @pytest.mark.fresh
        def test_runs_here(test_process_pid):
            assert os.getpid() == test_process_pid
        """,
    )
    run(pytester, "-p", "no:freshproc").assert_outcomes(passed=1)
    # The marker is then unknown, so a strict run says so; the options are gone too.
    strict = run(pytester, "-p", "no:freshproc", "--strict-markers")
    strict.stdout.fnmatch_lines(["*'fresh' not found in `markers` configuration option*"])
    unknown = run(pytester, "-p", "no:freshproc", "--fresh-all")
    unknown.stderr.fnmatch_lines(["*unrecognized arguments: --fresh-all*"])


def test_the_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.fresh(timeout=None): run this test in a fresh freshproc worker*"])


def test_fresh_reload_is_the_pools_hot_reload(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The warm worker is replaced by the pool's hot reload, which watches every file the
    worker imported: here a module outside the rootdir, edited by a test after the worker
    imported it."""
    outside = tmp_path_factory.mktemp("outside_rootdir")
    helper = outside / "outside_helper.py"
    helper.write_text("VALUE = 1\n")
    pytester.makeconftest(_PID_FIXTURE + f"\nimport sys\nsys.path.insert(0, {str(outside)!r})\n")
    pytester.makepyfile(
        test_subject=f"""
        import os
        import pathlib
        import pytest

        import outside_helper

        HELPER = pathlib.Path({str(helper)!r})
        PIDS = pathlib.Path(__file__).parent / "pids.txt"

        @pytest.mark.fresh
        def test_first():
            PIDS.write_text(str(os.getpid()))
            assert outside_helper.VALUE == 1

        @pytest.mark.fresh
        def test_same_warm_worker_then_an_edit():
            assert PIDS.read_text() == str(os.getpid())
            HELPER.write_text("VALUE = 22\\n")

        @pytest.mark.fresh
        def test_after_the_edit():
            assert PIDS.read_text() != str(os.getpid())
            assert outside_helper.VALUE == 22
        """
    )
    run(pytester, "--fresh-reload").assert_outcomes(passed=3)
