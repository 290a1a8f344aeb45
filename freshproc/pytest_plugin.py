"""The pytest plugin (entry point ``pytest11``): ``@pytest.mark.fresh`` runs a test in a
fresh freshproc worker.

The test process still collects the test, runs its fixtures and reports it; only the
test function's body moves. What crosses to the worker: the test module's name and file
(the worker imports it from the file, with pytest's assertion rewriting), the values of
the fixtures the test names (pickled here, so one that does not pickle fails the test
naming the fixture), the test class instance, ``sys.path``, the working directory and
the environment. What comes back: the outcome (the exception, pickled when it can be,
with pytest's own failure report made in the worker), and the output the test wrote.

Nothing here runs unless a test is marked or an option is given: the hooks check a
marker and return, and the pools are made on first use.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from freshproc._pool import Captured, Pool

MARKER = "fresh"
_MARKER_HELP = (
    "fresh(timeout=None): run this test in a fresh freshproc worker process; "
    "timeout (seconds) ends a hung test's worker"
)

#: Imported once into the pools' template, so a fresh worker starts with pytest loaded.
_WORKER_PRELOAD = ("freshproc.pytest_plugin", "_pytest._code", "_pytest.assertion.rewrite")

_remote_report_key = pytest.StashKey[object]()
_runner_key = pytest.StashKey["_FreshRunner"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("freshproc", "run tests in fresh worker processes")
    group.addoption(
        "--fresh-all", action="store_true", default=False, help="run every test as if marked @pytest.mark.fresh"
    )
    group.addoption(
        "--fresh-reload",
        action="store_true",
        default=False,
        help="run fresh tests in one warm worker per test module, replaced when a file it imported changes",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)


def pytest_unconfigure(config: pytest.Config) -> None:
    runner = config.stash.get(_runner_key, None)
    if runner is not None:
        runner.close()
        del config.stash[_runner_key]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    marker = item.get_closest_marker(MARKER)
    if not isinstance(item, pytest.Function) or (marker is None and not item.config.getoption("fresh_all")):
        return (yield)
    runner = item.config.stash.get(_runner_key, None)
    if runner is None:
        runner = item.config.stash[_runner_key] = _FreshRunner(reload=bool(item.config.getoption("fresh_reload")))
    # The test's body runs in the worker instead of here: shadowing ``runtest`` (rather
    # than answering ``pytest_pyfunc_call``) keeps other plugins' call hooks, such as
    # anyio's for async tests, from running it here first.
    item.runtest = functools.partial(runner.run, item, marker)  # type: ignore[method-assign]
    try:
        return (yield)
    finally:
        del item.runtest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    remote_report = item.stash.get(_remote_report_key, None)
    if remote_report is not None and call.when == "call":
        del item.stash[_remote_report_key]
        if report.failed or (report.skipped and not hasattr(report, "wasxfail")):
            # The failure (or skip) as pytest described it in the worker, where the frames were.
            report.longrepr = remote_report
    return report


def _marker_timeout(marker: pytest.Mark | None) -> float | None:
    if marker is None:
        return None
    if marker.args or set(marker.kwargs) - {"timeout"}:
        pytest.fail("@pytest.mark.fresh takes only timeout= (seconds)", pytrace=False)
    timeout = marker.kwargs.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        pytest.fail(f"@pytest.mark.fresh(timeout={timeout!r}): must be a positive number of seconds", pytrace=False)
    return float(timeout)


# -- the test process's side ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TestSpec:
    """What the worker needs to find and run the test."""

    module_name: str
    path: str
    class_name: str | None
    function_name: str
    sys_path: list[str]
    cwd: str
    environ: dict[str, str]
    tbstyle: str
    showlocals: bool


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How the test ended in the worker."""

    passed: bool
    exception: bytes | None = None
    #: pytest's own outcome exceptions (skip, xfail, fail, exit) travel as their class
    #: name and attributes: their classes claim to live in ``builtins``, so they do not
    #: pickle by reference.
    pytest_outcome: tuple[str, dict[str, object]] | None = None
    exception_text: str = ""
    report: object = None


