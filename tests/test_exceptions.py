"""Exceptions raised by targets, rebuilt in the caller: catchable by their builtin (and
imported) bases when their module is not imported, rebuilt from args and ``__dict__``
when their own pickling fails, a missing target module that says where the worker looked,
and coroutine targets on the caller's async library.

Most tests work on bytes: ``failure_from_exception`` (the worker's side) then
``exception_from_failure`` (the caller's). "The caller has not imported the module" is a
module made under a fresh name and dropped from ``sys.modules`` in between, or a real
subprocess; the end-to-end tests go through a real Pool.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import freshproc
from freshproc import _serialization, _worker
from freshproc._errors import RemoteError, RemoteTraceback, remote_error_class
from freshproc._protocol import CallFailure, CallResult
from tests import exception_targets
from tests.conftest import ModuleFolder
from tests.exception_targets import NoPickle, PluginError

pytestmark = pytest.mark.timeout(60)

MakeModule = Callable[[str], types.ModuleType]


@pytest.fixture
def make_module() -> Iterator[MakeModule]:
    """Make a module from source under a fresh name (so no other test, and no earlier
    import, has it); every one still in ``sys.modules`` at the end is removed."""
    names: list[str] = []

    def make(source: str) -> types.ModuleType:
        name = f"plugin_{uuid.uuid4().hex[:12]}"
        module = types.ModuleType(name)
        sys.modules[name] = module
        names.append(name)
        exec(textwrap.dedent(source), module.__dict__)  # noqa: S102 - the test's own source
        return module

    yield make
    for name in names:
        sys.modules.pop(name, None)


def failure_of(function: Callable[..., object], *args: object) -> _serialization.Failure:
    """What a worker sends back when ``function(*args)`` raises (through its bytes)."""
    try:
        function(*args)
    except BaseException as exc:  # noqa: BLE001 - as the worker does
        failure = _serialization.failure_from_exception(exc)
    else:
        raise AssertionError(f"{function} did not raise")
    received, captured = _serialization.loads_failure(_serialization.dumps_failure(failure, None))
    assert captured is None
    return received


def forget(module: types.ModuleType) -> None:
    """Make the caller one that has not imported ``module``."""
    del sys.modules[module.__name__]


def remote(exc: BaseException) -> RemoteError:
    assert isinstance(exc, RemoteError), repr(exc)
    return exc


def text_of(exc: BaseException) -> str:
    """The message and the notes (Python 3.10 has no notes: freshproc adds to the message)."""
    return "\n".join([str(exc), *getattr(exc, "__notes__", ())])


# -- 1. catchable remote exceptions ----------------------------------------------------------


def test_unimported_modules_exception_is_caught_by_its_builtin_base(make_module: MakeModule) -> None:
    """A plugin.BadInput(ValueError) whose module the caller lacks arrives as a RemoteError
    that ``except ValueError`` catches, with its name, module, message and traceback."""
    plugin = make_module(
        """
        class Base(ValueError):
            pass

        class BadInput(Base):
            pass

        def check(value):
            raise BadInput(f"bad value {value}")
        """
    )
    failure = failure_of(plugin.check, -1)
    forget(plugin)
    exc = remote(_serialization.exception_from_failure(failure))
    with pytest.raises(ValueError, match="bad value -1") as info:
        raise exc
    assert isinstance(info.value, RemoteError)
    assert not isinstance(info.value, LookupError)
    assert type(exc).remote_bases == (ValueError,)
    assert exc.type_name == f"{plugin.__name__}.BadInput"
    assert exc.module == plugin.__name__
    assert exc.message == "bad value -1"
    assert exc.reason == f"module {plugin.__name__} is not imported in the caller"
    assert str(exc) == f"{plugin.__name__}.BadInput: bad value -1 ({exc.reason})"
    assert "in check" in exc.remote_traceback
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert plugin.__name__ not in sys.modules


def test_an_exception_from_a_real_other_process_is_caught_by_its_base(tmp_path: Path) -> None:
    """The worker side in a separate interpreter that imports the plugin; this process
    never does, and rebuilding the failure does not either."""
    name = f"plugin_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text("class Missing(FileNotFoundError):\n    pass\n")
    script = f"""
