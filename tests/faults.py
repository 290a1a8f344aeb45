"""Targets that misbehave in every way a worker can, run inside workers by the fault
tests and the stress campaign. Each is deterministic: none waits on a clock."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading

from tests.handshake import signal_started, wait_go


def ok(value: int) -> int:
    return value


def segfault() -> None:
    ctypes.string_at(0)


def abort() -> None:
    os.abort()


def exit_now(code: int) -> None:
    os._exit(code)


def raise_error(message: str) -> None:
    raise ValueError(message)


def unpicklable_result() -> object:
    return threading.Lock()


def large_result(size: int) -> bytes:
    return b"x" * size


def allocate(size: int) -> int:
    block = bytearray(size)
    return len(block)


def hang(*_ignored: object) -> None:
    threading.Event().wait()


def handshake_then_hang(spec: str) -> None:
    signal_started(spec)
    threading.Event().wait()


def handshake_then_pid(spec: str) -> int:
    signal_started(spec)
    wait_go(spec)
    return os.getpid()


def ignore_sigterm_then_hang(spec: str) -> None:
    """Traps SIGTERM: only SIGKILL after the grace period ends it."""
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal_started(spec)
    threading.Event().wait()


def finish_on_sigterm(spec: str) -> str:
    """Returns a value as soon as SIGTERM arrives: a result that comes just after the
    deadline, which must never reach another call."""
    finished = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: finished.set())
    signal_started(spec)
    finished.wait()
    return "LATE RESULT"


def start_child_then_hang(spec: str, pid_file: str) -> None:
    """Starts a subprocess (which must not outlive the call), then hangs."""
    child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait()"])
    with open(pid_file, "w") as file:
        file.write(str(child.pid))
    signal_started(spec)
    threading.Event().wait()


def print_then_return(text: str) -> str:
    print(text)
    print(f"err:{text}", file=sys.stderr)
    return text.upper()


def print_then_raise(text: str) -> None:
    print(text)
    raise KeyError(text)


def write_native_stdout(text: str) -> int:
    """Writes below Python's sys.stdout, straight to descriptor 1."""
    return os.write(1, text.encode())


def flood_stderr(megabytes: int) -> int:
    chunk = b"e" * (1 << 20)
    for _ in range(megabytes):
        os.write(2, chunk)
    return megabytes


def worker_pid() -> int:
    return os.getpid()


def corrupt_own_channel() -> None:
    """Writes a malformed frame into the worker's own channel, as a broken worker would."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_SEQPACKET:
                sock.send(b"not a frame at all")
                threading.Event().wait()
        finally:
            sock.close()


def crash_holding(data: object) -> None:
    """Segfaults while its large argument (a mapped segment) is alive."""
    assert data is not None
    segfault()


def hang_holding(data: object, spec: str) -> None:
    assert data is not None
    handshake_then_hang(spec)


def echo(data: object) -> object:
    return data


def print_then_die(text: str, how: str, spec: str = "") -> None:
    """Print to stdout and stderr, then die ``how``: "segfault", "exit", "sigkill", or
    "hang" (after signalling ``spec``, for a timeout or a cancellation to end it)."""
    print(text)
    print(f"err:{text}", file=sys.stderr)
    if how == "segfault":
        segfault()
    elif how == "exit":
        os._exit(3)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    signal_started(spec)
    threading.Event().wait()


_kept: list[bytearray] = []


def allocate_and_keep(size: int) -> int:
    """Grow the worker's own memory by ``size`` bytes (touched, so resident) for good."""
    block = bytearray(size)
    block[::4096] = b"x" * len(block[::4096])
    _kept.append(block)
    return len(block)


def block_on(value: int, blocked: int, spec: str) -> int:
    """Return ``value``; the item ``blocked`` first signals ``spec`` and waits for it."""
    if value == blocked:
        signal_started(spec)
        wait_go(spec)
    return value


def fail_on(value: int, failing: int) -> int:
    if value == failing:
        raise ValueError(f"item {value} fails")
    return value


def first_element(data: object) -> int:
    return int(data[0])  # type: ignore[index]