@dataclass(slots=True)
class _FreshRunner:
    """The session's pools: one ``fresh`` pool per timeout, or with ``--fresh-reload`` one
    warm single-worker pool per test module (and timeout), whose hot reload replaces the
    worker when a file it imported changes."""

    reload: bool
    pools: dict[tuple[str | None, float | None], Pool] = field(default_factory=dict)

    def pool_for(self, module_file: str, timeout: float | None) -> Pool:
        from freshproc._pool import Pool

        key = (module_file if self.reload else None, timeout)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(
                workers=1,
                capture_output=True,
                timeout=timeout,
                preload=_WORKER_PRELOAD,
                fresh=not self.reload,
                reload=True,  # --fresh-reload: the warm worker goes when a file it imported changes
            )
        return pool

    def run(self, item: pytest.Function, marker: pytest.Mark | None) -> None:
        timeout = _marker_timeout(marker)
        spec, fixtures, instance = _prepare(item)
        pool = self.pool_for(spec.path, timeout)
        captured = _call_in_worker(pool, spec, fixtures, instance)
        _write_output((captured.stdout, captured.stderr))
        outcome: _Outcome = captured.value
        if outcome.passed:
            return
        exc_value = _load_exception(outcome)
        if outcome.report is not None:
            item.stash[_remote_report_key] = outcome.report
        raise exc_value

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()


def _call_in_worker(
    pool: Pool, spec: _TestSpec, fixtures: dict[str, bytes], instance: bytes | None
) -> Captured[_Outcome]:
    """The test's outcome and output; a crash or a timeout fails the test saying so."""
    from freshproc._errors import CallTimeoutError, SerializationError, WorkerCrashedError

    try:
        return pool.run_captured_sync(_run_in_worker, spec, fixtures, instance)
    except CallTimeoutError as exc:
        problem: Exception = exc
        what = "timed out"
    except WorkerCrashedError as exc:
        problem, what = exc, "crashed"
    except SerializationError as exc:
        problem, what = exc, "could not send the outcome back"
    _write_output(getattr(problem, "captured_output", None))
    pytest.fail(f"the test's freshproc worker {what}: {problem}", pytrace=False)


def _prepare(item: pytest.Function) -> tuple[_TestSpec, dict[str, bytes], bytes | None]:
    fixtures: dict[str, bytes] = {}
    for name in item._fixtureinfo.argnames:
        value = item.funcargs[name]
        pickled = _pickled_or_reason(value)
        if isinstance(pickled, str):
            pytest.fail(
                f"fixture {name!r} cannot travel to the test's freshproc worker: its value, a "
                f"{type(value).__qualname__}, does not pickle ({pickled}).\n"
                f"Pass what the object is made from instead (a module-level value, or a fixture returning "
                f"plain data), and build the object in the test or in a helper the test calls: that runs "
                f"on the fresh side.",
                pytrace=False,
            )
        fixtures[name] = pickled
    instance: bytes | None = None
    if item.instance is not None:
        pickled = _pickled_or_reason(item.instance)
        if isinstance(pickled, str):
            pytest.fail(f"the test's class instance does not pickle, so it cannot travel ({pickled})", pytrace=False)
        instance = pickled
    config = item.config
    spec = _TestSpec(
        module_name=item.module.__name__,
        path=str(item.path),
        class_name=item.cls.__qualname__ if item.cls is not None else None,
        function_name=item.originalname,
        sys_path=list(sys.path),
        cwd=os.getcwd(),
        environ=dict(os.environ),
        tbstyle=str(config.getoption("tbstyle", "auto")),
        showlocals=bool(config.getoption("showlocals", False)),
    )
    return spec, fixtures, instance


def _pickled_or_reason(value: object) -> bytes | str:
    from freshproc._serialization import dumps

    try:
        return dumps(value, out_of_band=False)[0]
    except Exception as exc:  # noqa: BLE001 - whatever stops pickling, the failure says it
        return str(exc) or type(exc).__name__


def _write_output(output: tuple[str, str] | None) -> None:
    # Written to this process's streams, so pytest's capture reports it with the test.
    if output is None:
        return
    stdout, stderr = output
    if stdout:
        sys.stdout.write(stdout)
    if stderr:
        sys.stderr.write(stderr)


def _load_exception(outcome: _Outcome) -> BaseException:
    from _pytest import outcomes

    from freshproc._serialization import loads

    if outcome.pytest_outcome is not None:
        class_name, attributes = outcome.pytest_outcome
        rebuilt: BaseException = getattr(outcomes, class_name)(attributes.get("msg"))
        rebuilt.__dict__.update(attributes)
        return rebuilt
    if outcome.exception is not None:
        try:
            value = loads(outcome.exception, [])
        except Exception:  # noqa: BLE001, S110 - its class may exist only in the worker: its text stands in
            pass
        else:
            if isinstance(value, BaseException):
                return value
    return _RemoteTestFailure(outcome.exception_text)


class _RemoteTestFailure(Exception):
    """A test's exception that could not come back as itself (its text does)."""