import sys
from freshproc import _serialization
import {name}
try:
    raise {name}.Missing(2, "No such file or directory", "/nowhere")
except Exception as exc:
    failure = _serialization.failure_from_exception(exc)
sys.stdout.write(_serialization.dumps_failure(failure, None).hex())
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    output = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True, text=True)
    failure, _ = _serialization.loads_failure(bytes.fromhex(output.stdout))
    exc = _serialization.exception_from_failure(failure)
    assert isinstance(exc, RemoteError)
    assert isinstance(exc, FileNotFoundError)
    assert isinstance(exc, OSError)
    # OSError's str would be empty (no errno here): RemoteError's is informative.
    assert str(exc).startswith(f"{name}.Missing: [Errno 2] No such file or directory: '/nowhere'")
    assert name not in sys.modules


def test_a_remote_key_error_prints_its_message_unquoted(make_module: MakeModule) -> None:
    """KeyError's str would repr the whole message; a RemoteError that is a KeyError does not."""
    plugin = make_module(
        """
        class NoSuchKey(KeyError):
            pass

        def lookup():
            raise NoSuchKey("colour")
        """
    )
    failure = failure_of(plugin.lookup)
    forget(plugin)
    exc = _serialization.exception_from_failure(failure)
    assert isinstance(exc, KeyError)
    assert str(exc) == f"{plugin.__name__}.NoSuchKey: 'colour' (module {plugin.__name__} is not imported in the caller)"


def test_bases_are_the_nearest_imported_ones_without_redundant_ones(make_module: MakeModule) -> None:
    """Classes from an imported module count as bases too; a base that another picked one
    already derives from is left out, and the MRO stays consistent."""
    shared = make_module(
        """
        class AppError(Exception):
            pass
        """
    )
    plugin = make_module(
        f"""
        import {shared.__name__} as shared

        class Middle(LookupError):
            pass

        class Deep(shared.AppError, Middle, KeyError):
            pass

        def fail():
            raise Deep("deep")
        """
    )
    failure = failure_of(plugin.fail)
    forget(plugin)
    exc = remote(_serialization.exception_from_failure(failure))
    assert type(exc).remote_bases == (shared.AppError, KeyError)  # LookupError: KeyError is one
    with pytest.raises(shared.AppError):
        raise exc
    assert isinstance(exc, LookupError)
    assert type(exc).__name__ == f"RemoteError({shared.__name__}.AppError, KeyError)"


def test_generated_classes_are_made_once_per_bases(make_module: MakeModule) -> None:
    plugin = make_module(
        """
        class One(ArithmeticError):
            pass

        class Two(ArithmeticError):
            pass

        def fail(cls):
            raise cls()
        """
    )
    failures = [failure_of(plugin.fail, plugin.One), failure_of(plugin.fail, plugin.Two)]
    forget(plugin)
    first, second = (_serialization.exception_from_failure(failure) for failure in failures)
    assert type(first) is type(second)
    assert type(first) is remote_error_class((ArithmeticError,))


@pytest.mark.parametrize(
    ("bases", "expected"),
    [
        ((StopIteration, OSError), (StopIteration,)),  # instance layout conflict
        ((LookupError, KeyError), (LookupError,)),  # no consistent MRO
    ],
    ids=["layout-conflict", "inconsistent-mro"],
)
def test_bases_that_cannot_be_combined_fall_back_to_fewer(
    bases: tuple[type[Exception], ...], expected: tuple[type[Exception], ...]
) -> None:
    cls = remote_error_class(bases)
    assert cls.remote_bases == expected
    exc = cls("plugin.Odd", "odd", "Traceback ...", module="plugin", reason="test")
    assert str(exc) == "plugin.Odd: odd (test)"


