"""The worker set: the ledger behind a lock, the template it asks for workers, and the
supervisor thread that hears from the template.

Data flow (message names from ``_protocol``)::

    WorkerSet ──SpawnWorkers / TerminateWorker──▶ template
    WorkerSet ◀─WorkerSpawned (+ channel fd) / WorkerExited / SpawnFailed── template
              └─ read by the supervisor thread, which also runs the ledger's timers

A caller checks a worker out into a ``Lease`` (``checkout`` / ``wait_*``), runs one
request on it, and gives it back (``release``). Each of these is a transition of the
``Ledger`` made under the lock; the effects it returns (messages to the template, closing
channels, waking callers, log records) are applied after the lock is released. The
transitions are ``_interrupts.protected``: a Ctrl-C cannot tear them.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING

import anyio.to_thread

from freshproc import _environments, _interrupts, _loopreader, _queued
from freshproc._backends import create_source
from freshproc._backends._base import Exited, Lost, Spawned, SpawnFailed, WorkerSource, WorkerSourceOptions
from freshproc._errors import FreshprocError, PoolClosedError
from freshproc._ledger import Effects, Event, ExitStatus, Lease, Ledger, Outcome, PoolStats, Worker
from freshproc._logging import log_events
from freshproc._pipeline import BROKEN, PipelinedLedger, QueuedLease, QueueEffects, pipeline_of
from freshproc._policy import PoolOptions, one_call_per_worker
from freshproc._reload import Change, Reloader, ReloadSettings
from freshproc._serialization import by_value_refused
from freshproc._waiters import AsyncWaiter, SyncWaiter, Waiter

if TYPE_CHECKING:
    import socket

_pool_ids = itertools.count(1)


class WorkerSet:
    def __init__(
        self,
        options: PoolOptions,
        *,
        hosted: bytes | None = None,
        keep: int = 0,
        observer: Callable[[list[Event]], None] | None = None,
        hosted_by_value: bool = False,
        reload: ReloadSettings | None = None,
    ) -> None:
        """``hosted``: for a service, the pickled factory each worker builds its object
        with. ``keep``: how many workers to keep started even while idle (a service's
        replicas). ``observer``: called (outside the lock) with each transition's events,
        as a service's supervisor hears of processes that died while idle.
        ``hosted_by_value``: the factory had to be pickled by value (so it cannot go to an
        interpreter of another Python version). ``reload``: hot reload is on (see
        ``_reload``)."""
        self._options = options
        self._hosted = hosted
        self._hosted_by_value = hosted_by_value
        #: The interpreter the workers run under, checked when the template first starts.
        self._interpreter: _environments.Interpreter | None = None
        self._env_removed: tuple[str, ...] = ()
        self._observer = observer
        self.pool_id = f"pool-{next(_pool_ids)}"
        # Whose pool it is: a process forked from the owner inherits it, but not its workers.
        self._owner_pid = os.getpid()
        # The workers' sys.path is the caller's at the time the pool is made.
        self._sys_path = tuple(sys.path)
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._source: WorkerSource | None = None
        self._supervisor: threading.Thread | None = None
        self._interrupts_installed = False
        #: Whether requests may be queued on busy workers (see ``_pipeline``): a pool that
        #: does keeps its queues in its ledger.
        self.pipelining = options.pipeline > 1
        self._pipelined = PipelinedLedger(options, time.monotonic) if self.pipelining else None
        self._ledger = self._pipelined or Ledger(options, time.monotonic)
        self._ledger.warm = max(self._ledger.warm, keep)
        self._reloader = Reloader(reload, self.pool_id) if reload is not None else None
        #: The last reload poll that found a file changed (see ``check_for_changes``).
        self.reload_changed_epoch = 0
        #: Templates replaced by hot reload, kept while workers forked from them finish
        #: their calls: (template, its supervisor thread, the first generation after it).
        self._old_sources: list[tuple[WorkerSource, threading.Thread | None, int]] = []
        _live_sets.add(self)

    @property
    def options(self) -> PoolOptions:
        return self._options

    @property
    def closed(self) -> bool:
        return self._ledger.closed

    def closed_error(self) -> PoolClosedError:
        if self._owner_pid != os.getpid():
            return PoolClosedError(
                f"the pool belongs to process {self._owner_pid}; this process was forked from it "
                "and must make a pool of its own"
            )
        return PoolClosedError("the pool is closed")

    @property
    def direct_copy(self) -> bool:
        """Whether segments may travel by address (known once the template has started)."""
        source = self._source
        return source is not None and source.direct_copy

    @property
    def started(self) -> bool:
        return self._source is not None

    def start(self) -> None:
        """Start the template (blocking); calls do this on demand. All or nothing: if any
        part fails, the pool is left as it was and the error propagates."""
        self._refuse_supervisor_thread()
        with self._start_lock:
            if self._ledger.closed:
                raise self.closed_error()
            if self._source is not None:
                return
            options = self._options
            env, self._env_removed = _environments.worker_environment(options.env, options.inherit_env)
            interpreter = _environments.resolve(options.python, env=env, cwd=options.cwd)
            if interpreter.cross_version and self._hosted_by_value:
                raise by_value_refused(interpreter.version_text)
            source = create_source(
                options.backend,
                WorkerSourceOptions(
                    preload=options.preload,
                    env=options.env,
                    cwd=options.cwd,
                    # Another interpreter keeps its own sys.path (the caller's would be wrong there).
                    sys_path=self._sys_path if interpreter.own else None,
                    sys_path_prefix=options.sys_path,
                    inherit_env=options.inherit_env,
                    interpreter_flags=not interpreter.cross_version,
                    borrowed=None if interpreter.own else _environments.borrowed_packages(),
                    memory_limit=options.memory_limit,
                    max_result_size=options.max_result_size,
                    hosted=self._hosted,
                    executable=None if interpreter.own else interpreter.path,
                    report_loaded=self._reloader is not None,
                    report_calls=self._reloader is not None and not one_call_per_worker(options),
                ),
            )
            self._interpreter = interpreter
            epoch = self._reloader.epoch if self._reloader is not None else 0
            source.start()
            if self._reloader is not None:
                if not interpreter.own:
                    self._reloader.ignore_standard_library(source.facts.get("stdlib"))
                self._reloader.template_started(source.loaded, epoch)
            supervisor = threading.Thread(
                target=self._supervise, args=(source,), name="freshproc-supervisor", daemon=True
            )
            try:
                supervisor.start()
            except RuntimeError as exc:  # "can't create new thread at interpreter shutdown"
                source.close()
                source.discard()
                raise PoolClosedError(f"cannot start the pool: {exc}") from exc
            if not self._interrupts_installed:
                self._interrupts_installed = _interrupts.install()
            self._commit_start(source, supervisor)

    @_interrupts.protected
    def _commit_start(self, source: WorkerSource, supervisor: threading.Thread) -> None:
        with self._lock:
            self._source = source
            self._supervisor = supervisor
            effects = self._ledger.source_started()
            effects.events.append(Event("template_started", source.pid))
        self._apply(effects, source)

    async def start_async(self) -> None:
        if self._source is None:
            await anyio.to_thread.run_sync(self.start)

    @_interrupts.protected
    def close(self) -> None:
        """End every worker and the template, and wait for them. Idempotent.

        Calls still running raise PoolClosedError; calls waiting for a worker too.
        """
        with self._start_lock:
            with self._lock:
                if self._ledger.closed:
                    return
                effects = self._ledger.close()
                # Nothing sends to the template once it is detached here, under the lock.
                source, supervisor = self._source, self._supervisor
                self._source = None
                old_sources, self._old_sources = self._old_sources, []
            self._apply(effects, None)
            for old_source, old_supervisor, _ in [*old_sources, (source, supervisor, 0)]:
                if old_source is not None:
                    old_source.close()
                if old_supervisor is not None and old_supervisor is not threading.current_thread():
                    old_supervisor.join()
            if self._reloader is not None:
                self._reloader.close()
            if self._interrupts_installed:
                self._interrupts_installed = False
                _interrupts.uninstall()

    def abandon(self) -> None:
        """Close without waiting or blocking (for a finalizer): the template sees its
        control channel close, ends every worker, and exits."""
        with self._lock:
            if self._ledger.closed:
                return
            effects = self._ledger.close()
            source, self._source = self._source, None
            old_sources, self._old_sources = self._old_sources, []
        self._apply(effects, None)
        for old_source, _, _ in old_sources:
            old_source.abandon()
        if source is not None:
            source.abandon()
        if self._reloader is not None:
            self._reloader.close()
        if self._interrupts_installed:
            self._interrupts_installed = False
            _interrupts.uninstall()

    def _forsake(self) -> None:
        """In a process forked from the owner: the template and workers are the owner's.
        Drop this process's copies of their descriptors, send nothing, refuse calls."""
        # The owner's threads did not survive the fork; a lock one of them held would
        # never be released here.
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        ledger = self._ledger
        ledger.closed = True
        for worker in [*ledger.workers.values(), *ledger.retiring.values()]:
            worker.channel.close()
        ledger.workers.clear()
        ledger.retiring.clear()
        ledger.idle.clear()
        ledger.waiting.clear()
        self._interrupts_installed = False
        source, self._source, self._supervisor = self._source, None, None
        for old_source, _, _ in self._old_sources:
            old_source.forsake()
        self._old_sources = []
        reloader, self._reloader = self._reloader, None
        if reloader is not None:
            reloader.forsake()
        if source is not None:
            source.forsake()

    @_interrupts.protected
    def recycle(self) -> None:
        """Replace every worker before it serves another call: idle ones now, busy ones
        when their call ends. Replacements are started ahead of demand."""
        with self._lock:
            effects = self._ledger.recycle()
            source = self._source
        self._apply(effects, source)

    @_interrupts.protected
    def retire_idle(self, pid: int, detail: str) -> None:
        """Retire worker ``pid`` now if it is idle (see ``Ledger.retire_idle``)."""
        with self._lock:
            effects = self._ledger.retire_idle(pid, detail)
            source = self._source
        self._apply(effects, source)

    def drain(self) -> None:
        """Start no more workers (before a service closes its replicas one by one)."""
        with self._lock:
            self._ledger.draining = True

    def stats(self) -> PoolStats:
        with self._lock:
            return self._ledger.stats()

    def pids(self) -> list[int]:
        """The pids of the workers alive now (for diagnostics and tests)."""
        with self._lock:
            return list(self._ledger.workers)

    @property
    def template_pid(self) -> int | None:
        source = self._source
        return source.pid if source else None

    @property
    def cross_version(self) -> str | None:
        """The workers' Python version when its minor version is not the caller's (then
        nothing may be pickled by value: bytecode does not travel); else None."""
        interpreter = self._interpreter
        return interpreter.version_text if interpreter is not None and interpreter.cross_version else None

    def describe(self) -> _environments.PoolDescription:
        """What the workers run under (starting the template if needed)."""
        self.start()
        source, interpreter = self._source, self._interpreter
        if source is None or interpreter is None:
            raise self.closed_error()
        return _environments.description(
            interpreter,
            getattr(source, "facts", {}),
            env_set=tuple(sorted(self._options.env or {})),
            env_removed=self._env_removed,
            direct_copy=source.direct_copy,
            template_pid=source.pid,
        )

    def watch_exit(self, worker: Worker, waiter: Waiter[ExitStatus]) -> bool:
        """Arrange for ``waiter`` to receive the worker's exit status; False if it is known
        already (in ``worker.exit_status``) or will never come (the pool closed)."""
        with self._lock:
            return self._ledger.watch_exit(worker, waiter)

    # -- checking workers out and in -----------------------------------------------------

    @_interrupts.protected
    def checkout(self, lease: Lease, waiter: Waiter[None] | None) -> bool:
        """Put an idle worker in ``lease`` and return True; else, with a ``waiter``, queue
        the lease (the worker arrives in it when the waiter wakes) and return False.
        Raises PoolClosedError, or TemplateLost when there is no template."""
        self._refuse_supervisor_thread()
        if self._reloader is not None:
            lease.reload_epoch = self.check_for_changes()
        with self._lock:
            if self._ledger.closed:
                raise self.closed_error()
            effects = self._ledger.checkout(lease, waiter)
            source = self._source
        if effects:
            self._apply(effects, source)
        return effects is None

    @_interrupts.protected
    def send(
        self, lease: QueuedLease, send: Callable[[Worker], bool], make_waiter: Callable[[], Waiter[None]]
    ) -> bool | None:
        """In a pipelining pool: send ``lease``'s request with ``send`` (False: the worker
        was gone) and queue it on its worker, as one step: requests go out in the order
        they are queued. True: it is at the head, and reads its reply; False: it waits for
        its turn (its new waiter wakes then). None: the worker refused it, or retired
        before it could send; the lease is empty again (after ``release(lease, "dead")``
        for a refusal)."""
        worker = lease.worker
        ledger = self._pipelined
        assert worker is not None
        assert ledger is not None
        pipeline = pipeline_of(worker)
        refusal: tuple[Effects, WorkerSource | None] | None = None
        with pipeline.send_lock:
            # Nothing goes to a worker being ended, or to one that broke the protocol.
            if worker.retiring or pipeline.draining == BROKEN:
                with self._lock:
                    refusal = ledger.refused(lease), self._source
            elif send(worker):
                lease.call_id = worker.call_id
                with self._lock:
                    head = ledger.enqueue(lease)
                    if head is False:
                        lease.waiter = make_waiter()
                return head
        if refusal is None:
            self.release(lease, "dead")
        elif refusal[0]:
            self._apply(*refusal)
        return None

    def mark_skipped(self, worker: Worker, call_id: int) -> None:
        """The worker dropped queued request ``call_id`` unstarted (``CallSkipped``)."""
        assert self._pipelined is not None
        with self._lock:
            self._pipelined.mark_skipped(worker, call_id)

    @_interrupts.protected
    def withdraw(self, lease: Lease) -> None:
        """The caller stopped waiting: take the lease off the queue."""
        with self._lock:
            self._ledger.withdraw(lease)

    @_interrupts.protected
    def release(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        recycle_requested: bool = False,
        calls_ok: int = 0,
        calls_failed: int = 0,
        keepalive: list[object] | None = None,
        held_bytes: int = 0,
        target: str | None = None,
    ) -> None:
        """Give back the worker in ``lease`` after a request that ended with ``outcome``.

        ``keepalive`` is what the request's by-address segments point into: a worker
        whose call was abandoned may still be copying from it, so it stays alive until
        that worker has exited. ``held_bytes`` is the size of the reply's by-address
        segments, which the worker frees once told they are copied.
        """
        worker = lease.worker
        if worker is None:
            return
        if worker.loaded:
            recycle_requested = self._note_loaded(worker, lease.reload_epoch) or recycle_requested
        rss = None
        if self._options.max_memory is not None and outcome in ("ok", "failed"):
            rss = self._memory(worker, held_bytes)
        with self._lock:
            effects = self._ledger.release(
                lease,
                outcome,
                recycle_requested=recycle_requested,
                calls_ok=calls_ok,
                calls_failed=calls_failed,
                rss=rss,
                keepalive=keepalive,
                target=target,
            )
            source = self._source
        if effects:
            self._apply(effects, source)

    # -- hot reload ---------------------------------------------------------------------

    def check_for_changes(self) -> int:
        """Before a dispatch: retire every worker that loaded a file changed on disk (busy
        ones, held ones included, are marked to retire when given back; see ``stale``).
        Returns the reload epoch the call is dispatched at (0 without hot reload)."""
        if self._reloader is None:
            return 0
        self._reload_changed()
        return self._reloader.epoch

    def note_loaded(self, worker: Worker, since_epoch: int) -> bool:
        """For a worker held across calls (a service's process serving several at once):
        take note of what one call loaded (``worker.loaded``; the call was dispatched at
        reload epoch ``since_epoch``). A worker found to hold an old version of a file is
        marked to retire when given back (True)."""
        if not worker.loaded or not self._note_loaded(worker, since_epoch):
            return False
        with self._lock:
            effects = self._ledger.retire_stale([worker.pid], "reload")
            source = self._source
        self._apply(effects, source)
        return True

    def stale(self, pids: list[int]) -> set[int]:
        """Those of ``pids`` (held workers) that are to retire when given back (hot reload
        or ``recycle`` marked them)."""
        with self._lock:
            ledger = self._ledger
            return {
                pid
                for pid in pids
                if (worker := ledger.workers.get(pid)) is not None and worker.record.generation != ledger.generation
            }

    def _note_loaded(self, worker: Worker, since_epoch: int) -> bool:
        """Take note of the files the worker loaded in its call; True if one of them may
        have changed since it was loaded (the worker holds an old version: retire it)."""
        reports, worker.loaded = worker.loaded, []
        reloader = self._reloader
        if reloader is None:
            return False
        with self._lock:
            alive = set(self._ledger.workers)
        stale = reloader.worker_loaded(worker.pid, reports, alive, since_epoch)
        if stale:
            reloader.announce(Change(tuple(stale), frozenset({worker.pid}), False), [worker.pid])
            return True
        # A change made since the call was sent and not yet polled: the worker depends on
        # the file now, so this poll retires it.
        self._reload_changed()
        return False

    def _reload_changed(self) -> None:
        """Before a dispatch: retire every worker that loaded a file changed on disk (and
        the template, if it loaded one)."""
        reloader = self._reloader
        assert reloader is not None
        if reloader.quiet():
            return
        with reloader.lock:  # until the stale workers are out of reach
            try:
                change = self._retire_changed(reloader)
                if change is not None:
                    self.reload_changed_epoch = reloader.epoch
            finally:
                reloader.busy = False
        if change is not None:
            retired, found = change
            reloader.announce(found, retired)
            if found.template:
                self._end_drained_sources()

    def _retire_changed(self, reloader: Reloader) -> tuple[list[int], Change] | None:
        """Retire what ``reloader.poll`` says changed (``reloader.lock`` held): the pids
        retired, and the change."""
        change = reloader.poll()
        if change is None:
            return None
        with self._lock:
            ledger = self._ledger
            if ledger.closed:
                return None
            retired = sorted(pid for pid in change.pids if pid in ledger.workers)
            effects = ledger.retire_stale(retired, f"reload: {', '.join(change.files)}")
            more = None
            if change.template:
                retired = sorted(ledger.workers)
                more = ledger.replace_source("the template restarted: a file it loaded changed")
                effects.spawn = 0  # the ledger forgot them: they come from the next template
                if self._source is not None:
                    # Kept until its busy workers finish (terminations reach it too).
                    self._old_sources.append((self._source, self._supervisor, ledger.generation))
                    self._source = self._supervisor = None
            source = self._source
        self._apply(effects, source)
        if more is not None:
            self._apply(more, source)
        return retired, change

    def _end_drained_sources(self) -> None:
        """End the replaced templates none of whose workers is left (their supervisor
        threads hear it and reap them)."""
        with self._lock:
            if not self._old_sources:
                return
            ledger = self._ledger
            oldest = min(
                (worker.record.generation for worker in [*ledger.workers.values(), *ledger.retiring.values()]),
                default=None,
            )
            drained = [entry for entry in self._old_sources if oldest is None or oldest >= entry[2]]
        for source, _, _ in drained:
            source.abandon()

    def reload_crash_cause(self, worker: Worker) -> str:
        """Words to add to a crash report when a shared object the worker had loaded has
        just changed on disk (empty otherwise)."""
        if self._reloader is None:
            return ""
        self._reload_changed()  # a change may be queued but not yet seen
        return self._reloader.crash_cause(worker.pid)

    def watched_files(self) -> frozenset[str]:
        """The files the workers and the template depend on now (empty without reload)."""
        return self._reloader.watched_files() if self._reloader is not None else frozenset()

    def _memory(self, worker: Worker, held_bytes: int) -> int | None:
        """The worker's own memory, when a ``max_memory`` policy needs it.

        The resident size is read first (cheap); only when it is over the limit is the
        worker's unique memory (USS: pages no other process shares, so not the template's
        copy-on-write pages that a large ``preload`` leaves in every worker) read to
        confirm. What the worker still holds for the caller to copy (``held_bytes``) is
        not counted.
        """
        limit = self._options.max_memory
        if limit is None:
            return None
        import psutil  # only pools with max_memory need it

        try:
            process = psutil.Process(worker.pid)
            rss = max(0, process.memory_info().rss - held_bytes)
            if rss <= limit:
                return rss
            return max(0, process.memory_full_info().uss - held_bytes)
        except psutil.Error:
            return None

    def _apply(self, effects: Effects, source: WorkerSource | None) -> None:
        """Carry out a transition's effects, outside the lock."""
        for lease in effects.wake:
            waiter = lease.waiter
            if waiter is not None and not waiter.wake():
                # Its event loop has closed: nobody will take the worker.
                with self._lock:
                    more = self._ledger.handoff_failed(lease)
                self._apply(more, source)
        for lease, error in effects.wake_errors:
            if lease.waiter is not None:
                lease.waiter.wake(error=error)
        for channel in effects.close:
            _loopreader.close(channel)
        if effects.queued is not None:
            self._apply_queued(effects.queued, source)
        # A template replaced by hot reload may still own some of the workers to end (each
        # template ignores the pids that are not its own).
        old_sources = [entry[0] for entry in self._old_sources] if self._old_sources else []
        for old_source in old_sources:
            for pid, grace in effects.terminate:
                old_source.terminate(pid, grace)
        if source is not None:
            for pid, grace in effects.terminate:
                source.terminate(pid, grace)
            if effects.spawn:
                source.spawn(effects.spawn)
        for exit_waiter, status in effects.exit_wakes:
            exit_waiter.wake(status)
        if effects.events:
            log_events(self.pool_id, effects.events)
            if self._observer is not None:
                self._observer(effects.events)

    def _apply_queued(self, queued: QueueEffects, source: WorkerSource | None) -> None:
        """Carry out what a pipelining pool's queues call for (see ``_queued``)."""
        ledger = self._pipelined
        assert ledger is not None
        for worker in queued.close:
            with pipeline_of(worker).send_lock:  # not while a request is being sent on it
                _loopreader.close(worker.channel)
        for worker, call_id in queued.cancel:
            _queued.send_cancel(worker, call_id)
        for worker in queued.resolve:
            pipeline = pipeline_of(worker)
            # No request goes out between the last look at the channel and the verdict:
            # one sent to a worker ended meanwhile could have started.
            with pipeline.send_lock:
                try:
                    head = pipeline.leases[0]
                except IndexError:
                    continue  # settled meanwhile (the worker was ended)
                ended = _queued.settle_head(worker, head, functools.partial(self.mark_skipped, worker))
                with self._lock:
                    more = ledger.resolved(worker, head, ended)
            self._apply(more, source)

    def _refuse_supervisor_thread(self) -> None:
        # A finalizer (__del__) that runs on the supervisor thread and makes a call would
        # wait for a worker that only this thread can deliver.
        if threading.current_thread() is self._supervisor:
            raise FreshprocError(
                "a call was made on freshproc's supervisor thread (from a __del__ or another "
                "finalizer that ran there); it would wait forever. Make the call elsewhere."
            )

    # -- the supervisor thread ------------------------------------------------------------

    def _supervise(self, source: WorkerSource) -> None:
        try:
            self._supervise_events(source)
        except BaseException as exc:
            # A bug here must not leave calls waiting forever: treat it as losing the template.
            self._on_lost(source, f"the supervisor failed: {exc!r}")
            raise
        finally:
            # _on_lost let go of the source under the lock: nobody sends on it any more.
            source.discard()

    def _supervise_events(self, source: WorkerSource) -> None:
        while True:
            event = source.read_event(self._next_timer())
            if event is None:
                self._transition(self._ledger.timers_due, source)
                continue
            match event:
                case Spawned(pid, channel):
                    self._on_spawned(pid, channel, source)
                case Exited(pid, exitcode, signum):
                    self._transition(lambda: self._ledger.exited(pid, exitcode, signum), source)
                case SpawnFailed(count, reason):
                    self._transition(lambda: self._ledger.spawn_failed(count, reason), source)
                case Lost(reason):
                    self._on_lost(source, reason)
                    return

    def _transition(self, transition: Callable[[], Effects], source: WorkerSource) -> None:
        with self._lock:
            effects = transition()
            current = self._source if self._source is source else None
            replaced = current is None and any(entry[0] is source for entry in self._old_sources)
        self._apply(effects, current)
        if replaced:
            self._end_drained_sources()

    def _next_timer(self) -> float | None:
        with self._lock:
            deadline = self._ledger.next_deadline()
        if deadline is None:
            # A worker that goes idle meanwhile expires idle_timeout from now at the
            # latest: waking up that late leaves it late by less than one timeout.
            return self._options.idle_timeout
        return max(0.0, deadline - time.monotonic())

    def _on_spawned(self, pid: int, channel: socket.socket, source: WorkerSource) -> None:
        with self._lock:
            if self._source is not source:  # closed meanwhile: the template ends it
                channel.close()
                return
            effects = self._ledger.spawned(pid, channel)
        self._apply(effects, source)

    def _on_lost(self, source: WorkerSource, reason: str) -> None:
        with self._lock:
            old = [entry for entry in self._old_sources if entry[0] is source]
            for entry in old:
                self._old_sources.remove(entry)
        if old:  # a template replaced by hot reload, ended once its workers were gone
            source.close()
            return
        with self._lock:
            if self._source is source:
                self._source = None
            effects = self._ledger.lost(reason, source.pid)
        self._apply(effects, None)
        source.close()  # reaps the template (idempotent: close() may be doing it too)


if TYPE_CHECKING:
    from collections.abc import Callable

# Every worker set of this process, so that a forked child can disown them all.
_live_sets: weakref.WeakSet[WorkerSet] = weakref.WeakSet()


def _forsake_inherited() -> None:
    for worker_set in list(_live_sets):
        worker_set._forsake()


os.register_at_fork(after_in_child=_forsake_inherited)


async def wait_async(lease: Lease) -> None:
    """Wait until the lease holds a worker (or raise what the pool reported instead)."""
    waiter = lease.waiter
    assert isinstance(waiter, AsyncWaiter)
    await waiter.wait()
    waiter.result()


def wait_sync(lease: Lease) -> None:
    waiter = lease.waiter
    assert isinstance(waiter, SyncWaiter)
    waiter.wait()
    waiter.result()
