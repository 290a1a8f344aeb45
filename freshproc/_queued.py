"""The channel side of pipelined dispatch (bookkeeping in ``_pipeline`` and the ledger):
telling a worker that a queued request was given up, and finding out what a worker did
with a request at the head of its queue that nobody waits for any more.

When the head request is given up (cancelled, timed out, or cancelled while queued and
now first), the worker may be running it, or may have answered already. Without
blocking: an answer on the channel (its reply, thrown away, or ``CallSkipped``) settles it
and the worker carries on. No answer: every request behind it is cancelled first, then
the channel is looked at once more; still nothing, and the worker is ended. The cancels
went out before that last look, so a worker that finishes the head afterwards reads them
before it starts the next: the requests behind never started, and are sent again
elsewhere. Run only where no caller reads the channel (the head has none), and under the
worker's send lock: no request may go out between the last look and the verdict.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from freshproc import _buffers, _interrupts, _transport
from freshproc._errors import ProtocolError
from freshproc._pipeline import pipeline_of
from freshproc._protocol import CallFailure, CallResult, CallSkipped, CancelQueued, FilesLoaded, SegmentsCopied

if TYPE_CHECKING:
    from collections.abc import Callable

    from freshproc._ledger import Worker
    from freshproc._pipeline import QueuedLease

_DONTWAIT = int(socket.MSG_DONTWAIT)


def send_cancel(worker: Worker, call_id: int) -> None:
    """Tell the worker to drop queued request ``call_id`` (nothing if it is gone)."""
    with pipeline_of(worker).send_lock:
        _cancel(worker, call_id)


def _cancel(worker: Worker, call_id: int) -> None:
    if worker.channel.fileno() < 0:
        return
    try:
        _transport.send(worker.channel, CancelQueued(call_id))
    except OSError:
        pass  # it is gone: its head's reader (or the resolution) sees it


@_interrupts.protected
def settle_head(worker: Worker, head: QueuedLease, mark_skipped: Callable[[int], None]) -> str | None:
    """Find out what became of ``head``, ``worker``'s head request, nobody's any more:
    None when the worker answered for it (and may serve on), ``"crashed"`` when its channel
    closed, ``"broken"`` when it answered with something malformed, else the reason to end
    it (the head's ``abandoned``). ``mark_skipped`` records a ``CallSkipped`` for a request
    behind the head. Call it with the worker's send lock held."""
    leases = pipeline_of(worker).leases
    cancelled_behind = False
    while True:
        answer = _take_answer(worker, head.call_id, mark_skipped)
        if answer == "answered":
            return None
        if answer == "closed":
            return "crashed"
        if answer == "broken":
            return "broken"
        if answer == "again":
            continue
        if cancelled_behind:
            return head.abandoned or "cancelled"
        for lease in list(leases)[1:]:
            _cancel(worker, lease.call_id)
        cancelled_behind = True


def _take_answer(worker: Worker, call_id: int, mark_skipped: Callable[[int], None]) -> str:
    """One message off the channel, without waiting: ``answered`` (the head's reply or
    skip), ``again`` (a skip of another request, or the files the head loaded),
    ``nothing``, ``closed`` (it died during the head request) or ``broken`` (something
    malformed: it is past the head request)."""
    try:
        received = _transport.recv(worker.channel, _DONTWAIT)
    except BlockingIOError:
        return "nothing"
    except ConnectionResetError:
        return "closed"
    except (OSError, ProtocolError):
        return "broken"
    if received is None:
        return "closed"
    message, fds = received
    _buffers.close_all(fds)
    match message:
        case FilesLoaded():
            worker.loaded.append(message)  # hot reload: noted when the worker is next checked in
            return "again"
        case CallSkipped(skipped) if skipped != call_id:
            mark_skipped(skipped)
            return "again"
        case CallSkipped():
            return "answered"
        case CallResult(answered, payload) | CallFailure(answered, payload) if answered == call_id:
            if any(segment.address is not None for segment in payload.segments):
                try:
                    _transport.send(worker.channel, SegmentsCopied())
                except OSError:
                    pass
            return "answered"
    return "broken"  # out of order: the worker cannot be trusted
