"""Lifecycle logging: each event is one record on the ``freshproc`` logger, at its level,
with structured fields (``pool``, ``pid``, ``reason``, ``target``, ``event``), and a call
that simply succeeds logs nothing.

Records of events the supervisor thread handles (a worker started or expired, the template
lost) may be emitted just after the caller was woken: tests read them once that thread has
ended (``close`` joins it), never after a sleep.
"""

from __future__ import annotations

import logging
import os
import signal

import anyio
import anyio.to_thread
import psutil
import pytest

import freshproc
from tests.handshake import Handshake

pytestmark = pytest.mark.timeout(60)

STRUCTURED_FIELDS = ("pool", "pid", "reason", "target", "event")


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="freshproc")
    return caplog


def structured(record: logging.LogRecord) -> dict[str, object]:
    """The record's structured fields."""
    return {name: getattr(record, name) for name in STRUCTURED_FIELDS}


def records_of(caplog: pytest.LogCaptureFixture, pool: freshproc.Pool, event: str) -> list[logging.LogRecord]:
    """The pool's records of one kind of event, after checking that every record on the
    ``freshproc`` logger carries the structured fields."""
    ours = [record for record in caplog.records if record.name == "freshproc"]
    for record in ours:
        missing = [name for name in STRUCTURED_FIELDS if not hasattr(record, name)]
        assert not missing, f"{record.getMessage()!r} lacks {missing}"
    wanted = {"pool": pool._workers.pool_id, "event": event}
    return [record for record in ours if {name: getattr(record, name) for name in wanted} == wanted]


def only_record(caplog: pytest.LogCaptureFixture, pool: freshproc.Pool, event: str) -> logging.LogRecord:
    records = records_of(caplog, pool, event)
    assert len(records) == 1, [record.getMessage() for record in records]
    return records[0]


def gone_within(pid: int, *, seconds: float) -> bool:
    """Wait for a process (the template's child, not ours) to end; a zombie has ended."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    _, alive = psutil.wait_procs([process], timeout=seconds)
    return all(proc.status() == psutil.STATUS_ZOMBIE for proc in alive if proc.is_running())


def test_template_start_is_info_with_the_template_pid(caplog_debug: pytest.LogCaptureFixture) -> None:
    """Starting the pool logs one INFO record naming the template's pid."""
    with freshproc.Pool(1) as pool:
        record = only_record(caplog_debug, pool, "template_started")
        assert record.levelno == logging.INFO
        assert structured(record) == {
            "pool": pool._workers.pool_id,
            "pid": pool.template_pid,
            "reason": None,
            "target": None,
            "event": "template_started",
        }
        assert str(pool.template_pid) in record.getMessage()


def test_worker_start_is_debug_with_the_worker_pid(caplog_debug: pytest.LogCaptureFixture) -> None:
    """The worker that serves the first call was logged at DEBUG when it started."""
    with freshproc.Pool(1) as pool:
        pid = pool.call_sync("tests.faults", "worker_pid")
    record = only_record(caplog_debug, pool, "worker_started")
    assert record.levelno == logging.DEBUG
    assert structured(record) == {
        "pool": pool._workers.pool_id,
        "pid": pid,
        "reason": None,
        "target": None,
        "event": "worker_started",
    }


@pytest.mark.parametrize(
    ("max_calls", "fresh", "reason"),
    [
        pytest.param(1, False, "max_calls_per_worker", id="max_calls_per_worker"),
        pytest.param(None, True, "fresh", id="fresh"),
    ],
)
def test_retirement_by_policy_is_debug_with_the_policy_as_reason(
    caplog_debug: pytest.LogCaptureFixture, max_calls: int | None, fresh: bool, reason: str
) -> None:
    """A worker retired by a policy after its call is logged at DEBUG, with the policy
    that retired it as ``reason`` (and in the message)."""
    with freshproc.Pool(1, max_calls_per_worker=max_calls, fresh=fresh) as pool:
        pid = pool.call_sync("tests.faults", "worker_pid")
        record = only_record(caplog_debug, pool, "worker_retired")
    assert record.levelno == logging.DEBUG
    assert structured(record) == {
        "pool": pool._workers.pool_id,
        "pid": pid,
        "reason": reason,
        "target": None,
        "event": "worker_retired",
    }
    assert reason in record.getMessage()


def test_recycling_is_debug_per_worker(caplog_debug: pytest.LogCaptureFixture) -> None:
    """``recycle()`` logs each idle worker it ends, at DEBUG."""
    with freshproc.Pool(1) as pool:
        pid = pool.call_sync("tests.faults", "worker_pid")
        pool.recycle()
        record = only_record(caplog_debug, pool, "worker_recycled")
    assert record.levelno == logging.DEBUG
    assert structured(record) == {
        "pool": pool._workers.pool_id,
        "pid": pid,
        "reason": None,
        "target": None,
        "event": "worker_recycled",
    }


def test_idle_expiry_is_debug(caplog_debug: pytest.LogCaptureFixture) -> None:
    """A worker that outlives ``idle_timeout`` while idle is logged as expired, at DEBUG."""
    with freshproc.Pool(1, idle_timeout=0.1) as pool:
        pid = pool.call_sync("tests.faults", "worker_pid")
        assert gone_within(pid, seconds=20)  # it is ended once idle_timeout has passed
    record = only_record(caplog_debug, pool, "worker_expired")
    assert record.levelno == logging.DEBUG
    assert structured(record) == {
        "pool": pool._workers.pool_id,
        "pid": pid,
        "reason": None,
        "target": None,
        "event": "worker_expired",
    }
    assert not records_of(caplog_debug, pool, "worker_closed")


