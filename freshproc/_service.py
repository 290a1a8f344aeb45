"""Services: one long-lived object in a supervised worker process (or several replicas),
its methods called from the caller like a pool's targets.

Data flow (message names from ``_protocol``; request kinds from ``_worker``)::

    Service.call("predict", x) ─▶ _call.round_trip ──CallRequest(METHOD "predict")──▶ replica
                                                  ◀─CallResult / CallFailure──────────
    replica: built on its first request by the factory in its template's config (_hosted)

A service is a private worker set (one worker per replica, kept started) whose template
carries the pickled factory, so a restarted replica is a fork of that template plus one
factory call. The round trip is the pool's own (``_call``). What the service adds is the
supervision: when a call sees its process end (a crash, a timeout, a cancellation, a
factory that raised), ``_supervision.decide`` says whether the process is restarted and
after how long, or whether the service has failed.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import anyio

from freshproc import _call, _serialization
from freshproc._errors import (
    CallTimeoutError,
    FreshprocError,
    PoolClosedError,
    SerializationError,
    ServiceClosedError,
    ServiceFailedError,
    WorkerCrashedError,
)
from freshproc._ledger import Event, Lease, PoolStats
from freshproc._lender import WorkerLender
from freshproc._lifecycle import Lifecycle
from freshproc._policy import PoolOptions
from freshproc._reload import ReloadEvent, ReloadSettings
from freshproc._slots import SlotSet
from freshproc._supervision import Ending, RestartHistory, ServiceOptions, decide
from freshproc._worker import BUILD_HOSTED, BY_NAME, BY_VALUE, CLOSE_HOSTED, METHOD
from freshproc._workers import WorkerSet

T = TypeVar("T")
P = ParamSpec("P")
RetT = TypeVar("RetT")

logger = logging.getLogger("freshproc.service")


class Service(Lifecycle, Generic[T]):
    """A supervised object in a worker process; made by ``freshproc.service()``.

    Use it with ``async with`` or ``with``: entering builds the object (a factory that
    raises fails there, with its own exception); leaving closes it gracefully. Methods:
    ``await svc.call("method", ...)`` or ``await svc.method(...)``, and ``call_sync``.
    Cancelling a call (anyio cancellation), or its policy ``timeout``, ends the process
    running it; the supervisor restarts it (its object's state is lost) as its options
    say. A call whose process crashed raises ``WorkerCrashedError`` and is never run
    again; calls queued behind it run on the restarted process.
    """

    def __init__(self, factory: _call.Request, options: ServiceOptions, *, name: str, made_at: str) -> None:
        self._options = options
        self._name = name
        try:
            pickled, _ = _serialization.dumps(tuple(factory), out_of_band=False)
        except Exception as exc:
            culprit = _call.find_unpicklable(factory)
            raise SerializationError(
                f"cannot pickle the factory of service {name}: {exc}" + (f" [{culprit}]" if culprit else ""),
                direction="arguments",
                stage="dump",
            ) from exc
        pool_options = PoolOptions.build(
            workers=options.replicas,
            fresh=False,
            max_calls_per_worker=None,
            idle_timeout=None,
            timeout=options.timeout,
            preload=options.preload,
            env=options.env,
            cwd=options.cwd,
            max_memory=options.max_memory,
            memory_limit=options.memory_limit,
            capture_output=options.capture_output,
            grace_period=options.grace_period,
            max_result_size=None,
            backend="local",
            python=options.python,
            sys_path=options.sys_path,
            inherit_env=options.inherit_env,
        )
        # Weakly: the worker set lives on in its supervisor thread, and must not keep a
        # dropped service alive (its finalizer closes it).
        observe = weakref.WeakMethod(self._observe)

        def observer(events: list[Event]) -> None:
            method = observe()
            if method is not None:
                method(events)

        reloaded = weakref.WeakMethod(self._reloaded)

        def on_reload(event: ReloadEvent) -> None:
            method = reloaded()
            if method is not None:
                method(event)

        self._workers = WorkerSet(
            pool_options,
            hosted=pickled,
            keep=options.replicas,
            observer=observer,
            hosted_by_value=pool_options.python is not None and _needs_by_value(factory),
            reload=ReloadSettings.build(on_reload) if options.reload else None,
        )
        # Above one call at a time, calls go through slots: several channels per process.
        self._slots = (
            SlotSet(self._workers, replicas=options.replicas, concurrency=options.max_concurrency)
            if options.max_concurrency > 1
            else None
        )
        # What the round trip checks out from: either lends it workers.
        self._calls: WorkerLender = self._workers if self._slots is None else self._slots
        self._history = RestartHistory()
        self._lock = threading.Lock()
        self._restarts = 0
        self._failed: ServiceFailedError | None = None
        self._closed = False
        self._ready_at = 0.0  # a restart's backoff: calls wait until then
        self._in_flight = 0
        self._health_stop = threading.Event()
        self._health_thread: threading.Thread | None = None
        self._finalizer = weakref.finalize(
            self, _close_dropped, self._workers, self._slots, options.grace_period, name, made_at
        )

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the processes and build the object (in one replica at least; the others
        build theirs on their first call). The factory's exception propagates."""
        self._check_usable()
        await self._workers.start_async()
        await self._run_async(_call.Request(BUILD_HOSTED, None, (), {}))
        self._start_health()

    def start_sync(self) -> None:
        """Blocking ``start``."""
        self._check_usable()
        self._workers.start()
        self._run_blocking(_call.Request(BUILD_HOSTED, None, (), {}))
        self._start_health()

    # What `with` and `async with` start with (see ``_lifecycle``).
    _start_on_enter = start_sync
    _start_on_aenter = start

    def close(self) -> None:
        """Close the object gracefully in every idle process (its ``close()``, or
        ``__exit__`` / ``__aexit__``, waited for up to ``grace_period``), then end every
        process. Exceptions from the object's close are logged. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._finalizer.detach()
        self._health_stop.set()
        health = self._health_thread
        if health is not None and health is not threading.current_thread():
            health.join()
        _close_gracefully(self._workers, self._slots, self._options.grace_period, self._name)

    async def restart(self) -> None:
        """A new process and a new object for every replica: idle ones now, busy ones
        when their call ends."""
        self._check_usable()
        self._recycle()
        await self._run_async(_call.Request(BUILD_HOSTED, None, (), {}))

    def restart_sync(self) -> None:
        """Blocking ``restart``."""
        self._check_usable()
        self._recycle()
        self._run_blocking(_call.Request(BUILD_HOSTED, None, (), {}))

    def _recycle(self) -> None:
        self._workers.recycle()
        if self._slots is not None:
            self._slots.recycle()
        with self._lock:
            self._restarts += self._options.replicas

    # -- facts ----------------------------------------------------------------------------

    @property
    def options(self) -> ServiceOptions:
        return self._options

    @property
    def pids(self) -> list[int]:
        """The pids of the service's processes (its replicas) alive now."""
        return self._workers.pids()

    @property
    def pid(self) -> int | None:
        """The pid of its process (the first replica's), or None while none runs."""
        pids = self.pids
        return pids[0] if pids else None

    @property
    def restarts(self) -> int:
        """How many times a process of the service was restarted (``restart()`` included)."""
        return self._restarts

    @property
    def alive(self) -> bool:
        """Open and not failed."""
        return not self._closed and self._failed is None

    def stats(self) -> PoolStats:
        """The counters of the service's processes and calls (as ``Pool.stats()``)."""
        stats = self._workers.stats()
        return stats if self._slots is None else self._slots.stats(stats)

    # -- calls ----------------------------------------------------------------------------

    @overload
    async def call(
        self, method: Callable[Concatenate[T, P], Awaitable[RetT]], /, *args: P.args, **kwargs: P.kwargs
    ) -> RetT: ...
    @overload
    async def call(self, method: Callable[Concatenate[T, P], RetT], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    @overload
    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any: ...
    async def call(self, method: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """Call a method of the object (by name, or the class's own function, typed) with
        the arguments, keywords included. An ``async def`` method runs on the event loop
        the object lives with in its process."""
        return (await self._run_async(_call.Request(METHOD, _method_name(method), args, kwargs))).value

    @overload
    def call_sync(
        self, method: Callable[Concatenate[T, P], Awaitable[RetT]], /, *args: P.args, **kwargs: P.kwargs
    ) -> RetT: ...
    @overload
    def call_sync(self, method: Callable[Concatenate[T, P], RetT], /, *args: P.args, **kwargs: P.kwargs) -> RetT: ...
    @overload
    def call_sync(self, method: str, /, *args: Any, **kwargs: Any) -> Any: ...
    def call_sync(self, method: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """Blocking ``call``."""
        return self._run_blocking(_call.Request(METHOD, _method_name(method), args, kwargs)).value

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        """``await svc.method(...)``: the same as ``await svc.call("method", ...)``."""
        if name.startswith("_"):
            raise AttributeError(name)

        async def method(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, *args, **kwargs)

        method.__name__ = method.__qualname__ = name
        return method

    async def _run_async(self, request: _call.Request) -> _call.Reply:
        self._check_usable()
        delay = self._ready_at - time.monotonic()
        if delay > 0:
            await anyio.sleep(delay)  # a restart's backoff
        self._count_in_flight(+1)
        try:
            return await _call.run_async(
                self._calls,
                request,
                policy_timeout=self._options.timeout,
                capture=self._options.capture_output,
                max_result_size=None,
            )
        except BaseException as exc:
            replacement = self._after_failure(exc, cancelled=anyio.get_cancelled_exc_class())
            if replacement is None:
                raise
            raise replacement from replacement.__cause__ or exc
        finally:
            self._count_in_flight(-1)

    def _run_blocking(self, request: _call.Request, lease: Lease | None = None) -> _call.Reply:
        self._check_usable()
        delay = self._ready_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # a restart's backoff
        self._count_in_flight(+1)
        try:
            return _call.run_blocking(
                self._calls,
                request,
                timeout=self._options.timeout,
                capture=self._options.capture_output,
                max_result_size=None,
                lease=lease,
            )
        except BaseException as exc:
            replacement = self._after_failure(exc, cancelled=KeyboardInterrupt)
            if replacement is None:
                raise
            raise replacement from replacement.__cause__ or exc
        finally:
            self._count_in_flight(-1)

    # -- supervision ----------------------------------------------------------------------

    def _count_in_flight(self, change: int) -> None:
        with self._lock:
            self._in_flight += change

    def _observe(self, events: list[Event]) -> None:
        """A process that died while idle was replaced by the worker set on its own: it
        counts as a restart (and toward the intensity) all the same."""
        for event in events:
            if event.kind == "worker_crashed" and event.reason in _IDLE_DEATHS:
                status = event.status or (None, None)
                self._process_ended(
                    "crashed",
                    WorkerCrashedError(
                        f"process {event.pid} of service {self._name} died while idle",
                        pid=event.pid,
                        exitcode=status[0],
                        signal=status[1],
                    ),
                )

    def _reloaded(self, event: ReloadEvent) -> None:
        """Hot reload retired processes of the service: each restarts (not counted toward
        the restart intensity: nothing failed)."""
        restarted = len(event.retired)
        if not restarted:
            return
        with self._lock:
            self._restarts += restarted
        logger.info(
            "service %s: restarting %s (hot reload: %s changed)",
            self._name,
            "its process" if restarted == 1 else f"{restarted} processes",
            ", ".join(event.files),
            extra={"service": self._name, "reason": "reload", "files": event.files},
        )

    def _check_usable(self) -> None:
        if self._closed:
            raise ServiceClosedError(f"service {self._name} is closed")
        failed = self._failed
        if failed is not None:
            error = ServiceFailedError(str(failed))
            raise error from failed.__cause__

    def _after_failure(self, exc: BaseException, *, cancelled: type[BaseException]) -> BaseException | None:
        """Tell the supervisor how the failed call's process ended (if it did); return what
        the call raises instead of ``exc``, or None to re-raise ``exc`` itself."""
        ending: Ending | None = None
        if isinstance(exc, PoolClosedError) and self._closed:
            return ServiceClosedError(f"service {self._name} was closed during the call")
        if self._slots is not None and self._slots.take_ended() is None:
            pass  # its process was ended by another call (which reports it), or not at all
        elif isinstance(exc, _call.ObjectLost):
            ending = "factory_failed"
        elif isinstance(exc, WorkerCrashedError):
            ending = "exited" if exc.exitcode == 0 and exc.signal is None else "crashed"
        elif isinstance(exc, CallTimeoutError):
            ending = "timed_out"
        elif isinstance(exc, cancelled):
            ending = "cancelled"
        if ending is not None:
            self._process_ended(ending, exc.error if isinstance(exc, _call.ObjectLost) else exc)
        return exc.error if isinstance(exc, _call.ObjectLost) else None

    def _process_ended(self, ending: Ending, cause: BaseException) -> None:
        with self._lock:
            if self._closed or self._failed is not None:
                return
            decision = decide(self._options, self._history, ending, time.monotonic())
            if decision.restart:
                self._restarts += 1
                self._ready_at = time.monotonic() + decision.delay
                logger.info(
                    "service %s: restarting a process (%s) after %.3f s",
                    self._name,
                    ending,
                    decision.delay,
                    extra={"service": self._name, "reason": ending},
                )
                return
            failed = ServiceFailedError(_failure_message(self._name, self._options, ending))
            failed.__cause__ = cause
            self._failed = failed
        logger.warning("%s", failed, extra={"service": self._name, "reason": ending})

    # -- health ---------------------------------------------------------------------------

    def _start_health(self) -> None:
        if self._options.health is None or self._health_thread is not None:
            return
        self._health_thread = threading.Thread(
            target=self._check_health, name=f"freshproc-health-{self._name}", daemon=True
        )
        self._health_thread.start()

    def _check_health(self) -> None:
        """Every ``health_interval`` while the service is idle, call its health method in
        each idle process; one that raises or times out is restarted."""
        options = self._options
        assert options.health is not None
        request = _call.Request(METHOD, options.health, (), {})
        while not self._health_stop.wait(options.health_interval):
            if self._in_flight or not self.alive:
                continue
            leases = []
            while True:  # hold every idle process, so that each is checked once
                lease = Lease()
                if not _checkout_idle(self._workers, self._slots, lease):
                    break
                leases.append(lease)
            try:
                for lease in leases:
                    self._check_one(request, lease)
            finally:
                for lease in leases:  # any not checked (the service closed meanwhile)
                    self._calls.release(lease, "unused")

    def _check_one(self, request: _call.Request, lease: Lease) -> None:
        options = self._options
        worker = lease.worker
        assert worker is not None
        pid = worker.pid
        try:
            _call.run_blocking(
                self._calls, request, timeout=options.health_timeout, capture=False, max_result_size=None, lease=lease
            )
        except CallTimeoutError as exc:  # the process was ended by the timeout
            self._unhealthy(pid, f"{options.health}() did not answer within {options.health_timeout} s", exc)
        except Exception as exc:  # noqa: BLE001 - any failure of the check restarts the process
            if self._slots is None:
                self._workers.retire_idle(pid, "unhealthy")
            else:
                self._slots.retire(pid)
            self._unhealthy(pid, f"{options.health}() raised {type(exc).__name__}: {exc}", exc)
        finally:
            if self._slots is not None:
                self._slots.take_ended()  # counted here, as unhealthy

    def _unhealthy(self, pid: int, reason: str, cause: BaseException) -> None:
        logger.warning(
            "service %s: process %s failed its health check (%s); restarting it",
            self._name,
            pid,
            reason,
            extra={"service": self._name, "pid": pid, "reason": reason},
        )
        self._process_ended("unhealthy", cause)


#: How the worker set reports a process that died with no call running on it.
_IDLE_DEATHS = ("died while idle", "died before it received the call")


def _method_name(method: Callable[..., Any] | str) -> str:
    if isinstance(method, str):
        return method
    name = getattr(method, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"a method is named by a string or given as the class's function, not {method!r}")
    return name


def _failure_message(name: str, options: ServiceOptions, ending: Ending) -> str:
    if options.restart == "never":
        return f"service {name} failed: its process ended ({ending}) and restart='never'"
    if ending == "exited":
        return f"service {name} failed: its process ended cleanly and restart={options.restart!r}"
    return (
        f"service {name} failed: more than {options.max_restarts} restarts within "
        f"{options.restart_window} s (the last: {ending})"
    )


def _checkout_idle(workers: WorkerSet, slots: SlotSet | None, lease: Lease) -> bool:
    """A process that runs no call, in ``lease`` (one per process); False if none is."""
    return workers.checkout(lease, None) if slots is None else slots.checkout_idle(lease)


def _close_gracefully(workers: WorkerSet, slots: SlotSet | None, grace_period: float, name: str) -> None:
    """Close the object in each idle process (waiting up to ``grace_period`` for each),
    then end every process. Busy processes are ended with their calls."""
    workers.drain()
    if slots is not None:
        slots.drain()
    if workers.started:
        while True:
            lease = Lease()
            if not _checkout_idle(workers, slots, lease):
                break
            try:
                _call.run_blocking(
                    workers if slots is None else slots,
                    _call.Request(CLOSE_HOSTED, None, (), {}),
                    timeout=grace_period,
                    capture=False,
                    max_result_size=None,
                    lease=lease,
                )
            except Exception as exc:
                logger.warning(
                    "service %s: closing its object raised %s: %s",
                    name,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                    extra={"service": name},
                )
    if slots is not None:
        slots.close()
    workers.close()


def _close_dropped(workers: WorkerSet, slots: SlotSet | None, grace_period: float, name: str, made_at: str) -> None:
    """The finalizer of a service dropped without ``close()``: close it gracefully on a
    thread of its own (this may run on any thread, at any allocation), and say so."""
    if workers.closed:
        return
    warnings.warn(f"unclosed freshproc service {name} made at {made_at}", ResourceWarning, stacklevel=2)
    try:
        threading.Thread(
            target=_close_gracefully,
            args=(workers, slots, grace_period, name),
            name="freshproc-service-close",
            daemon=True,
        ).start()
    except RuntimeError:  # interpreter shutdown: no new threads; end it without waiting
        workers.abandon()


@overload
def service(
    factory: Callable[..., T], /, *args: Any, options: ServiceOptions | None = None, **kwargs: Any
) -> Service[T]: ...
@overload
def service(
    module: str, attr: str, /, *args: Any, options: ServiceOptions | None = None, **kwargs: Any
) -> Service[Any]: ...
def service(target: Any, /, *args: Any, options: ServiceOptions | None = None, **kwargs: Any) -> Service[Any]:
    """A service: ``factory(*args, **kwargs)`` (a class or any callable, shipped like
    ``run``'s: by name when importable, else by value), or ``module.attr(*args, **kwargs)``
    imported only in the worker, called once in a supervised worker process; the object
    it returns stays there and serves method calls.

    ``options`` is the one keyword the function keeps for itself: every other keyword,
    ``timeout=`` or ``restart=`` included, goes to the factory.
    """
    caller = sys._getframe(1)
    made_at = f"{caller.f_code.co_filename}:{caller.f_lineno}"
    options = options if options is not None else ServiceOptions()
    if not isinstance(options, ServiceOptions):
        raise TypeError(f"options must be a freshproc.ServiceOptions, not {type(options).__name__}")
    if isinstance(target, str):
        if not args or not isinstance(args[0], str):
            raise TypeError("service(module, attr, ...) needs the attribute's name as a string")
        module, attr, *rest = (target, *args)
        request = _call.Request(BY_NAME, (module, attr), tuple(rest), kwargs)
        name = f"{module}:{attr}"
    else:
        if not callable(target):
            raise TypeError(f"a service's factory must be callable, not {type(target).__name__}")
        request = _factory_request(target, args, kwargs)
        name = _call.describe_target(request)
    return Service(request, options, name=name, made_at=made_at)


def _factory_request(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _call.Request:
    """By name when the factory is importable from its module (so the worker imports the
    code on disk), else by value."""
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", "")
    if module not in (None, "__main__") and "<locals>" not in qualname and module in sys.modules:
        found: Any = sys.modules[module]
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is factory:
            return _call.Request(BY_NAME, (module, qualname), args, kwargs)
    return _call.Request(BY_VALUE, factory, args, kwargs)


def _needs_by_value(factory: _call.Request) -> bool:
    """Whether the factory (with its arguments) must be pickled by value: it then cannot
    go to an interpreter of another Python version (checked when the service starts)."""
    try:
        _serialization.dumps(tuple(factory), out_of_band=False, cross_version="another")
    except FreshprocError as exc:
        return not isinstance(exc, SerializationError)
    except Exception:  # noqa: BLE001 - unpicklable: reported as such when it is pickled
        return False
    return False


__all__ = ["Service", "ServiceOptions", "service"]
