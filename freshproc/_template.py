"""The template (zygote): a clean interpreter that forks workers on request.

Started by the parent as a new interpreter (never a fork of the caller), it imports only
Python's start-up modules, the worker runtime and the pool's ``preload`` list, then waits
on its control channel. A forked worker is a pristine copy of it, so every worker starts
fresh at the cost of a fork. Nothing a call does ever runs here.

It owns its children: it reaps them as soon as they die (SIGCHLD), reports their exit,
ends their whole process group, and kills everything when the parent goes away (end of
file on the control channel). It and every worker are child subreapers, so a process
that a call started in a session of its own (out of reach of the worker's process group)
is adopted by the worker while the worker lives, and by the template once the worker is
gone: the template then kills it (see ``_Template._kill_orphans``).

A fork that fails (a process limit, memory) is reported to the parent as ``SpawnFailed``;
the template and the workers already running carry on.
"""

from __future__ import annotations

# _signal and _socket, the C modules under signal and socket: those build enums (and
# socket imports selectors) at import, a few milliseconds before the first fork.
import _signal  # type: ignore[import-not-found,unused-ignore]  # typeshed has no stub for it
import _socket
import ctypes
import gc
import os
import pickle
import sys
import time

from freshproc import _buffers, _foreign, _hosted, _loaded, _serialization, _transport, _worker
from freshproc._errors import ProtocolError
from freshproc._protocol import (
    SpawnFailed,
    SpawnWorkers,
    TemplateFailed,
    TemplateReady,
    TerminateWorker,
    WorkerExited,
    WorkerSpawned,
)

TYPE_CHECKING = False  # typing stays out of the worker runtime at run time
if TYPE_CHECKING:
    from types import ModuleType
    from typing import NoReturn

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36
# What `ps -o comm`, top and psutil's name() show. The kernel keeps at most 15 bytes of a
# process name (16 with the final NUL) and silently cuts a longer one, so both fit whole.
_TEMPLATE_NAME = b"freshproc-tmpl"
_WORKER_NAME = b"freshproc-work"
#: Seconds without a request before the template loads cloudpickle (about 20 ms of work
#: that a pool's first spawn requests should not wait behind).
_QUIET_BEFORE_WARM_UP = 0.05
#: Worker-runtime modules a pool may preload (``freshproc.dask`` preloads its relay):
#: they load through the stand-in package, like the runtime itself.
RUNTIME_PRELOADS = frozenset({"freshproc._relay"})
#: How much of a fork error's text goes to the parent.
_MAX_REASON = 1000


class Config:
    """What the parent tells the template at start: a pickled dict of plain values, read
    from a descriptor (pickle is loaded anyway; json would cost start-up time). Never on
    the command line, where any user's ``ps`` would show it."""

    def __init__(self, raw: bytes) -> None:
        data = pickle.loads(raw)
        #: The workers' whole sys.path; None under another interpreter, which keeps its own
        #: with ``sys_path_prefix`` in front.
        self.sys_path: list[str] | None = data["sys_path"]
        self.sys_path_prefix: list[str] = data.get("sys_path_prefix", [])
        #: The caller's packages borrowed under another interpreter (see ``_foreign``).
        self.borrowed: dict[str, str] = data.get("borrowed", {})
        self.caller_version: tuple[int, ...] | None = data.get("caller_version")
        self.preload: list[str] = data["preload"]
        self.memory_limit: int | None = data["memory_limit"]
        self.max_result_size: int | None = data["max_result_size"]
        self.owner_pid: int = data["owner_pid"]
        self.probe: tuple[int, bytes] = data["probe"]  # an address in the caller and what it holds
        #: A service's factory, pickled by the caller (see ``_hosted``), or None.
        self.hosted: bytes | None = data["hosted"]
        #: Hot reload: report the files loaded (the template's own, then each call's).
        self.reload: bool = data.get("reload", False)
        #: ... and each worker after each of its calls.
        self.report_calls: bool = data.get("report_calls", False)


def main(config_fd: int, control_fd: int, stderr_fd: int) -> NoReturn:
    """Run the template. ``config_fd`` holds the package folder (which the bootstrap has
    read), a NUL, then the pickled configuration; it is read and closed here."""
    # The bootstrap's stand-in package steps aside: user code importing freshproc gets
    # the real one.
    stand_in = sys.modules.pop("freshproc")
    # Inherited descriptors are inheritable; nothing started from here may get them.
    os.set_inheritable(control_fd, False)
    os.set_inheritable(stderr_fd, False)
    control = _socket.socket(fileno=control_fd)
    started_ns = _loaded.coarse_now_ns()
    try:
        os.lseek(config_fd, 0, os.SEEK_SET)
        with open(config_fd, "rb") as file:
            config = Config(file.read().partition(b"\0")[2])
        _foreign.borrow(config.borrowed)
        if config.sys_path is not None:
            sys.path[:] = config.sys_path
        else:
            # Its own path, less the "" (the current folder) that `-c` puts first: the
            # workers run no script, and the template's start is no reason to import from cwd.
            own = sys.path[1:] if sys.path[:1] == [""] else sys.path
            prefix = config.sys_path_prefix
            sys.path[:] = prefix + [entry for entry in own if entry not in prefix]
        if config.memory_limit is not None:
            import resource  # noqa: F401  # for _become_worker: imported once, here, for every worker
        for name in config.preload:
            _preload(name, stand_in)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        import traceback  # only a failed start needs it

        _transport.send(control, TemplateFailed(traceback.format_exc()))
        os._exit(1)
    # Start-up went well: from now on our stderr is the caller's again.
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)
    # Objects that exist now are shared by every worker; keep the collector from
    # touching (and so copying) their pages after each fork.
    gc.freeze()
    _Template(control, config).run(started_ns)


