"""The raw limits: what the operating system does for the same job with no library at all.

raw-pipe: bytes over a pair of os.pipe()s to a forked child. raw-fork: fork a child per
call, pickle its result back over a pipe, waitpid. raw-memcpy: one in-process numpy copy.
raw-exec: start a new interpreter and read one result from it. raw-fork-answer: fork a
child that answers one pipe ping (the floor for restarting a service's process).
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from benchmarks import memory
from benchmarks.contenders.base import Contender, Measurement
from benchmarks.timing import repeat
from benchmarks.workloads import Plan, Workload, task_call

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

MESSAGE = b"01234567"
_CHUNK = 1 << 20
#: Enough for a result pickle; larger ones are read to end of file.
_SMALL = 1 << 16


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_exact(fd: int, size: int, into: memoryview | None = None) -> memoryview:
    """Read exactly ``size`` bytes (into ``into`` if given)."""
    buffer = into if into is not None else memoryview(bytearray(size))
    done = 0
    while done < size:
        got = os.readv(fd, [buffer[done:size]])
        if got == 0:
            raise EOFError(f"pipe closed after {done} of {size} bytes")
        done += got
    return buffer[:size]


def read_to_end(fd: int) -> bytes:
    parts = []
    while part := os.read(fd, _SMALL):
        parts.append(part)
    return b"".join(parts)


def _echo(inbound: int, outbound: int) -> None:
    """Child loop: send back whatever arrives."""
    while data := os.read(inbound, _CHUNK):
        write_all(outbound, data)


def _sink(size: int) -> Callable[[int, int], None]:
    """Child loop: read ``size`` bytes at a time, acknowledging each block with 8 bytes."""

    def loop(inbound: int, outbound: int) -> None:
        buffer = memoryview(bytearray(_CHUNK))
        while True:
            done = 0
            while done < size:
                got = os.readv(inbound, [buffer[: min(_CHUNK, size - done)]])
                if got == 0:
                    return
                done += got
            write_all(outbound, MESSAGE)

    return loop


@contextmanager
def forked(child: Callable[[int, int], None]) -> Iterator[tuple[int, int, int]]:
    """Fork a child that runs ``child(inbound, outbound)`` on two pipes; yield its pid and
    the parent's ends (to the child, from the child). Closing them ends the child."""
    to_child_read, to_child_write = os.pipe()
    from_child_read, from_child_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(to_child_write)
            os.close(from_child_read)
            child(to_child_read, from_child_write)
            code = 0
        finally:
            os._exit(code)
    os.close(to_child_read)
    os.close(from_child_write)
    try:
        yield pid, to_child_write, from_child_read
    finally:
        os.close(to_child_write)
        os.close(from_child_read)
        os.waitpid(pid, 0)


def fork_call(fn: Callable[[Any], object], arg: object) -> object:
    """Run ``fn(arg)`` in a forked child and unpickle its result from a pipe."""
    pid, read_fd = _fork_child(fn, arg)
    try:
        data = read_to_end(read_fd)
    finally:
        os.close(read_fd)
    _reap(pid)
    return pickle.loads(data)


def fork_batch(fn: Callable[[Any], object], args: list[object], in_flight: int = 2) -> list[object]:
    """``fork_call`` for every argument, at most ``in_flight`` children at a time. Results
    must fit in a pipe buffer: a child is read only once it has exited."""
    results: list[object] = [None] * len(args)
    running: dict[int, tuple[int, int]] = {}  # pid -> (index, read end)
    pending = iter(enumerate(args))

    def start(count: int) -> None:
        for index, arg in itertools.islice(pending, count):
            pid, read_fd = _fork_child(fn, arg)
            running[pid] = (index, read_fd)

    start(in_flight)
    while running:
        pid, status = os.wait()
        index, read_fd = running.pop(pid)
        try:
            data = read_to_end(read_fd)
        finally:
            os.close(read_fd)
        _check_status(pid, status)
        results[index] = pickle.loads(data)
        start(1)
    return results


def _fork_child(fn: Callable[[Any], object], arg: object) -> tuple[int, int]:
    """Fork a child that pickles ``fn(arg)`` into a pipe; its pid and the read end."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            write_all(write_fd, pickle.dumps(fn(arg), protocol=5))
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _reap(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    _check_status(pid, status)


def _check_status(pid: int, status: int) -> None:
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"child {pid} failed with status {status}")


class RawPipe(Contender):
    """8-byte messages and large buffers over os.pipe() (default 64 KiB pipe buffer)."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        if workload.key in ("A", "S1"):
            return self._ping_pong(plan)
        if workload.key == "B":
            return self._pipelined(plan)
        if workload.key == "E1":
            return self._one_way(plan)
        if workload.key == "E2":
            return self._round_trip(plan)
        raise ValueError(f"raw-pipe has no {workload.key}")

    def _ping_pong(self, plan: Plan) -> Measurement:
        with forked(_echo) as (_, to_child, from_child):

            def round_trip() -> bytes:
                os.write(to_child, MESSAGE)
                return bytes(read_exact(from_child, len(MESSAGE)))

            for _ in range(plan.warmup):
                round_trip()
            samples, last = repeat(round_trip, plan.calls, plan)
        _expect(last == MESSAGE)
        return Measurement(samples, ["8-byte ping-pong with a forked echo child"])

    def _pipelined(self, plan: Plan) -> Measurement:
        size = plan.calls * len(MESSAGE)
        into = memoryview(bytearray(size))
        with forked(_echo) as (_, to_child, from_child):

            def batch() -> memoryview:
                writer = threading.Thread(target=_write_messages, args=(to_child, plan.calls))
                writer.start()
                try:
                    return read_exact(from_child, size, into)
                finally:
                    writer.join()

            samples, last = repeat(batch, plan.repeats, plan)
        _expect(bytes(last[-len(MESSAGE) :]) == MESSAGE)
        return Measurement(samples, ["one write() per 8-byte message; the child echoes in chunks"])

    def _one_way(self, plan: Plan) -> Measurement:
        data = _array_bytes(plan)
        with forked(_sink(len(data))) as (_, to_child, from_child):

            def send() -> bytes:
                write_all(to_child, data)
                return bytes(read_exact(from_child, len(MESSAGE)))

            for _ in range(plan.warmup):
                send()
            samples, last = repeat(send, plan.calls, plan)
        _expect(last == MESSAGE)
        return Measurement(samples, ["write to a forked child that reads it, then an 8-byte ack"])

    def _round_trip(self, plan: Plan) -> Measurement:
        data = _array_bytes(plan)
        into = memoryview(bytearray(len(data)))
        with forked(_echo) as (_, to_child, from_child):

            def send() -> memoryview:
                writer = threading.Thread(target=write_all, args=(to_child, data))
                writer.start()
                try:
                    return read_exact(from_child, len(data), into)
                finally:
                    writer.join()

            for _ in range(plan.warmup):
                send()
            samples, last = repeat(send, plan.calls, plan)
        _expect(last == data)
        return Measurement(samples, ["through a forked child that echoes it, writing and reading at once"])