def test_a_base_whose_new_refuses_the_arguments_is_dropped(make_module: MakeModule) -> None:
    """A caller-side base class that cannot be instantiated RemoteError's way gives way to
    its builtin ancestors."""
    shared = make_module(
        """
        class Picky(ValueError):
            def __new__(cls, code):
                return super().__new__(cls, code)
        """
    )
    assert remote_error_class((shared.Picky,)).remote_bases == (ValueError,)
    assert remote_error_class((shared.Picky, KeyError)).remote_bases == (ValueError, KeyError)


def test_a_generated_remote_error_pickles_with_its_attributes(make_module: MakeModule) -> None:
    plugin = make_module(
        """
        class Broken(OSError):
            pass

        def fail():
            raise Broken("broken")
        """
    )
    failure = failure_of(plugin.fail)
    forget(plugin)
    exc = remote(_serialization.exception_from_failure(failure))
    copy = remote(pickle.loads(pickle.dumps(exc)))
    assert type(copy) is type(exc)
    assert isinstance(copy, OSError)
    assert str(copy) == str(exc)
    assert vars(copy) == vars(exc)
    assert (copy.type_name, copy.module, copy.message, copy.reason) == (
        exc.type_name,
        exc.module,
        exc.message,
        exc.reason,
    )


def test_system_exit_is_a_plain_remote_error_that_says_why() -> None:
    failure = failure_of(sys.exit, 3)
    exc = remote(_serialization.exception_from_failure(failure))
    assert type(exc) is RemoteError
    assert exc.module == "builtins"
    assert exc.reason is not None
    assert "not re-raised" in exc.reason


def test_a_class_that_cannot_be_found_says_so(make_module: MakeModule) -> None:
    """A class local to a function travels by value when it pickles; when it does not, the
    caller cannot find it by name (its module is imported) and says so."""
    plugin = make_module(
        """
        def fail():
            class Local(ValueError):
                def __reduce__(self):
                    raise TypeError("no")
            error = Local("local")
            error.callback = lambda: None
            raise error
        """
    )
    exc = remote(_serialization.exception_from_failure(failure_of(plugin.fail)))
    assert isinstance(exc, ValueError)
    assert exc.reason == f"{plugin.__name__}.fail.<locals>.Local is not found in the caller"


# -- 2. custom __init__ and failing pickles ---------------------------------------------------


def test_a_custom_init_exception_keeps_its_type_and_attributes() -> None:
    exc = _serialization.exception_from_failure(failure_of(exception_targets.raise_plugin_error, 7, "bad code"))
    assert type(exc) is PluginError
    assert exc.code == 7
    assert exc.args == ("bad code",)
    assert isinstance(exc.__cause__, RemoteTraceback)


def test_an_exception_whose_pickling_raises_keeps_its_type_and_attributes() -> None:
    exc = _serialization.exception_from_failure(failure_of(exception_targets.raise_no_pickle, "no", "details"))
    assert type(exc) is NoPickle
    assert exc.args == ("no",)
    assert exc.detail == "details"


def test_attributes_that_do_not_pickle_are_left_out() -> None:
    exc = _serialization.exception_from_failure(failure_of(exception_targets.raise_plugin_error_holding_a_lock, 5))
    assert type(exc) is PluginError
    assert exc.code == 5
    assert not hasattr(exc, "lock")


def test_a_pickle_that_fails_in_the_caller_falls_back_to_args_and_dict(make_module: MakeModule) -> None:
    """The exception pickles in the worker, but its reduce names a helper module the caller
    has not imported: it is rebuilt from args and __dict__, and the helper stays unimported."""
    helpers = make_module(
        """
        def rebuild(cls, args, state):
            error = cls.__new__(cls)
            error.args = args
            error.__dict__.update(state)
            return error
        """
    )
    plugin = make_module(
        f"""
        import {helpers.__name__} as helpers

        class Custom(Exception):
            def __init__(self, msg, *, level):
                super().__init__(msg)
                self.level = level

            def __reduce__(self):
                return (helpers.rebuild, (type(self), self.args, self.__dict__))

        def fail():
            raise Custom("custom", level=3)
        """
    )
    failure = failure_of(plugin.fail)
    assert failure[4] is not None  # the exception itself pickled in the worker
    forget(helpers)
    exc = _serialization.exception_from_failure(failure)
    assert type(exc) is plugin.Custom
    assert exc.args == ("custom",)
    assert vars(exc) == {"level": 3}
    assert helpers.__name__ not in sys.modules


