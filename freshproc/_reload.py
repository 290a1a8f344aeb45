"""Hot reload, parent side: which files each worker (and the template) loaded code from,
and whether any of them changed on disk since.

The guarantee: a call entered after a write to such a file completed never runs in a
worker that loaded the file. So the check is made by the caller, before each dispatch
(``WorkerSet.checkout``), and it must see every completed write without waiting:

* inotify (driven through libc with ctypes, no thread): the kernel queues an event as a
  write happens, so draining the descriptor without blocking at the start of a call sees
  every write completed before it. Directories are watched, not files (an editor's atomic
  save replaces the file, which a file watch would lose) and not whole trees.
* where inotify is unavailable or its watch limit is reached, or with
  ``FRESHPROC_RELOAD_WATCHER=stat`` in the caller's environment when the pool is made: the
  ``stat`` of every file is compared before each dispatch (mtime in ns, size, inode, ctime).

A file whose content did not change (a save that rewrote the same bytes) retires nothing:
a content hash is compared first. A file changed between a worker loading it and the pool
hearing of it is caught by its ctime: the worker says when its call started, on the same
coarse clock the kernel stamps files with.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
import select
import struct
import sysconfig
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

logger = logging.getLogger("freshproc")

#: Files larger than this are not hashed: any change of their stat counts as a change.
HASH_LIMIT = 1 << 20
#: The shared system library folders, not watched by default (with the standard library).
_SYSTEM_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")

# <sys/inotify.h>
_IN_MODIFY = 0x2
_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_Q_OVERFLOW = 0x4000
_IN_IGNORED = 0x8000
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows

Watcher = Literal["inotify", "stat"]


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    """What one hot reload did (given to ``Pool(on_reload=...)``, and logged).

    :ivar files: the files whose change caused it.
    :ivar retired: pids of the workers retired for it (idle ones ended at once, busy ones
        as their call ends).
    :ivar template_restarted: a file the template loaded changed (a ``preload`` module):
        the template was restarted, and every worker forked from the old one retired.
    """

    files: tuple[str, ...]
    retired: tuple[int, ...]
    template_restarted: bool


@dataclass(frozen=True, slots=True)
class ReloadSettings:
    """How a worker set reloads: who hears of it, what is not watched, and how."""

    on_reload: Callable[[ReloadEvent], object] | None = None
    #: Path prefixes not watched; None: the standard library and the system's libraries
    #: (site-packages are watched even where they lie inside those).
    ignore: tuple[str, ...] | None = None
    watcher: Watcher = "inotify"

    @classmethod
    def build(
        cls, on_reload: Callable[[ReloadEvent], object] | None = None, ignore: Iterable[str] | None = None
    ) -> ReloadSettings:
        """Settings for a pool made now: ``FRESHPROC_RELOAD_WATCHER=stat`` in the caller's
        environment forces the stat fallback."""
        if on_reload is not None and not callable(on_reload):
            raise TypeError(f"on_reload must be callable, not {type(on_reload).__name__}")
        if isinstance(ignore, (str, bytes)):
            raise TypeError("reload_ignore must be a list of path prefixes, not a string")
        chosen = os.environ.get("FRESHPROC_RELOAD_WATCHER", "inotify").strip().lower() or "inotify"
        if chosen not in ("inotify", "stat"):
            raise ValueError(f"FRESHPROC_RELOAD_WATCHER={chosen!r}: expected 'inotify' or 'stat'")
        prefixes = None if ignore is None else tuple(os.path.realpath(os.fspath(entry)) for entry in ignore)
        return cls(on_reload, prefixes, "inotify" if chosen == "inotify" else "stat")


class Change(NamedTuple):
    files: tuple[str, ...]
    pids: frozenset[int]
    template: bool


class _Signature(NamedTuple):
    inode: int
    device: int
    size: int
    mtime_ns: int
    ctime_ns: int


class _FileState:
    __slots__ = ("changed_epoch", "digest", "signature")

    def __init__(self, signature: _Signature | None, digest: bytes | None) -> None:
        self.signature = signature
        self.digest = digest
        #: The poll that last found it changed (see ``Reloader.epoch``).
        self.changed_epoch = 0


def _signature(path: str) -> _Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _Signature(st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _digest(path: str, signature: _Signature | None) -> bytes | None:
    if signature is None or signature.size > HASH_LIMIT:
        return None
    try:
        with open(path, "rb") as file:
            return hashlib.blake2b(file.read(), digest_size=16).digest()
    except OSError:
        return None


class _Inotify:
    """Directory watches on one non-blocking inotify descriptor, read only when drained."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"inotify_init1: {os.strerror(error)}")
        self.fd: int | None = fd
        # A poll object may not be used by two threads at once: one per thread.
        self._pollers = threading.local()
        self._folder_of: dict[int, str] = {}
        self._watch_of: dict[str, int] = {}

    def watch(self, folder: str) -> bool:
        """Watch ``folder`` (once): True if the watch is new. OSError if it cannot be
        (ENOSPC: the watch limit)."""
        if folder in self._watch_of or self.fd is None:
            return False
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder), _WATCH_MASK)
        if wd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"inotify_add_watch({folder!r}): {os.strerror(error)}")
        self._watch_of[folder] = wd
        self._folder_of[wd] = folder
        return True

    def pending(self) -> bool:
        """Whether events are queued (a poll with no wait: about a microsecond)."""
        fd = self.fd
        if fd is None:
            return False
        poller: select.poll | None = getattr(self._pollers, "poller", None)
        if poller is None:
            poller = self._pollers.poller = select.poll()
            poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def drain(self) -> tuple[set[str], bool]:
        """The paths named by the events queued so far, and whether anything else may
        have changed too (the queue overflowed, a watched folder went away)."""
        paths: set[str] = set()
        everything = False
        fd = self.fd
        if fd is None:
            return paths, everything
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return paths, everything
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & _IN_Q_OVERFLOW:
                    everything = True
                elif mask & (_IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF):
                    everything = True
                    if mask & _IN_IGNORED:
                        folder = self._folder_of.pop(wd, None)
                        if folder is not None:
                            self._watch_of.pop(folder, None)
                elif name and wd in self._folder_of:
                    paths.add(os.path.join(self._folder_of[wd], os.fsdecode(name)))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Reloader:
    """The dependency map (worker pid -> files, and the template's files) and the watch
    on those files. Every method takes ``lock``; a caller that acts on ``poll``'s answer
    holds it meanwhile, so that no other caller dispatches to a stale worker before it
    is retired."""

    def __init__(self, settings: ReloadSettings, pool_id: str) -> None:
        self.settings = settings
        self.pool_id = pool_id
        self.lock = threading.RLock()
        self._files: dict[str, _FileState] = {}
        self._dependents: dict[str, set[int]] = {}
        self._files_of: dict[int, set[str]] = {}
        self._template_files: set[str] = set()
        #: Files changed before anyone could watch them (seen by their ctime).
        self._pending: list[str] = []
        self._pending_template = False
        #: pid -> shared objects it had mapped that changed (to explain its crash).
        self._changed_objects: dict[int, list[str]] = {}
        self._watcher: _Inotify | None = None
        #: Set while a poll's findings are being acted on (see ``quiet``).
        self.busy = False
        #: Counts polls: a call dispatched after poll N ran on files as they were then,
        #: unless a later poll found one changed.
        self.epoch = 0
        self._mode: Watcher = settings.watcher
        if settings.ignore is None:
            paths = sysconfig.get_paths()
            stdlib = {paths[key] for key in ("stdlib", "platstdlib") if key in paths}
            self._ignore = tuple({os.path.realpath(folder) for folder in stdlib} | set(_SYSTEM_LIBRARIES))
            # Also as spelled: a module's __file__ under one of them is left out before
            # its path is resolved (a template reports some 80 standard-library files,
            # and resolving each costs an lstat per folder on its way).
            self._unresolved_ignore = tuple(stdlib - set(self._ignore))
        else:
            self._ignore = settings.ignore
            self._unresolved_ignore = ()
        if self._mode == "stat":
            self._fall_back("FRESHPROC_RELOAD_WATCHER=stat")
        # The inotify instance is made with the first watch: a pool never started holds
        # none (a user may have only 128).

    @property
    def mode(self) -> Watcher:
        return self._mode

    def _fall_back(self, reason: str) -> None:
        self._mode = "stat"
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        logger.info(
            "hot reload of %s: comparing the stat of each loaded file before every call (%s)",
            self.pool_id,
            reason,
            extra={"pool": self.pool_id, "event": "reload_stat_fallback", "reason": reason},
        )

    def ignore_standard_library(self, folder: object) -> None:
        """Leave unwatched the standard library of the interpreter the workers run under
        (``python=``: not the caller's), unless the pool said what to leave unwatched."""
        if self.settings.ignore is None and isinstance(folder, str) and folder:
            with self.lock:
                resolved = os.path.realpath(folder)
                if resolved not in self._ignore:
                    self._ignore = (*self._ignore, resolved)

    def _ignored(self, path: str, prefixes: tuple[str, ...] | None = None) -> bool:
        for prefix in self._ignore if prefixes is None else prefixes:
            if path.startswith(prefix + os.sep) or path == prefix:
                # The default spares site-packages, wherever they lie.
                return self.settings.ignore is not None or not ("site-packages" in path or "dist-packages" in path)
        return False

    # -- what was loaded ------------------------------------------------------------------

    def _register(self, raw_paths: Iterable[str], started_ns: int, since_epoch: int) -> tuple[list[str], list[str]]:
        """Watch the files (once each): (their normalized paths, those that may have been
        loaded in an older version than is on disk now).

        A file watched already was loaded as it was at poll ``since_epoch`` (the last one
        before the call was sent) unless a later poll found it changed; a change not yet
        polled is found by the next poll, which then retires the new dependent too. A file
        seen for the first time may have changed before its watch began: its ctime says
        so if it is not older than ``started_ns``, when the call (or the template) began."""
        registered: list[str] = []
        suspect: list[str] = []
        as_spelled = self._ignore + self._unresolved_ignore
        for raw in raw_paths:
            if self._ignored(raw, as_spelled):
                continue
            path = os.path.realpath(raw)
            if self._ignored(path):
                continue
            state = self._files.get(path)
            if self._watcher is None and self._mode == "inotify":
                try:
                    self._watcher = _Inotify()
                except (OSError, AttributeError) as exc:
                    self._fall_back(f"inotify is unavailable ({exc})")
            # Watched first, then read: a write after this is an event. A folder watched
            # anew (a first file there, or the folder was removed and made again) had no
            # watch when the file may have changed: judged by its ctime, like a new file.
            new_watch = False
            if self._watcher is not None:
                try:
                    new_watch = self._watcher.watch(os.path.dirname(path))
                except OSError as exc:
                    self._fall_back(f"cannot watch {os.path.dirname(path)!r}: {exc.strerror}")
            if state is None or new_watch:
                signature = _signature(path)
                if signature is None:
                    continue  # not a file (a zip member, a frozen module): nothing to watch
                if state is None:
                    state = self._files[path] = _FileState(signature, _digest(path, signature))
                else:
                    state.signature, state.digest = signature, _digest(path, signature)
                changed = signature.ctime_ns >= started_ns
            else:
                changed = state.changed_epoch > since_epoch
            registered.append(path)
            if changed:
                suspect.append(path)
        return registered, suspect

    def template_started(self, loaded: tuple[int, list[str]], since_epoch: int) -> None:
        """A template started after poll ``since_epoch``, having loaded ``files`` (reported
        when it was ready, with when it started)."""
        started_ns, files = loaded
        with self.lock:
            registered, suspect = self._register(files, started_ns, since_epoch)
            self._template_files = set(registered)
            self._pending_template = bool(suspect)
            self._pending.extend(suspect)

    def worker_loaded(
        self, pid: int, reports: list[tuple[int, tuple[str, ...]]], alive: set[int], since_epoch: int
    ) -> list[str]:
        """Worker ``pid`` loaded more files in a call sent after poll ``since_epoch``; the
        ones that may have changed since it loaded them (then retire the worker)."""
        with self.lock:
            for gone in [other for other in self._files_of if other not in alive and other != pid]:
                self._drop_worker(gone)
            for gone in [other for other in self._changed_objects if other not in alive]:
                del self._changed_objects[gone]
            stale: list[str] = []
            own = self._files_of.setdefault(pid, set())
            for started_ns, files in reports:
                registered, suspect = self._register(files, started_ns, since_epoch)
                for path in registered:
                    own.add(path)
                    self._dependents.setdefault(path, set()).add(pid)
                stale += suspect
            return stale

    def _drop_worker(self, pid: int) -> None:
        for path in self._files_of.pop(pid, ()):
            dependents = self._dependents.get(path)
            if dependents is not None:
                dependents.discard(pid)
                if not dependents:
                    del self._dependents[path]

    # -- what changed -----------------------------------------------------------------------

    def quiet(self) -> bool:
        """True if nothing can have changed since the last poll: no event is queued, and no
        other caller is acting on one. Without the lock (the fast path of every call): the
        queue is looked at first, and ``busy`` is set before a poll drains it, so a caller
        that finds the queue empty because another drained it sees ``busy``."""
        watcher = self._watcher
        if watcher is None or self._pending or self.busy:
            return False
        return not watcher.pending() and not self.busy

    def poll(self) -> Change | None:
        """What changed since the last poll (None: nothing). Call with ``lock`` held, and
        retire what it names before letting go of the lock (clearing ``busy``)."""
        self.busy = True
        self.epoch += 1
        if self._watcher is not None:
            named, everything = self._watcher.drain()
            candidates: Iterable[str] = list(self._files) if everything else named
        else:
            candidates = list(self._files)
        changed: list[str] = []
        for path in candidates:
            state = self._files.get(path)
            if state is None:
                continue
            signature = _signature(path)
            if signature == state.signature:
                continue
            digest = _digest(path, signature)
            unchanged = digest is not None and digest == state.digest
            state.signature, state.digest = signature, digest
            if not unchanged:
                state.changed_epoch = self.epoch
                changed.append(path)
        if self._pending:
            changed.extend(path for path in self._pending if path not in changed)
            self._pending.clear()
        if not changed:
            return None
        template = self._pending_template or any(path in self._template_files for path in changed)
        self._pending_template = False
        pids: set[int] = set()
        for path in changed:
            affected = self._dependents.get(path, set())
            pids |= affected
            if ".so" in os.path.basename(path):
                for pid in affected:
                    self._changed_objects.setdefault(pid, []).append(path)
            if path.endswith(".py"):
                _forget_bytecode(path)
        for pid in pids:
            self._drop_worker(pid)
        if template:
            self._template_files = set()
        return Change(tuple(changed), frozenset(pids), template)

    def announce(self, change: Change, retired: list[int]) -> None:
        """Log the reload (INFO) and tell ``on_reload``."""
        event = ReloadEvent(change.files, tuple(retired), change.template)
        names = ", ".join(change.files[:5]) + (f" and {len(change.files) - 5} more" if len(change.files) > 5 else "")
        logger.info(
            "hot reload: %s changed; %s%s",
            names,
            f"retired workers {', '.join(map(str, retired))}" if retired else "no worker had loaded it",
            "; restarted the template" if change.template else "",
            extra={
                "pool": self.pool_id,
                "event": "reload",
                "files": change.files,
                "retired": tuple(retired),
                "template_restarted": change.template,
            },
        )
        callback = self.settings.on_reload
        if callback is not None:
            try:
                callback(event)
            except Exception:
                logger.exception("the on_reload callback of %s raised", self.pool_id, extra={"pool": self.pool_id})

    def crash_cause(self, pid: int) -> str:
        """Why worker ``pid`` may have crashed: a shared object it had mapped was changed
        (overwritten in place, which crashes every process that maps it). Empty if none."""
        with self.lock:
            objects = self._changed_objects.pop(pid, [])
        if not objects:
            return ""
        return (
            f", right after {', '.join(objects)}, which it had loaded, changed on disk (a shared object "
            "overwritten in place crashes the processes that map it; replace it by renaming a new file over it)"
        )

    def watched_files(self) -> frozenset[str]:
        with self.lock:
            return frozenset(path for path in self._files if path in self._dependents or path in self._template_files)

    def close(self) -> None:
        with self.lock:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None

    def forsake(self) -> None:
        """In a process forked from the owner: close this copy of the descriptor (without
        the lock, which a thread of the owner may have held at the fork)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()


def _forget_bytecode(path: str) -> None:
    """Remove the cached bytecode of a changed source: a ``.pyc`` records the source's
    mtime in whole seconds and its size, so an edit of the same size within the same second
    would otherwise be served from the stale cache. Every Python's: workers under another
    interpreter (``python=``) write theirs under their own cache tag."""
    folder, name = os.path.split(path)
    caches = {os.path.join(folder, "__pycache__")}
    try:
        caches.add(os.path.dirname(importlib.util.cache_from_source(path)))  # PYTHONPYCACHEPREFIX
    except (ValueError, NotImplementedError):
        pass
    stem = name.rpartition(".")[0] + "."
    for cache in caches:
        try:
            entries = os.listdir(cache)
        except OSError:
            continue
        for entry in entries:
            if not (entry.startswith(stem) and entry.endswith(".pyc")):
                continue
            # <stem>.<cache tag>[.opt-N].pyc, e.g. target.cpython-312.opt-1.pyc
            tag = entry[len(stem) : -len(".pyc")].split(".")
            if tag[0] and (len(tag) == 1 or (len(tag) == 2 and tag[1].startswith("opt-"))):
                try:
                    os.unlink(os.path.join(cache, entry))
                except OSError:
                    pass


__all__ = ["Change", "ReloadEvent", "ReloadSettings", "Reloader"]