def test_a_crash_is_a_warning_with_the_signal_and_the_target(caplog_debug: pytest.LogCaptureFixture) -> None:
    """A worker that segfaults mid-call is logged at WARNING: its pid, the call it ran as
    ``target``, and the signal that ended it in the message."""
    with freshproc.Pool(1) as pool:
        with pytest.raises(freshproc.WorkerCrashedError) as info:
            pool.call_sync("tests.faults", "segfault")
        record = only_record(caplog_debug, pool, "worker_crashed")
    assert record.levelno == logging.WARNING
    assert structured(record) == {
        "pool": pool._workers.pool_id,
        "pid": info.value.pid,
        "reason": None,
        "target": "tests.faults:segfault",
        "event": "worker_crashed",
    }
    assert "tests.faults:segfault" in record.getMessage()
    assert "SIGSEGV" in record.getMessage()


def test_a_timeout_is_a_warning_naming_the_target(caplog_debug: pytest.LogCaptureFixture) -> None:
    """A call that outlives the policy timeout is logged at WARNING with its target and
    the pid of the worker that was ended."""
    with freshproc.Pool(1, timeout=0.2, grace_period=0.2) as pool:
        pid = pool.call_sync("tests.faults", "worker_pid")
        with pytest.raises(freshproc.CallTimeoutError):
            pool.call_sync("tests.faults", "hang")
        record = only_record(caplog_debug, pool, "worker_timed_out")
    assert record.levelno == logging.WARNING
    assert structured(record) == {
        "pool": pool._workers.pool_id,
        "pid": pid,
        "reason": None,
        "target": "tests.faults:hang",
        "event": "worker_timed_out",
    }
    assert "tests.faults:hang" in record.getMessage()


async def test_a_cancelled_call_is_info_naming_the_target(caplog_debug: pytest.LogCaptureFixture) -> None:
    """A call cancelled once its target has signalled that it runs is logged at INFO (a
    cancellation is the caller's choice, not a fault), with its target and worker."""
    async with freshproc.Pool(1) as pool:
        pid = await pool.call("tests.faults", "worker_pid")
        handshake = Handshake()

        async def cancel_when_started(scope: anyio.CancelScope) -> None:
            await anyio.to_thread.run_sync(handshake.wait_started)
            scope.cancel()

        with anyio.move_on_after(60) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_when_started, scope)
                await pool.call("tests.faults", "handshake_then_hang", handshake.spec)
        assert scope.cancelled_caught
        record = only_record(caplog_debug, pool, "worker_cancelled")
    assert record.levelno == logging.INFO
    assert structured(record) == {
        "pool": pool._workers.pool_id,
        "pid": pid,
        "reason": None,
        "target": "tests.faults:handshake_then_hang",
        "event": "worker_cancelled",
    }


def test_a_lost_template_is_a_warning_with_its_pid(caplog_debug: pytest.LogCaptureFixture) -> None:
    """A template killed with SIGKILL is logged at WARNING, with its pid and why it was
    lost; the next call starts a new one and succeeds."""
    with freshproc.Pool(1) as pool:
        worker = pool.call_sync("tests.faults", "worker_pid")
        template, supervisor = pool.template_pid, pool._workers._supervisor
        assert template is not None
        assert supervisor is not None
        os.kill(template, signal.SIGKILL)
        assert gone_within(worker, seconds=10)  # its workers die with it
        assert pool.call_sync("tests.faults", "ok", 2) == 2
        assert pool.template_pid not in (None, template)
        supervisor.join()  # the lost template's supervisor logs the loss, then ends
        record = only_record(caplog_debug, pool, "template_lost")
    assert record.levelno == logging.WARNING
    fields = structured(record)
    assert fields["reason"]
    assert fields == {
        "pool": pool._workers.pool_id,
        "pid": template,
        "reason": fields["reason"],
        "target": None,
        "event": "template_lost",
    }
    assert str(fields["reason"]) in record.getMessage()
    assert len(records_of(caplog_debug, pool, "template_started")) == 2


def test_a_warm_call_logs_nothing(caplog_debug: pytest.LogCaptureFixture) -> None:
    """Once the pool is warm, a call that returns (or raises) emits no record at all, even
    with the logger at DEBUG."""
    with freshproc.Pool(1) as pool:
        assert pool.call_sync("tests.faults", "ok", 1) == 1
        caplog_debug.clear()
        assert pool.call_sync("tests.faults", "ok", 2) == 2
        with pytest.raises(ValueError, match="plain failure"):
            pool.call_sync("tests.faults", "raise_error", "plain failure")
        assert [record.getMessage() for record in caplog_debug.records] == []


def test_at_warning_a_healthy_pool_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """With the logger at WARNING, a pool's whole healthy life (start, calls that return or
    raise, recycle, close) emits no record."""
    caplog.set_level(logging.WARNING, logger="freshproc")
    with freshproc.Pool(2) as pool:
        assert pool.call_sync("tests.faults", "ok", 1) == 1
        with pytest.raises(ValueError, match="plain failure"):
            pool.call_sync("tests.faults", "raise_error", "plain failure")
        pool.recycle()
        assert pool.call_sync("tests.faults", "ok", 2) == 2
    assert [record.getMessage() for record in caplog.records if record.name == "freshproc"] == []
