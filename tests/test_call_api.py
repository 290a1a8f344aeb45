"""The call API as users meet it: keyword arguments everywhere, names in messages, the
output of calls that died, methods, memory accounting, and blocking calls in loops."""

from __future__ import annotations

import functools
import threading
import warnings

import anyio
import pytest

import freshproc
from tests.conftest import ModuleFolder
from tests.handshake import Handshake


def takes_keywords(xs: list[int], *, fn: int = 0, timeout: str = "") -> tuple[list[int], int, str]:
    return xs, fn, timeout


def echo_kwargs(**kwargs: object) -> dict[str, object]:
    return kwargs


class Tool:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    @freshproc.isolated
    def scale(self, value: int) -> tuple[int, int]:
        import os

        return value * self.factor, os.getpid()

    @freshproc.isolated
    async def scale_async(self, value: int) -> int:
        return value * self.factor


# -- keyword arguments ----------------------------------------------------------------


def test_run_passes_keyword_arguments_blocking(pool: freshproc.Pool) -> None:
    """Keywords reach the target untouched, even ones named like freshproc's own
    parameters (fn, timeout)."""
    expected = ([1], 2, "t")
    assert pool.run_sync(takes_keywords, xs=[1], fn=2, timeout="t") == expected
    assert freshproc.run_sync(takes_keywords, [1], fn=2, timeout="t") == expected
    captured = pool.run_captured_sync(takes_keywords, xs=[1], fn=2, timeout="t")
    assert captured.value == expected
    assert pool.run_sync(echo_kwargs, fn=1, module="m") == {"fn": 1, "module": "m"}


async def test_run_passes_keyword_arguments_async(pool: freshproc.Pool) -> None:
    expected = ([1], 2, "t")
    assert await pool.run(takes_keywords, xs=[1], fn=2, timeout="t") == expected
    assert await freshproc.run(takes_keywords, [1], fn=2, timeout="t") == expected
    assert (await pool.run_captured(takes_keywords, xs=[1], fn=2, timeout="t")).value == expected


def test_call_captured_sync_returns_value_and_output(pool: freshproc.Pool) -> None:
    captured = pool.call_captured_sync("tests.faults", "print_then_return", "hi")
    assert (captured.value, captured.stdout, captured.stderr) == ("HI", "hi\n", "err:hi\n")


# -- names in messages ------------------------------------------------------------------


def test_crash_and_timeout_messages_name_the_target() -> None:
    with freshproc.Pool(1) as pool:
        with pytest.raises(freshproc.WorkerCrashedError, match=r"while running tests\.faults:segfault"):
            pool.call_sync("tests.faults", "segfault")
        with pytest.raises(freshproc.WorkerCrashedError, match=r"while running tests\.test_call_api\._exit_via"):
            pool.run_sync(functools.partial(_exit_via, 4))
    with (
        freshproc.Pool(1, timeout=0.2) as pool,
        pytest.raises(freshproc.CallTimeoutError, match=r"tests\.faults:hang did not finish within 0\.2 s"),
    ):
        pool.call_sync("tests.faults", "hang")


def _exit_via(code: int) -> None:
    import os

    os._exit(code)


def test_a_crash_of_a_function_names_its_qualified_name(pool: freshproc.Pool) -> None:
    with pytest.raises(freshproc.WorkerCrashedError, match=r"while running tests\.test_call_api\._exit_via"):
        pool.run_sync(_exit_via, 4)


def test_an_unpicklable_argument_is_named(pool: freshproc.Pool) -> None:
    """The message says which argument did not pickle, and its type."""
    with pytest.raises(freshproc.SerializationError, match=r"argument 1 \(a lock\) cannot be pickled"):
        pool.call_sync("tests.faults", "echo", 1, threading.Lock())
    with pytest.raises(freshproc.SerializationError, match=r"keyword argument 'guard' \(a lock\)"):
        pool.run_sync(echo_kwargs, ok=1, guard=threading.Lock())

    class Holder:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def method(self) -> int:
            return 1

    with pytest.raises(freshproc.SerializationError, match=r"self of the bound method \(a Holder\)"):
        pool.run_sync(Holder().method)
    assert pool.stats().calls_served == 0  # nothing reached a worker
    assert pool.call_sync("tests.faults", "ok", 3) == 3


# -- output of calls that died ----------------------------------------------------------