# -- the worker's side ------------------------------------------------------------------


def _run_in_worker(spec: _TestSpec, fixtures: dict[str, bytes], instance: bytes | None) -> _Outcome:
    from _pytest import outcomes
    from _pytest._code import ExceptionInfo

    from freshproc._serialization import dumps, loads

    _adopt_context(spec)
    module = _import_test_module(spec.module_name, spec.path)
    if spec.class_name is not None:
        assert instance is not None
        test_function = getattr(loads(instance, []), spec.function_name)
    else:
        test_function = getattr(module, spec.function_name)
    kwargs = {name: loads(data, []) for name, data in fixtures.items()}
    try:
        _call_test(test_function, kwargs)
    except BaseException as exc:  # noqa: BLE001 - every way a test ends is reported, skips included
        excinfo = ExceptionInfo.from_exception(exc)
        if isinstance(exc, outcomes.OutcomeException) and getattr(outcomes, type(exc).__name__, None) is type(exc):
            # pytest.fail(pytrace=False) asks for its message alone: the test process makes it.
            report: object
            if isinstance(exc, outcomes.Skipped):
                # Where the test called skip, as pytest itself reports a skip.
                crash = excinfo._getreprcrash()
                report = (crash.path, crash.lineno, crash.message) if crash is not None else None
            else:
                report = _failure_report(excinfo, test_function, spec) if exc.pytrace else None
            return _Outcome(False, pytest_outcome=(type(exc).__name__, dict(vars(exc))), report=report)
        try:
            pickled: bytes | None = dumps(exc, out_of_band=False)[0]
        except Exception:  # noqa: BLE001 - then its text stands in for it
            pickled = None
        report = _failure_report(excinfo, test_function, spec)
        return _Outcome(False, pickled, exception_text=excinfo.exconly(), report=report)
    return _Outcome(True)


def _failure_report(excinfo: Any, test_function: Callable[..., object], spec: _TestSpec) -> object:
    """pytest's description of the failure, made here where the frames are."""
    from _pytest._code import Code

    code = Code.from_function(inspect.unwrap(test_function))
    return excinfo.getrepr(
        showlocals=spec.showlocals,
        style="long" if spec.tbstyle == "auto" else spec.tbstyle,
        funcargs=True,
        tbfilter=functools.partial(_test_frames, path=code.path, firstlineno=code.firstlineno),
        truncate_locals=True,
    )


def _call_test(test_function: Callable[..., object], kwargs: dict[str, object]) -> None:
    if not inspect.iscoroutinefunction(test_function):
        test_function(**kwargs)
        return
    backend: Any = kwargs.get("anyio_backend")
    if backend is None:
        import asyncio

        asyncio.run(test_function(**kwargs))
        return
    import anyio

    name, options = (backend, {}) if isinstance(backend, str) else backend  # ("trio", {...}) pairs too
    anyio.run(functools.partial(test_function, **kwargs), backend=name, backend_options=options)


def _test_frames(excinfo: Any, *, path: Any, firstlineno: int) -> Any:
    """The traceback cut to the test's frames, as pytest's ``Function`` cuts it."""
    traceback = excinfo.traceback
    cut = traceback.cut(path=path, firstlineno=firstlineno)
    if cut == traceback:
        cut = cut.cut(path=path)
    return cut.filter(excinfo)


def _adopt_context(spec: _TestSpec) -> None:
    """The test process's import path, working directory and environment."""
    sys.path[:] = spec.sys_path + [entry for entry in sys.path if entry not in spec.sys_path]
    for name in set(os.environ) - set(spec.environ):
        del os.environ[name]
    os.environ.update(spec.environ)
    os.chdir(spec.cwd)


def _import_test_module(name: str, path: str) -> types.ModuleType:
    """The test module, imported from its file under the name the test process gave it,
    with its assertions rewritten as pytest rewrites them."""
    from _pytest.assertion.rewrite import rewrite_asserts

    module = sys.modules.get(name)
    if module is not None and getattr(module, "__file__", None) == path:
        return module
    source = Path(path).read_bytes()
    tree = ast.parse(source, filename=path)
    rewrite_asserts(tree, source, path)
    code = compile(tree, path, "exec", dont_inherit=True)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    package = name.rpartition(".")[0]
    if package:
        try:
            importlib.import_module(package)
        except ImportError:
            pass  # a rootdir-relative name that is no package here: relative imports then fail
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - importing the module, as its loader would
    except BaseException:
        del sys.modules[name]
        raise
    return module
