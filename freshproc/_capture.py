"""Output capture, the caller's side: the files a call's stdout and stderr go to, and
reading them back within a limit.

The caller makes two memfds per call and hands them to the worker with the request (the
worker points descriptors 1 and 2 at them for the call, see ``_worker._OutputCapture``).
The caller keeps its own descriptors, so what the call wrote can be read even when its
worker crashed, timed out or was cancelled.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from freshproc import _interrupts, _serialization


@dataclass(frozen=True, slots=True)
class Output:
    """What a call wrote to its stdout and stderr (``Pool(capture_output=True)``)."""

    stdout: str
    stderr: str


@_interrupts.protected
def open_files(files: list[int]) -> None:
    """Two memfds the worker writes the call's stdout and stderr into, appended to
    ``files`` as they are made. The caller keeps its own descriptors, so it can read what
    was written even if the worker dies."""
    files.append(os.memfd_create("freshproc-stdout", os.MFD_CLOEXEC))
    files.append(os.memfd_create("freshproc-stderr", os.MFD_CLOEXEC))


def read(files: list[int], limit: int | None) -> Output | None:
    """What the call wrote (None without capture files). With a ``limit`` (the pool's
    ``max_result_size``) the two streams together keep at most that many bytes: a longer
    one loses its middle, replaced by a marker saying how much went, and what is cut is
    never read."""
    if not files:
        return None
    sizes = (os.fstat(files[0]).st_size, os.fstat(files[1]).st_size)
    kept = _share(sizes, limit)
    stdout, stderr = (_read_kept(fd, size, keep) for fd, size, keep in zip(files, sizes, kept, strict=True))
    return Output(stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))


def _share(sizes: tuple[int, int], budget: int | None) -> tuple[int, int]:
    """How many bytes of each stream to keep, together within ``budget``: a stream
    smaller than half of it leaves the rest to the other."""
    first, second = sizes
    if budget is None or first + second <= budget:
        return sizes
    half = budget // 2
    if first <= half:
        return first, budget - first
    if second <= budget - half:
        return budget - second, second
    return half, budget - half


def _read_kept(fd: int, size: int, keep: int) -> bytes:
    """The captured bytes in ``fd``: all ``size`` of them, or the first and last
    ``keep`` // 2 with a marker between."""
    if keep >= size:
        return _read_at(fd, 0, size)
    head = keep // 2
    tail = keep - head
    marker = f"\n{_serialization.truncation_marker(size - keep)}\n".encode()
    return _read_at(fd, 0, head) + marker + _read_at(fd, size - tail, tail)


def _read_at(fd: int, offset: int, count: int) -> bytes:
    chunks = []
    end = offset + count
    while offset < end and (chunk := os.pread(fd, min(end - offset, 1 << 20), offset)):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def attach_output(exc: BaseException, captured: Output | None) -> None:
    """Attach a failed call's output to its exception: ``exc.captured_output`` (a
    ``(stdout, stderr)`` pair) and, on 3.11+, a note."""
    if captured is None:
        return
    try:
        exc.captured_output = (captured.stdout, captured.stderr)  # type: ignore[attr-defined]
    except AttributeError:
        return
    if sys.version_info >= (3, 11) and (captured.stdout or captured.stderr):
        exc.add_note(f"captured stdout:\n{captured.stdout}captured stderr:\n{captured.stderr}")
