"""Environments: which interpreter runs the workers, with which path, variables and folder.

``Pool(python=...)`` names an interpreter or a virtual environment's folder. Before the
template starts, ``resolve`` runs that interpreter once with a short probe (bounded in
time and output) that reports its version and imports the worker runtime exactly as the
template will: so a path that is missing, not a Python, too old, or unable to import the
runtime fails at pool start with a ``WorkerStartupError`` naming the path and what was
found, instead of a template that never answers.

Nothing is written into the other environment. The worker runtime is the caller's own
package folder, loaded through the bootstrap's stand-in package (see ``_backends._local``);
cloudpickle, which the runtime needs and the environment may lack, is the caller's too,
found by a finder the template puts first on ``sys.meta_path`` for that one name (see
``_foreign``). The caller's cloudpickle pickles the values that travel by value, so the
worker reads them with the same version.

Between different Python minor versions bytecode does not travel: a callable that would
have to be pickled by value (a lambda, a closure, a ``__main__`` function) is refused
before anything runs (``_serialization.by_value_refused``); functions of importable modules travel by
name and work, as do plain data. Pickle protocol 5 is read by every supported version
(3.10 to 3.13) and is what out-of-band buffers need; the template reports its highest
protocol in its handshake and the pool uses the highest both sides read.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from freshproc._errors import WorkerStartupError

#: The oldest Python a worker can run under.
OLDEST: Final = (3, 10)
#: Seconds the probe may take: a real interpreter answers in well under one.
PROBE_TIMEOUT: Final = 10.0
#: The most output of the probe that is read (a program that is not Python may print a lot).
_PROBE_OUTPUT_LIMIT: Final = 64 * 1024
#: The protocol the pool's pickles use: the newest that every supported version reads,
#: and the one out-of-band buffers need.
PICKLE_PROTOCOL: Final = 5
_PACKAGE_DIR: Final = str(Path(__file__).resolve().parent)

# The probe's first lines run on any Python, 2.7 included, so that an old interpreter is
# named as such rather than failing on syntax. Its arguments: the runtime's package folder
# and the caller's packages the worker borrows (name=folder).
_PROBE: Final = r"""
import sys
v = sys.version_info
sys.stdout.write("freshproc-probe %d.%d.%d %s %d %s\n" % (v[0], v[1], v[2],
    getattr(getattr(sys, "implementation", None), "name", "unknown"),
    __import__("pickle").HIGHEST_PROTOCOL, sys.executable))
sys.stdout.flush()
if v >= (3, 10):
    import types
    p = types.ModuleType("freshproc"); p.__path__ = [sys.argv[1]]; sys.modules["freshproc"] = p
    import freshproc._foreign as f
    f.borrow(dict(a.split("=", 1) for a in sys.argv[2:]))
    import freshproc._template, cloudpickle
    sys.stdout.write("freshproc-runtime-ok\n")
