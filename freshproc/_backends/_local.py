"""The local backend: workers forked from a clean template process on this machine.

The template is a new interpreter started with ``python -c`` (see ``_template.py``), with
the caller's interpreter flags (``-O``, ``-X dev``, ``-W``, ``-I``...). Its configuration
travels in an anonymous file whose descriptor it inherits, never on its command line. Its
stderr goes to an anonymous file until it reports ready, so a failed start can be
explained with the template's own words; after that it writes to the caller's stderr.

Every descriptor made here is close-on-exec in the caller: a program the caller starts
inherits none of them.
"""

from __future__ import annotations

import _socket
import ast
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

from freshproc import _buffers, _environments, _protocol, _transport
from freshproc._backends._base import Exited, Lost, SourceEvent, Spawned, SpawnFailed, WorkerSourceOptions
from freshproc._errors import ProtocolError, WorkerStartupError, describe_exit
from freshproc._protocol import (
    FilesLoaded,
    Shutdown,
    SpawnWorkers,
    TemplateFailed,
    TemplateReady,
    TerminateWorker,
    WorkerExited,
    WorkerSpawned,
)

_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)

# Load the worker runtime without running freshproc/__init__.py (which imports anyio and
# the pool): a stand-in package points at the same folder (the template removes it at
# once, so that user code importing freshproc gets the real one). The arguments are three
# descriptors: the configuration (the package folder, at most PATH_MAX bytes, a NUL, then
# the pickled settings), the control channel and the caller's stderr. One short line: it
# is what `ps` shows.
_BOOTSTRAP = (
    "import os,sys,types;p=types.ModuleType('freshproc');"
    "p.__path__=[os.fsdecode(os.pread(int(sys.argv[1]),4096,0).split(b'\\0')[0])];sys.modules['freshproc']=p;del p;"
    "import freshproc._template as t;t.main(*map(int,sys.argv[1:]))"
)


def create_source(options: WorkerSourceOptions) -> TemplateSource:
    return TemplateSource(options)


