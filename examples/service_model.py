"""A model served by a freshproc service: loaded once, called many times, brought back
after its native code crashes and after it fails its health check.

The "model" is a big lookup table that takes a while to build. ``freshproc.service``
builds it once, in a supervised worker process, and keeps it there: each call is a quick
round trip. When a call crashes that process (here a segfault in native code, through
ctypes), the call raises ``WorkerCrashedError`` and the next call is served by a new
process with a rebuilt object. A ``health`` method that starts failing gets its process
restarted the same way, without any call failing.

Run it: ``python examples/service_model.py``
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
import time

from _support import expect

import freshproc

#: Entries in the table: large enough that building it is visibly slow.
TABLE_SIZE = 400_000
LOOKUPS = 2_000
#: Seconds between health checks (the default is 10; short here to keep the run short).
HEALTH_INTERVAL = 0.2
#: Seconds any single wait in this script may take before it counts as a failure.
DEADLINE = 30.0


class Model:
    """Builds a big table once (the slow part), then answers lookups from it."""

    def __init__(self, size: int) -> None:
        started = time.perf_counter()
        self.table = {key: key * key for key in range(size)}
        self.build_seconds = time.perf_counter() - started
        self.built_at = time.time()
        self.healthy = True

    def lookup(self, key: int) -> int:
        return self.table[key]

    def info(self) -> tuple[int, float, float]:
        """(the pid serving it, when the object was built, how long the build took)."""
        return os.getpid(), self.built_at, self.build_seconds

    def native_crash(self) -> None:
        """A bug in native code: read address 0 through ctypes (a segfault)."""
        import ctypes

        ctypes.string_at(0)

    def corrupt(self) -> None:
        """From now on, the health check fails."""
        self.healthy = False

    def health(self) -> None:
        if not self.healthy:
            raise RuntimeError("the table is corrupted")


class RestartSeen(logging.Handler):
    """Sets ``event`` when the service's supervisor records a restart for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(logging.INFO)
        self.reason = reason
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "reason", None) == self.reason and "restarting" in record.getMessage():
            self.event.set()


def wait_for_exit(pid: int, timeout: float) -> None:
    """Wait (without polling) until process ``pid`` has exited, through a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        expect(bool(readable), f"process {pid} exits within {timeout} s")
    finally:
        os.close(fd)


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="    (log) %(name)s: %(message)s")
    health_restart = RestartSeen("unhealthy")
    service_log = logging.getLogger("freshproc.service")
    service_log.setLevel(logging.INFO)
    service_log.addHandler(health_restart)

    options = freshproc.ServiceOptions(health="health", health_interval=HEALTH_INTERVAL)
    started = time.perf_counter()
    with freshproc.service(Model, TABLE_SIZE, options=options) as svc:
        pid, built_at, build_seconds = svc.call_sync(Model.info)
        print(f"1. Built the model once in process {pid}: {TABLE_SIZE:,} entries in {build_seconds * 1e3:.0f} ms")
        print(f"   (the service was ready {time.perf_counter() - started:.2f} s after it was asked for).")

        began = time.perf_counter()
        answers = [svc.call_sync(Model.lookup, key) for key in range(LOOKUPS)]
        per_call = (time.perf_counter() - began) / LOOKUPS
        expect(answers == [key * key for key in range(LOOKUPS)], "every lookup answers from the table")
        expect(svc.call_sync(Model.info)[:2] == (pid, built_at), "the lookups reuse the one object")
        print(f"2. {LOOKUPS:,} lookups from that one object: {per_call * 1e6:.0f} µs per call.")

        print("3. A call segfaults in native code (ctypes.string_at(0)):")
        try:
            svc.call_sync(Model.native_crash)
        except freshproc.WorkerCrashedError as exc:
            expect(exc.signal == signal.SIGSEGV, "the crash is reported as SIGSEGV")
            expect(exc.pid == pid, "the crashed process is the model's")
            print(f"   the call raised WorkerCrashedError: {exc}")
        else:
            expect(False, "a segfaulting call raises WorkerCrashedError")
        new_pid, new_built_at, _ = svc.call_sync(Model.info)
        expect(new_pid != pid, "the next call runs in a new process")
        expect(new_built_at > built_at, "the new process built its own object")
        expect(svc.call_sync(Model.lookup, 12) == 144, "the rebuilt model answers")
        print(f"   the next call was served by process {new_pid}, with the model rebuilt; restarts = {svc.restarts}.")
        expect(svc.restarts == 1, "one restart so far")

        print(f"4. The model goes bad: its health() starts failing (checked every {HEALTH_INTERVAL} s while idle).")
        svc.call_sync(Model.corrupt)
        expect(health_restart.event.wait(DEADLINE), "the failed health check restarts the process")
        wait_for_exit(new_pid, DEADLINE)
        third_pid, third_built_at, _ = svc.call_sync(Model.info)
        expect(third_pid != new_pid and third_built_at > new_built_at, "a new process with a new object")
        expect(svc.call_sync(Model.lookup, 3) == 9, "the model answers again")
        print(f"   process {new_pid} was restarted without a failed call; process {third_pid} serves now.")
        print(f"5. svc.restarts = {svc.restarts}: one after the crash, one after the failed health check.")
        expect(svc.restarts == 2, "two restarts in all")
    print(f"Done in {time.perf_counter() - started:.1f} s; the service closed its process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
