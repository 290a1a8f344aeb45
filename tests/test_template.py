"""The template and standby workers: fresh workers are pristine copies of the template,
which never runs user code, with preload modules present and untouched."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

import freshproc
from tests.conftest import ModuleFolder

pytestmark = pytest.mark.timeout(60)

_COUNTER = """
CALLS = 0
STATE = {"pristine": True}

def bump():
    global CALLS
    CALLS += 1
    STATE["pristine"] = False
    return CALLS
"""


def preloaded_state(name: str) -> tuple[bool, int, bool, int]:
    """(already imported at call start, CALLS, pristine, pid), without importing anything."""
    was_loaded = name in sys.modules
    module = sys.modules[name] if was_loaded else __import__(name)
    return was_loaded, module.CALLS, module.STATE["pristine"], os.getpid()


@pytest.fixture
def counter_pool(modules: ModuleFolder) -> Iterator[freshproc.Pool]:
    modules.write("counter.py", _COUNTER)
    with freshproc.Pool(2, fresh=True, preload=["counter"], env=modules.env) as pool:
        yield pool


def test_standby_workers_have_never_run_a_call(counter_pool: freshproc.Pool) -> None:
    """Every call in a fresh pool finds the preloaded module as the template left it."""
    for _ in range(5):
        assert counter_pool.call_sync("counter", "bump") == 1


def test_preload_modules_are_present_and_pristine_in_every_fresh_worker(counter_pool: freshproc.Pool) -> None:
    pids = set()
    for _ in range(4):
        counter_pool.call_sync("counter", "bump")
        was_loaded, calls, pristine, pid = counter_pool.call_sync("tests.test_template", "preloaded_state", "counter")
        assert (was_loaded, calls, pristine) == (True, 0, True)
        pids.add(pid)
    assert len(pids) == 4


def test_the_template_never_runs_user_code(counter_pool: freshproc.Pool) -> None:
    pids = {counter_pool.call_sync("tests.test_template", "preloaded_state", "counter")[3] for _ in range(3)}
    assert counter_pool.template_pid not in pids
    assert os.getpid() not in pids


def test_recycle_prepares_replacements_ahead(modules: ModuleFolder) -> None:
    modules.write("counter.py", _COUNTER)
    with freshproc.Pool(2, preload=["counter"], env=modules.env) as pool:
        assert pool.call_sync("counter", "bump") == 1
        assert pool.call_sync("counter", "bump") == 2  # warm: the same worker
        pool.recycle()
        assert pool.call_sync("counter", "bump") == 1
        assert pool.stats().workers_recycled >= 1