def test_a_custom_init_exception_of_an_unimported_module_says_why(make_module: MakeModule) -> None:
    plugin = make_module(
        """
        class PluginError(ValueError):
            def __init__(self, code, msg):
                super().__init__(msg)
                self.code = code

        def fail():
            raise PluginError(4, "four")
        """
    )
    failure = failure_of(plugin.fail)
    forget(plugin)
    exc = _serialization.exception_from_failure(failure)
    assert isinstance(exc, RemoteError)
    assert isinstance(exc, ValueError)
    assert exc.reason == f"module {plugin.__name__} is not imported in the caller"
    assert plugin.__name__ not in sys.modules


def test_a_rebuild_that_fails_says_what_it_raised(make_module: MakeModule) -> None:
    plugin = make_module(
        """
        class Stubborn(ValueError):
            def __new__(cls, a, b):
                return super().__new__(cls, a)

            def __init__(self, a, b):
                super().__init__(a)

        def fail():
            raise Stubborn(1, 2)
        """
    )
    exc = _serialization.exception_from_failure(failure_of(plugin.fail))
    assert isinstance(exc, RemoteError)
    assert isinstance(exc, ValueError)  # Stubborn itself cannot be a base: its __new__ refuses
    assert exc.reason is not None
    assert exc.reason.startswith("rebuilding it raised TypeError")


# -- 3. a target module that cannot be found -------------------------------------------------


@pytest.mark.parametrize("module_name", ["no_such_module_anywhere", "no_such_package_anywhere.sub"])
def test_a_missing_target_module_says_where_the_worker_looked(module_name: str) -> None:
    exc = _serialization.exception_from_failure(failure_of(_worker.resolve, _worker.BY_NAME, (module_name, "run")))
    assert type(exc) is ModuleNotFoundError
    text = text_of(exc)
    assert f"the worker looked for {module_name!r} on sys.path {sys.path[:4]!r}" in text
    assert f"with cwd {os.getcwd()!r}" in text


def test_a_missing_attribute_of_main_suggests_run() -> None:
    exc = _serialization.exception_from_failure(
        failure_of(_worker.resolve, _worker.BY_NAME, ("__main__", "no_such_function_anywhere"))
    )
    assert type(exc) is AttributeError
    assert "pass the function itself to run()" in text_of(exc)


def test_pool_missing_target_module_names_the_workers_path(modules: ModuleFolder) -> None:
    """End to end: the worker's sys.path head (here the pool's PYTHONPATH) and its cwd; a
    module that imports a missing dependency gets no such note (the target was found)."""
    modules.write("needs_missing.py", "import no_such_dependency_anywhere\n")
    with freshproc.Pool(1, env=modules.env, cwd=str(modules.root)) as pool:
        with pytest.raises(ModuleNotFoundError) as info:
            pool.call_sync("no_such_plugin_anywhere", "run")
        assert repr(str(modules.root)) in text_of(info.value)
        assert f"with cwd {str(modules.root)!r}" in text_of(info.value)
        with pytest.raises(ModuleNotFoundError, match="no_such_dependency_anywhere") as info:
            pool.call_sync("needs_missing", "run")
        assert "the worker looked for" not in text_of(info.value)
        with pytest.raises(AttributeError) as attribute_info:
            pool.call_sync("__main__", "main")
        assert "pass the function itself to run()" in text_of(attribute_info.value)