class TemplateSource:
    def __init__(self, options: WorkerSourceOptions) -> None:
        self._options = options
        self._process: subprocess.Popen[bytes] | None = None
        self._control: _socket.socket | None = None  # from _transport.channel_pair
        self._closed = False
        self.direct_copy = False
        self.facts: dict[str, object] = {}
        self.loaded: tuple[int, list[str]] = (0, [])

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        options = self._options
        parent_end, child_end = _transport.channel_pair()
        stderr_capture = os.memfd_create("freshproc-template-stderr", os.MFD_CLOEXEC)
        try:
            caller_stderr = os.dup(2)
        except OSError:
            caller_stderr = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        probe = os.urandom(16)  # the template reads it back to see if direct copy works
        config = pickle.dumps(
            {
                "sys_path": _worker_sys_path(options) if options.sys_path is not None else None,
                "sys_path_prefix": _sys_path_prefix(options),
                "borrowed": dict(options.borrowed or {}),
                "caller_version": tuple(sys.version_info[:3]),
                "preload": list(options.preload),
                "memory_limit": options.memory_limit,
                "max_result_size": options.max_result_size,
                "hosted": options.hosted,
                "owner_pid": os.getpid(),
                "probe": (_buffers.address_of(probe), probe),
                "reload": options.report_loaded,
                "report_calls": options.report_calls,
            }
        )
        config_fd = _config_file(os.fsencode(_PACKAGE_DIR) + b"\0" + config)
        env, _ = _environments.worker_environment(options.env, options.inherit_env)
        command = [
            options.executable or sys.executable,
            *(_interpreter_flags() if options.interpreter_flags else []),
            "-c",
            _BOOTSTRAP,
            str(config_fd),
            str(child_end.fileno()),
            str(caller_stderr),
        ]
        try:
            try:
                self._process = subprocess.Popen(
                    command,
                    pass_fds=(config_fd, child_end.fileno(), caller_stderr),
                    stdin=subprocess.DEVNULL,
                    stderr=stderr_capture,
                    env=env,
                    cwd=options.cwd,
                    start_new_session=True,  # a terminal's Ctrl-C is for the caller only
                )
            except OSError as exc:
                raise WorkerStartupError(f"cannot start the worker template{self._under()}: {exc}") from exc
            finally:
                child_end.close()
                os.close(caller_stderr)
                os.close(config_fd)
            self._control = parent_end
            self._await_ready(stderr_capture)
        except BaseException:
            parent_end.close()
            self._control = None
            self._reap_template(kill=True)
            raise
        finally:
            os.close(stderr_capture)

    def _await_ready(self, stderr_capture: int) -> None:
        assert self._control is not None
        assert self._process is not None
        deadline = time.monotonic() + self._options.startup_timeout
        failure: str
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _transport.wait_readable([self._control.fileno()], remaining):
                    failure = f"the worker template did not start within {self._options.startup_timeout} s"
                    break
                received = _transport.recv(self._control)
                if received is None:
                    code = self._process.wait()
                    failure = f"the worker template {_describe_code(code)} before it was ready"
                    break
                message, _ = received
                match message:
                    case FilesLoaded(started_ns, files):
                        self.loaded = (started_ns, [*self.loaded[1], *files])
                    case TemplateReady(direct_copy=direct_copy, facts=facts):
                        self.direct_copy = direct_copy
                        self.facts = _read_facts(facts)
                        return
                    case TemplateFailed(details):
                        failure = f"the worker template failed to start:\n{details}"
                        break
                    case _:
                        raise ProtocolError(f"unexpected {type(message).__name__} while starting")
        except (OSError, ProtocolError) as exc:
            failure = f"lost the worker template while it started: {exc}"
        stderr = _read_all(stderr_capture).strip()
        if stderr:
            failure += f"\nIts stderr:\n{stderr}"
        if self._options.executable is not None:
            failure = f"python={self._options.executable}: {failure}"
        raise WorkerStartupError(failure, pid=self._process.pid, exitcode=self._process.poll())

    def _under(self) -> str:
        executable = self._options.executable
        return f" under {executable}" if executable is not None else ""

    def spawn(self, count: int) -> None:
        self._send(SpawnWorkers(count))

    def terminate(self, pid: int, grace_seconds: float) -> None:
        self._send(TerminateWorker(pid, grace_seconds))

    def _send(self, message: SpawnWorkers | TerminateWorker | Shutdown) -> None:
        control = self._control
        if control is None:
            return
        try:
            _transport.send(control, message)
        except OSError:
            pass  # the template is gone; read_event reports it

    def read_event(self, timeout: float | None) -> SourceEvent | None:
        control = self._control
        if control is None:
            return Lost("the worker template is closed")
        try:
            if not _transport.wait_readable([control.fileno()], timeout):
                return None
            received = _transport.recv(control)
        except (OSError, ValueError, ProtocolError) as exc:
            return self._lost(f"lost the worker template: {exc}")
        if received is None:
            code = self._process.poll() if self._process else None
            return self._lost(f"the worker template {_describe_code(code)}")
        message, fds = received
        match message:
            case WorkerSpawned(pid):
                return Spawned(pid, socket.socket(fileno=fds[0]))
            case WorkerExited(pid, exitcode, signal):
                return Exited(pid, exitcode, signal)
            case _protocol.SpawnFailed(number, reason):  # the event has the same name
                return SpawnFailed(number, reason)
            case _:
                _buffers.close_all(fds)
                return self._lost(f"protocol error: unexpected {type(message).__name__} from the template")

    def _lost(self, reason: str) -> Lost:
        # Shut down, not closed: another thread may be sending on it right now, and a
        # closed descriptor's number could be reused under it. close() closes it.
        if self._control is not None:
            try:
                self._control.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return Lost(reason)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._send(Shutdown())
        self._reap_template(kill=False)

    def abandon(self) -> None:
        control = self._control
        if control is not None:
            try:
                control.shutdown(socket.SHUT_RDWR)  # the template sees end of file
            except OSError:
                pass

    def discard(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def forsake(self) -> None:
        self._closed = True
        self._process = None  # the owner's child, not ours to wait for
        self.discard()

    def _reap_template(self, *, kill: bool) -> None:
        process = self._process
        if process is None:
            return
        if kill:
            process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _worker_sys_path(options: WorkerSourceOptions) -> list[str]:
    """The caller's sys.path, preceded by the pool's ``sys_path`` and the PYTHONPATH
    entries given in the pool's env."""
    prefix = _sys_path_prefix(options)
    return prefix + [entry for entry in options.sys_path or () if entry not in prefix]


def _sys_path_prefix(options: WorkerSourceOptions) -> list[str]:
    """The pool's ``sys_path`` folders, then the PYTHONPATH entries of the pool's env."""
    prefix = list(options.sys_path_prefix)
    if options.env and options.env.get("PYTHONPATH"):
        prefix += [entry for entry in options.env["PYTHONPATH"].split(os.pathsep) if entry and entry not in prefix]
    return prefix


def _read_facts(text: str) -> dict[str, object]:
    """The template's facts (a Python literal), or nothing if they cannot be read."""
    try:
        facts = ast.literal_eval(text) if text else {}
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _interpreter_flags() -> list[str]:
    """The caller's -O, -W, -X, -I, -E, -s, -B... for the template's command line.

    The stdlib's own helper (multiprocessing's spawn uses it) knows the flags but only a
    few -X options; the others (``-X int_max_str_digits=...``, an application's own) are
    added, so that a worker's ``sys._xoptions`` is the caller's. -I and -E (which ignore
    PYTHONPATH) do not get in the way: the bootstrap finds the package by its folder, and
    the template sets sys.path, the env's PYTHONPATH first, itself.
    """
    args: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    passed = {args[index + 1].partition("=")[0] for index, arg in enumerate(args[:-1]) if arg == "-X"}
    for name, value in sys._xoptions.items():
        if name not in passed:
            args += ["-X", name if value is True else f"{name}={value}"]
    return args


def _config_file(data: bytes) -> int:
    """An anonymous file holding ``data``, positioned at its start (close-on-exec here;
    ``pass_fds`` hands it to the template alone)."""
    fd = os.memfd_create("freshproc-template-config", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _describe_code(code: int | None) -> str:
    if code is None:
        return "ended"
    return describe_exit(code if code >= 0 else None, -code if code < 0 else None)


def _read_all(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")