@pytest.mark.parametrize("how", ["segfault", "exit", "sigkill"])
def test_output_before_a_crash_is_attached(how: str) -> None:
    """With capture_output, what a call wrote before its process died is on the
    WorkerCrashedError (captured_output, and a note on 3.11+)."""
    with freshproc.Pool(1, capture_output=True) as pool:
        with pytest.raises(freshproc.WorkerCrashedError) as caught:
            pool.call_sync("tests.faults", "print_then_die", "before the end", how)
        stdout, stderr = caught.value.captured_output  # type: ignore[attr-defined]
        assert stdout == "before the end\n"
        assert stderr.startswith("err:before the end\n")
        assert pool.call_sync("tests.faults", "ok", 1) == 1


def test_a_fault_handler_stack_is_in_the_captured_output() -> None:
    """PYTHONFAULTHANDLER=1 in the pool's env: the segfault's Python stack is captured."""
    with freshproc.Pool(1, capture_output=True, env={"PYTHONFAULTHANDLER": "1"}) as pool:
        with pytest.raises(freshproc.WorkerCrashedError) as caught:
            pool.call_sync("tests.faults", "print_then_die", "x", "segfault")
        _, stderr = caught.value.captured_output  # type: ignore[attr-defined]
        assert "Fatal Python error: Segmentation fault" in stderr
        assert "print_then_die" in stderr


def test_output_before_a_timeout_is_attached() -> None:
    handshake = Handshake()
    with freshproc.Pool(1, capture_output=True, timeout=0.5) as pool:
        with pytest.raises(freshproc.CallTimeoutError) as caught:
            pool.call_sync("tests.faults", "print_then_die", "slow", "hang", handshake.spec)
        assert caught.value.captured_output[0] == "slow\n"  # type: ignore[attr-defined]


async def test_output_before_a_cancellation_is_attached() -> None:
    handshake = Handshake()
    with freshproc.Pool(1, capture_output=True) as pool:
        errors: list[BaseException] = []

        async def call() -> None:
            try:
                await pool.call("tests.faults", "print_then_die", "cancelled", "hang", handshake.spec)
            except BaseException as exc:
                errors.append(exc)
                raise

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await anyio.to_thread.run_sync(handshake.wait_started)
            group.cancel_scope.cancel()
        assert errors
        assert errors[0].captured_output[0] == "cancelled\n"  # type: ignore[attr-defined]


# -- isolated methods -------------------------------------------------------------------


def test_isolated_method_binds_like_a_function() -> None:
    """@isolated on a method: the instance travels with the call (by value)."""
    import os

    value, pid = Tool(3).scale(5)
    assert value == 15
    assert pid != os.getpid()
    assert Tool.scale(Tool(2), 4)[0] == 8  # looked up on the class: a plain function


async def test_isolated_method_awaits() -> None:
    assert (await Tool(3).scale.aio(2))[0] == 6
    assert await Tool(4).scale_async(2) == 8


# -- memory accounting ------------------------------------------------------------------


def test_max_memory_does_not_count_the_templates_shared_pages(modules: ModuleFolder) -> None:
    """A 100 MiB preload is shared copy-on-write by every worker: max_memory below it
    must not recycle a worker after every call (its own memory is small)."""
    modules.write(
        "bigmodel.py", "WEIGHTS = bytearray(100 * 1024 * 1024)\nWEIGHTS[::4096] = b'x' * len(WEIGHTS[::4096])\n"
    )
    with freshproc.Pool(1, preload=["bigmodel"], env=modules.env, max_memory="60MiB") as pool:
        pids = {pool.call_sync("os", "getpid") for _ in range(5)}
        assert len(pids) == 1
        assert pool.stats().workers_retired == 0
        # A call that makes the worker's own memory large still recycles it.
        pool.call_sync("tests.faults", "allocate_and_keep", 100 * 1024 * 1024)
        assert pool.stats().workers_retired == 1


# -- blocking calls where an event loop runs --------------------------------------------


async def test_call_sync_in_an_event_loop_thread_warns_once(pool: freshproc.Pool) -> None:
    from freshproc import _call

    _call._warned_loop_thread = False
    with pytest.warns(RuntimeWarning, match=r"await pool\.call"):
        assert pool.call_sync("tests.faults", "ok", 1) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pool.call_sync("tests.faults", "ok", 2) == 2  # once only