class RawFork(Contender):
    """A fork per call: the floor for a fresh process per call."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        fn, arg, check = task_call(workload.task, plan)
        if workload.key == "D" and "numpy" in sys.modules:
            raise RuntimeError("numpy is imported in the parent, so a fork would not import it cold")
        if workload.kind == "sequential":
            for _ in range(plan.warmup):
                _expect(check(fork_call(fn, arg)))
            samples, last = repeat(lambda: fork_call(fn, arg), plan.calls, plan)
            _expect(check(last))
            return Measurement(samples, ["fork, run, pickle the result over a pipe, waitpid"])
        if workload.kind == "batch":
            args = [arg] * plan.calls
            samples, results = repeat(lambda: fork_batch(fn, args), plan.repeats, plan)
            _expect(all(check(result) for result in results))
            return Measurement(samples, ["at most 2 forked children at a time"])
        if workload.kind == "memory":
            with forked(_echo) as (pid, to_child, from_child):
                os.write(to_child, MESSAGE)
                read_exact(from_child, len(MESSAGE))
                return Measurement([float(memory.pss(pid))], ["a forked child of the job process, after one echo"])
        start = time.perf_counter()
        with forked(_echo) as (_, to_child, from_child):
            os.write(to_child, MESSAGE)
            read_exact(from_child, len(MESSAGE))
            elapsed = time.perf_counter() - start
        return Measurement([elapsed], ["fork plus one 8-byte round trip"])


class RawForkAnswer(Contender):
    """Fork a child and get one answer from it: the floor for a restart (S2)."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        if workload.kind != "restart":
            raise ValueError(f"raw-fork-answer has no {workload.key}")
        samples: list[float] = []
        deadline = time.perf_counter() + plan.budget
        for index in range(plan.warmup + plan.calls):
            start = time.perf_counter()
            with forked(_echo) as (_, to_child, from_child):
                os.write(to_child, MESSAGE)
                answer = bytes(read_exact(from_child, len(MESSAGE)))
                elapsed = time.perf_counter() - start  # closing and reaping the child are not counted
            _expect(answer == MESSAGE)
            if index >= plan.warmup:
                samples.append(elapsed)
                if len(samples) >= plan.min_samples and time.perf_counter() >= deadline:
                    break
        return Measurement(samples, ["fork, then one 8-byte round trip over os.pipe(); reaping not counted"])


class RawMemcpy(Contender):
    """The array copied in-process: what the bytes cost with no second process."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        import numpy as np  # only this contender needs it

        source = np.arange(plan.array_bytes // 8, dtype=np.float64)
        target = np.empty_like(source)
        copies = 2 if workload.key == "E2" else 1

        def copy() -> npt.NDArray[np.float64]:
            for _ in range(copies):
                np.copyto(target, source)
            return target

        copy()
        samples, last = repeat(copy, plan.calls, plan)
        _expect(bool(np.array_equal(last, source)))
        return Measurement(samples, [f"{copies} numpy copy per sample"])


class RawExec(Contender):
    """A new interpreter writing 8 bytes to a pipe: the floor for starting a template."""

    def measure(self, workload: Workload, plan: Plan) -> Measurement:
        code = f"import os; os.write(1, {MESSAGE!r})"
        start = time.perf_counter()
        with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as child:
            assert child.stdout is not None
            received = child.stdout.read(len(MESSAGE))
            elapsed = time.perf_counter() - start
        _expect(received == MESSAGE and child.returncode == 0)
        return Measurement([elapsed], ["subprocess.Popen of the same interpreter (with site), read 8 bytes"])


def _write_messages(fd: int, count: int) -> None:
    for _ in range(count):
        os.write(fd, MESSAGE)


def _array_bytes(plan: Plan) -> memoryview:
    import numpy as np  # only the transfer workloads need it

    return np.arange(plan.array_bytes // 8, dtype=np.float64).data.cast("B")


def _expect(condition: bool) -> None:
    if not condition:
        raise AssertionError("the raw contender got a wrong result")


def build(name: str) -> Contender:
    contenders: dict[str, Callable[[], Contender]] = {
        "raw-pipe": RawPipe,
        "raw-fork": RawFork,
        "raw-memcpy": RawMemcpy,
        "raw-exec": RawExec,
        "raw-fork-answer": RawForkAnswer,
    }
    return contenders[name]()