"""


@dataclass(frozen=True, slots=True)
class Interpreter:
    """An interpreter the workers can run under (checked by ``resolve``)."""

    #: The path the template is started with (a venv's own ``bin/python`` for a folder).
    path: str
    version: tuple[int, int, int]
    implementation: str
    #: The newest pickle protocol it reads.
    highest_protocol: int
    #: Whether it is the caller's own interpreter, used with the caller's ``sys.path``
    #: (no ``python=`` given), rather than another one with its own path.
    own: bool

    @property
    def cross_version(self) -> bool:
        """Whether its Python minor version differs from the caller's: then bytecode, and
        so anything pickled by value, cannot travel."""
        return self.version[:2] != sys.version_info[:2]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


_OWN: Final = Interpreter(
    path=sys.executable,
    version=(sys.version_info[0], sys.version_info[1], sys.version_info[2]),
    implementation=sys.implementation.name,
    highest_protocol=pickle.HIGHEST_PROTOCOL,
    own=True,
)
_cache: dict[tuple[str, int, int], Interpreter] = {}
_cache_lock = threading.Lock()


def borrowed_packages() -> dict[str, str]:
    """The caller's packages a worker under another interpreter borrows, by name: the
    folder each is found in. Only cloudpickle (pure Python), which the runtime needs."""
    spec = importlib.util.find_spec("cloudpickle")
    if spec is None or not spec.submodule_search_locations:
        return {}
    return {"cloudpickle": str(Path(next(iter(spec.submodule_search_locations))).parent)}


def resolve(
    python: str | None, *, env: Mapping[str, str], cwd: str | None, timeout: float = PROBE_TIMEOUT
) -> Interpreter:
    """The interpreter named by ``python`` (None: the caller's own), checked; raise
    WorkerStartupError naming the path and what was found there."""
    if python is None:
        return _OWN
    executable = _find_executable(python)
    try:
        stat = os.stat(executable)
    except OSError as exc:
        raise WorkerStartupError(f"python={python!r}: cannot use {executable!r}: {exc.strerror}") from None
    key = (executable, stat.st_ino, stat.st_mtime_ns)
    with _cache_lock:
        known = _cache.get(key)
    if known is not None:
        return known
    found = _probe(python, executable, env=env, cwd=cwd, timeout=timeout)
    with _cache_lock:
        _cache[key] = found
    return found


def _find_executable(python: str) -> str:
    """The file to run for ``python``: itself, or a virtual environment's interpreter."""
    path = Path(python)
    if not path.exists():
        what = "a broken symbolic link" if path.is_symlink() else "no such file or folder"
        raise WorkerStartupError(f"python={python!r}: {what}")
    if path.is_dir():
        for name in ("bin/python3", "bin/python"):
            candidate = path / name
            if candidate.is_file():
                return str(candidate)
        if (path / "pyvenv.cfg").is_file():
            raise WorkerStartupError(
                f"python={python!r}: a virtual environment folder (it has pyvenv.cfg) "
                "without an interpreter: no bin/python3 or bin/python in it"
            )
        raise WorkerStartupError(
            f"python={python!r}: a folder that is neither a virtual environment nor a Python "
            "installation (no bin/python3 or bin/python in it)"
        )
    if not os.access(path, os.X_OK):
        raise WorkerStartupError(f"python={python!r}: a file that is not executable, so not a Python interpreter")
    return str(path)


def _probe(python: str, executable: str, *, env: Mapping[str, str], cwd: str | None, timeout: float) -> Interpreter:
    where = f"python={python!r}" + (f" ({executable})" if executable != python else "")
    borrowed = [f"{name}={folder}" for name, folder in borrowed_packages().items()]
    command = [executable, "-c", _PROBE, _PACKAGE_DIR, *borrowed]
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # a terminal's Ctrl-C is for the caller only
        )
    except OSError as exc:
        raise WorkerStartupError(f"{where}: not a Python interpreter (it cannot be run: {exc.strerror})") from None
    output, finished = _read_bounded(process, timeout)
    text = output.decode("utf-8", "replace")
    first, _, rest = text.partition("\n")
    fields = first.split(" ", 4)
    if len(fields) < 5 or fields[0] != "freshproc-probe":
        if not finished:
            raise WorkerStartupError(f"{where}: did not answer within {timeout} s")
        shown = text.strip()[:500] or "nothing"
        raise WorkerStartupError(
            f"{where}: not a Python interpreter "
            f"(asked for its version, it {_describe_end(process)} and printed: {shown})"
        )
    try:
        version = tuple(int(part) for part in fields[1].split("."))
        highest = int(fields[3])
    except ValueError:
        raise WorkerStartupError(f"{where}: gave an unreadable version {first!r}") from None
    if version[:2] < OLDEST:
        raise WorkerStartupError(
            f"{where}: is Python {fields[1]}; freshproc's workers need Python {OLDEST[0]}.{OLDEST[1]} or newer"
        )
    if "freshproc-runtime-ok" not in rest:
        reason = "did not answer in time" if not finished else _describe_end(process)
        raise WorkerStartupError(
            f"{where}: Python {fields[1]} cannot import freshproc's worker runtime ({reason}):\n{rest.strip()[-4000:]}"
        )
    if highest < PICKLE_PROTOCOL:
        raise WorkerStartupError(f"{where}: reads pickle protocol {highest} at most; 5 is needed")
    return Interpreter(
        path=executable,
        version=(version[0], version[1], version[2]),
        implementation=fields[2],
        highest_protocol=highest,
        own=False,
    )