def _preload(name: str, stand_in: ModuleType) -> None:
    if name in RUNTIME_PRELOADS:
        # Through the stand-in, as the runtime was: importing it otherwise would run
        # freshproc/__init__.py (anyio, the pool: 80 modules) into every worker.
        sys.modules["freshproc"] = stand_in
        try:
            __import__(name)
        finally:
            del sys.modules["freshproc"]
    else:
        __import__(name)


class _Template:
    def __init__(self, control: _socket.socket, config: Config) -> None:
        self.control = control
        self.config = config
        self.live: set[int] = set()
        self.kill_deadlines: dict[int, float] = {}
        self.pid = os.getpid()
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.prctl(_PR_SET_NAME, _TEMPLATE_NAME)
        # Orphans of dead workers come to us (not to init), and _kill_orphans ends them.
        self.libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
        self.wake_read, self.wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(self.wake_write)
        _signal.signal(_signal.SIGCHLD, _ignore_signal)
        _signal.signal(_signal.SIGINT, _ignore_signal)

    def run(self, started_ns: int) -> NoReturn:
        settings = _worker.settings
        settings.max_result_size = self.config.max_result_size
        settings.owner_pid = self.config.owner_pid
        _hosted.factory = self.config.hosted
        address, expected = self.config.probe
        # FRESHPROC_DIRECT_COPY=0 in the pool's env keeps every segment in memfds.
        allowed = os.environ.get("FRESHPROC_DIRECT_COPY", "1") != "0"
        settings.direct_copy = allowed and _buffers.direct_copy_works(self.config.owner_pid, address, expected)
        pdeathsig = self.libc.prctl(_PR_SET_PDEATHSIG, 0) == 0  # what every worker relies on
        facts = _foreign.facts(self.config.caller_version, pdeathsig)
        if self.config.reload:
            _worker.report_loaded(self.control, started_ns)  # the template's own files
            settings.report_loaded = self.config.report_calls
        _transport.send(self.control, TemplateReady(self.pid, settings.direct_copy, facts))
        try:
            self._loop()
        finally:
            self._kill_all()
        os._exit(0)

    def _loop(self) -> None:
        warmed = False
        forked = False
        while True:
            timeout = None
            if self.kill_deadlines:
                timeout = max(0.0, min(self.kill_deadlines.values()) - time.monotonic())
            if not warmed:
                # typing as soon as the first workers are forked and no request waits.
                quiet = 0.0 if forked and "typing" not in sys.modules else _QUIET_BEFORE_WARM_UP
                timeout = quiet if timeout is None else min(timeout, quiet)
            readable = _transport.wait_readable([self.control.fileno(), self.wake_read], timeout)
            if not readable and not warmed and "typing" not in sys.modules:
                # Kept off the path to the first fork (about 4 ms), but nearly every user
                # module imports it (and cloudpickle does): later workers start with it.
                import typing  # noqa: F401

                continue
            if not readable and not warmed:
                # Quiet for a moment, with the first workers served: load what by-value
                # calls need, so that workers forked from now on have it.
                _warm_up()
                warmed = True
                continue
            if self.wake_read in readable:
                while True:
                    try:
                        if not os.read(self.wake_read, 512):
                            break
                    except BlockingIOError:
                        break
                self._reap()
            if self.control.fileno() in readable:
                try:
                    received = _transport.recv(self.control)
                except (ProtocolError, OSError):
                    return
                if received is None:
                    return
                message, _ = received
                match message:
                    case SpawnWorkers(number):
                        forked = True
                        for started in range(number):
                            failure = self._spawn()
                            if failure is not None:
                                self._send(SpawnFailed(number - started, failure))
                                break
                    case TerminateWorker(pid, grace_seconds):
                        self._terminate(pid, grace_seconds)
                    case _:  # Shutdown, or anything unexpected
                        return
            self._expire_deadlines()

    def _spawn(self) -> str | None:
        """Fork a worker; on failure, what went wrong (the template carries on)."""
        try:
            parent_end, child_end = _transport.channel_pair()
        except OSError as exc:
            return f"cannot make its channel: {exc}"
        try:
            pid = os.fork()
        except OSError as exc:  # BlockingIOError under RLIMIT_NPROC, ENOMEM
            parent_end.close()
            child_end.close()
            return str(exc)[:_MAX_REASON]
        if pid == 0:
            try:
                parent_end.close()
                self._become_worker()
                _worker.serve(child_end)
            finally:
                os._exit(1)
        child_end.close()
        self.live.add(pid)
        try:
            _transport.send(self.control, WorkerSpawned(pid), [parent_end.fileno()])
        finally:
            parent_end.close()
        return None

    def _send(self, message: SpawnFailed | WorkerExited) -> None:
        try:
            _transport.send(self.control, message)
        except OSError:
            pass  # the parent is gone; the loop sees end of file next

    def _become_worker(self) -> None:
        # Its own process group, so that killing it ends whatever it started too.
        os.setsid()
        self.control.close()
        # The _signal functions, not signal's: those wrap their results in enums, and the
        # enum machinery's first use in a new process costs a page copy per object it
        # touches (about 0.3 ms in all, measured: a third of a worker's own start).
        _signal.set_wakeup_fd(-1)
        os.close(self.wake_read)
        os.close(self.wake_write)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        # The terminal's Ctrl-C is the caller's to handle, not the worker's. A handler,
        # not SIG_IGN: exec resets a handled signal to its default, while an ignored one
        # stays ignored in every program the call starts.
        _signal.signal(_signal.SIGINT, _ignore_signal)
        self.libc.prctl(_PR_SET_NAME, _WORKER_NAME)
        # A process the call starts that loses its parent stays in this worker's subtree
        # (the template kills such orphans only once the worker is gone). Should one end
        # first, it stays a zombie until the worker exits: nothing here can tell it from
        # the call's own children, whose exit statuses are the call's to collect.
        self.libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
        self.libc.prctl(_PR_SET_PDEATHSIG, _signal.SIGKILL)
        if os.getppid() != self.pid:  # the template died before prctl took effect
            os._exit(1)
        if self.config.memory_limit is not None:
            import resource  # main() imported it

            limit = self.config.memory_limit
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def _terminate(self, pid: int, grace_seconds: float) -> None:
        if pid not in self.live:
            return
        if grace_seconds <= 0:
            _kill_group(pid, _signal.SIGKILL)
        else:
            _kill_group(pid, _signal.SIGTERM)
            self.kill_deadlines[pid] = time.monotonic() + grace_seconds

    def _expire_deadlines(self) -> None:
        now = time.monotonic()
        for pid, deadline in list(self.kill_deadlines.items()):
            if deadline <= now:
                del self.kill_deadlines[pid]
                _kill_group(pid, _signal.SIGKILL)

    def _reap(self) -> None:
        exited: list[WorkerExited] = []
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            if pid not in self.live:
                continue  # an orphan we adopted and killed: nobody asked about it
            self.live.discard(pid)
            self.kill_deadlines.pop(pid, None)
            # Whatever the worker started dies with it. No fallback to kill(pid): the pid
            # is free now, and may already be someone else's.
            _kill_group(pid, _signal.SIGKILL, leader_alive=False)
            code = os.waitstatus_to_exitcode(status)
            exited.append(WorkerExited(pid, code if code >= 0 else None, -code if code < 0 else None))
        if reaped:
            # Before the parent hears of a worker's exit: what it left behind is ending.
            # (An orphan that died may have left children of its own to us, too.)
            self._kill_orphans()
        for message in exited:
            self._send(message)

    def _kill_orphans(self) -> None:
        """SIGKILL every child of ours that is not a live worker.

        The kernel hands a dead worker's children to us (we are their subreaper) before it
        lets us reap the worker, so once a worker is reaped they are here: processes a
        call started in a session of their own, which the worker's process group does not
        reach. Killing them is safe from pid reuse: a child's pid stays ours until we reap
        it. Their own children come to us in turn when they die, and go the same way.
        """
        for pid in _children(self.pid):
            if pid not in self.live:
                try:
                    os.kill(pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _kill_all(self) -> None:
        for pid in list(self.live):
            _kill_group(pid, _signal.SIGKILL)
        # Reap every child: the workers, and the orphans that come to us as they die
        # (whose own children come to us as those die in turn).
        while True:
            for pid in _children(self.pid):
                try:
                    os.kill(pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return


def _ignore_signal(signum: int, frame: object) -> None:
    """A handler that does nothing: unlike SIG_IGN, exec resets it to the default."""


def _children(pid: int) -> list[int]:
    """The pids of the children of process ``pid``, zombies included."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", "rb") as file:
                children.extend(int(child) for child in file.read().split())
        return children
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: scan every process
        children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue  # it ended meanwhile
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _warm_up() -> None:
    # Load cloudpickle and build the fallback pickler once, for every worker forked later.
    _serialization.load_cloudpickle()
    gc.freeze()


def _kill_group(pid: int, signum: int, *, leader_alive: bool = True) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        if not leader_alive:
            return
        # A worker that has not yet called setsid() has no group of its own; it is our
        # unreaped child, so its pid is still its own.
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    except PermissionError:
        pass
