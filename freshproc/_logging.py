"""Lifecycle events as records on the ``freshproc`` logger.

Every record carries structured fields in ``extra``: ``pool`` (the pool's id),
``pid`` (the worker's or template's), ``reason`` and ``target`` (the call, where one was
running). Frequent events (a worker started or retired by policy) are DEBUG; a crash, a
timeout, a lost template or a failed fork are WARNING. Nothing is logged on the path of a
call that simply succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from freshproc._errors import describe_exit
from freshproc._ledger import Event

logger = logging.getLogger("freshproc")

_LEVELS: dict[str, int] = {
    "worker_started": logging.DEBUG,
    "worker_retired": logging.DEBUG,
    "worker_recycled": logging.DEBUG,
    "worker_expired": logging.DEBUG,
    "worker_closed": logging.DEBUG,
    "worker_lost": logging.DEBUG,
    "worker_cancelled": logging.INFO,
    "worker_crashed": logging.WARNING,
    "worker_timed_out": logging.WARNING,
    "template_started": logging.INFO,
    "template_lost": logging.WARNING,
    "spawn_failed": logging.WARNING,
}

_MESSAGES: dict[str, str] = {
    "worker_started": "worker %(pid)s started",
    "worker_retired": "worker %(pid)s retired (%(reason)s)",
    "worker_recycled": "worker %(pid)s recycled",
    "worker_expired": "worker %(pid)s expired after idle_timeout",
    "worker_closed": "worker %(pid)s ended: the pool closed",
    "worker_lost": "worker %(pid)s lost with its template",
    "worker_cancelled": "call %(target)s was cancelled; its worker %(pid)s is ended",
    "worker_crashed": "worker %(pid)s crashed%(while)s%(how)s",
    "worker_timed_out": "call %(target)s timed out; its worker %(pid)s is ended",
    "template_started": "template %(pid)s started",
    "template_lost": "the worker template was lost: %(reason)s",
    "spawn_failed": "the template could not fork a worker: %(reason)s",
}


def log_events(pool_id: str, events: Iterable[Event]) -> None:
    for event in events:
        level = _LEVELS.get(event.kind, logging.INFO)
        if not logger.isEnabledFor(level):
            continue
        how = f" ({event.reason})" if event.reason else ""
        if event.status is not None:
            how += f": {describe_exit(*event.status)}"
        fields = {
            "pid": event.pid,
            "reason": event.reason,
            "target": event.target,
            "while": f" while running {event.target}" if event.target else "",
            "how": how,
        }
        logger.log(
            level,
            _MESSAGES.get(event.kind, event.kind),
            fields,
            extra={"pool": pool_id, "event": event.kind, **{k: fields[k] for k in ("pid", "reason", "target")}},
        )