def _read_bounded(process: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bool]:
    """Read the process's output until it ends, up to a limit and a deadline; then make
    sure it has ended. Whether it ended on its own comes second."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    finished = False
    fd = process.stdout.fileno()
    try:
        while size < _PROBE_OUTPUT_LIMIT:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                finished = True
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        process.stdout.close()
        if not finished:
            process.kill()
        process.wait()
    return b"".join(chunks), finished


def _describe_end(process: subprocess.Popen[bytes]) -> str:
    code = process.returncode
    if code is None or code == 0:
        return "exited"
    return f"exited with status {code}" if code > 0 else f"was killed by signal {-code}"


# -- the workers' environment variables --------------------------------------------------


def worker_environment(env: Mapping[str, str] | None, inherit: bool) -> tuple[dict[str, str], tuple[str, ...]]:
    """The template's environment variables, and the names of the caller's that it does
    not get (``inherit=False``)."""
    if inherit:
        variables = dict(os.environ)
        variables.update(env or {})
        return variables, ()
    variables = dict(env or {})
    return variables, tuple(sorted(name for name in os.environ if name not in variables))


# -- describe() --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolDescription:
    """What a pool's workers run under, as the template reported at start
    (``Pool.describe()``, ``python -m freshproc describe``)."""

    #: The interpreter the template was started with, and its own ``sys.executable``.
    python: str
    executable: str
    version: str
    implementation: str
    #: The caller's Python version (both versions are stated in the handshake).
    caller_version: str
    #: The pickle protocol calls use: the highest both sides read.
    pickle_protocol: int
    #: The workers' ``sys.path``, in order.
    sys_path: tuple[str, ...]
    #: Names of the environment variables the pool set (``env``), and of the caller's it
    #: removed (``inherit_env=False``). Values are left out: they may be secrets.
    env_set: tuple[str, ...]
    env_removed: tuple[str, ...]
    #: The workers' working directory.
    cwd: str
    #: Platform facts the template checked at start: segments may travel by address
    #: (process_vm_readv), and a worker dies with its template (PR_SET_PDEATHSIG).
    direct_copy: bool
    pdeathsig: bool
    template_pid: int | None

    def __str__(self) -> str:
        lines = [
            f"python:          {self.python}",
            f"executable:      {self.executable}",
            f"version:         {self.implementation} {self.version} (caller: {self.caller_version})",
            f"pickle protocol: {self.pickle_protocol}",
            f"cwd:             {self.cwd}",
            f"env set:         {', '.join(self.env_set) or '-'}",
            f"env removed:     {', '.join(self.env_removed) or '-'}",
            f"direct copy:     {'allowed' if self.direct_copy else 'not allowed'}",
            f"PDEATHSIG:       {'works' if self.pdeathsig else 'unavailable'}",
            f"template pid:    {self.template_pid}",
            "sys.path:",
            *(f"  {entry!r}" for entry in self.sys_path),
        ]
        return "\n".join(lines)


def description(
    interpreter: Interpreter,
    facts: Mapping[str, object],
    *,
    env_set: tuple[str, ...],
    env_removed: tuple[str, ...],
    direct_copy: bool,
    template_pid: int | None,
) -> PoolDescription:
    """A pool's description from what the template reported (``facts``)."""
    version = facts.get("version")
    sys_path = facts.get("sys_path")
    highest = facts.get("highest_protocol")
    return PoolDescription(
        python=interpreter.path,
        executable=str(facts.get("executable", interpreter.path)),
        version=".".join(map(str, version)) if isinstance(version, tuple) else interpreter.version_text,
        implementation=str(facts.get("implementation", interpreter.implementation)),
        caller_version=".".join(map(str, sys.version_info[:3])),
        pickle_protocol=min(pickle.HIGHEST_PROTOCOL, highest if isinstance(highest, int) else PICKLE_PROTOCOL),
        sys_path=tuple(str(entry) for entry in sys_path) if isinstance(sys_path, (list, tuple)) else (),
        env_set=env_set,
        env_removed=env_removed,
        cwd=str(facts.get("cwd", "")),
        direct_copy=direct_copy,
        pdeathsig=bool(facts.get("pdeathsig", False)),
        template_pid=template_pid,
    )