def test_add_note_appends_to_the_message_without_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python 3.10 way (no add_note): ImportError prints .msg, others their args."""
    monkeypatch.setattr(sys, "version_info", (3, 10, 0))
    missing = ModuleNotFoundError("No module named 'x'", name="x")
    _worker._add_note(missing, "a hint")
    assert str(missing) == "No module named 'x'\na hint"
    assert str(pickle.loads(pickle.dumps(missing))) == "No module named 'x'\na hint"
    attribute = AttributeError("no attribute 'f'")
    _worker._add_note(attribute, "a hint")
    assert str(attribute) == "no attribute 'f'\na hint"
    assert not hasattr(missing, "__notes__")


# -- 4. coroutine targets on the caller's async library --------------------------------------


async def needs_trio() -> str:
    import trio.lowlevel

    await trio.lowlevel.checkpoint()
    return "ran on trio"


async def fails_on_trio() -> None:
    import trio.lowlevel

    await trio.lowlevel.checkpoint()
    raise LookupError("raised on trio")


async def needs_asyncio() -> str:
    await asyncio.sleep(0)
    return "ran on asyncio"


def execute(request: tuple[object, ...]) -> object:
    """Run one request through the worker's ``_execute``, in this process; return the
    result or raise the rebuilt exception."""
    outgoing = _serialization.dumps_to_wire(request, "arguments", direct=False)
    reply, answer = _worker._execute(1, outgoing.payload, outgoing.fds)
    try:
        data, buffers = _serialization.from_wire(reply.payload, answer.fds, os.getpid())
        answer.fds = []  # from_wire closed them
        if isinstance(reply, CallResult):
            return _serialization.loads_received(data, buffers, "result")
        assert isinstance(reply, CallFailure)
        failure, _ = _serialization.loads_failure(data)
        raise _serialization.exception_from_failure(failure)
    finally:
        answer.close()


def test_a_coroutine_target_runs_on_trio_when_the_request_names_trio() -> None:
    assert execute((_worker.BY_VALUE, needs_trio, (), {}, False, "trio")) == "ran on trio"


def test_a_coroutine_that_raises_on_trio_comes_back_with_its_type() -> None:
    with pytest.raises(LookupError, match="raised on trio"):
        execute((_worker.BY_VALUE, fails_on_trio, (), {}, False, "trio"))


def test_a_coroutine_target_runs_on_asyncio_when_the_request_names_asyncio() -> None:
    assert execute((_worker.BY_VALUE, needs_asyncio, (), {}, False, "asyncio")) == "ran on asyncio"
    with pytest.raises(RuntimeError):  # trio's checkpoint is a "bad yield" to asyncio
        execute((_worker.BY_VALUE, needs_trio, (), {}, False, "asyncio"))


def test_an_unknown_async_library_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown async library 'curio'"):
        execute((_worker.BY_VALUE, needs_asyncio, (), {}, False, "curio"))


# -- end to end --------------------------------------------------------------------------------

PLUGIN = """
class BadInput(ValueError):
    pass

def check(value):
    raise BadInput(f"bad value {value}")
"""


async def test_pool_remote_error_is_caught_by_its_builtin_base(modules: ModuleFolder) -> None:
    modules.write("e2e_plugin.py", PLUGIN)
    async with freshproc.Pool(1, env=modules.env) as pool:
        with pytest.raises(ValueError, match="bad value -1") as info:
            await pool.call("e2e_plugin", "check", -1)
    assert isinstance(info.value, freshproc.RemoteError)
    assert info.value.type_name == "e2e_plugin.BadInput"
    assert info.value.module == "e2e_plugin"
    assert "e2e_plugin" not in sys.modules


def test_pool_custom_exceptions_keep_their_type_and_attributes() -> None:
    with freshproc.Pool(1) as pool:
        with pytest.raises(PluginError, match="bad code") as info:
            pool.call_sync("tests.exception_targets", "raise_plugin_error", 7, "bad code")
        assert info.value.code == 7
        with pytest.raises(NoPickle) as no_pickle:
            pool.call_sync("tests.exception_targets", "raise_no_pickle", "no", "details")
        assert no_pickle.value.detail == "details"
