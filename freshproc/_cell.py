"""Running a notebook cell in a worker (``%%fresh``, see ``freshproc.ipython``), apart
from IPython so that the worker never imports it.

The worker runs the cell's code in a namespace made of the values sent, and points its
descriptors 1 and 2 at a Unix socket for the time of the cell, so what the cell writes
(Python, C code and child processes alike) streams back as it is written; the caller's
``OutputRelay`` writes it into the cell's output. Closing the descriptors at the cell's
end tells the caller the output is complete.
"""

from __future__ import annotations

import ast
import builtins
import codecs
import contextlib
import linecache
import os
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from freshproc._serialization import dumps, loads

#: The file name a cell's code carries in the worker (in tracebacks).
CELL_FILENAME = "<fresh cell>"
#: How long output may keep coming after the cell ended (from a process it left behind).
_OUTPUT_LINGER = 1.0


def names_read(tree: ast.AST) -> set[str]:
    """The names a cell's code reads (loads, deletes, augmented assignments)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Load, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


class OutputRelay:
    """A Unix socket the worker connects its stdout and stderr to; a thread writes what
    arrives into this process's streams (the cell's output) as it comes."""

    def __init__(self, stdout: IO[str], stderr: IO[str]) -> None:
        self._streams = {b"1": stdout, b"2": stderr}
        self._folder = tempfile.mkdtemp(prefix="freshproc-cell-")
        self.address = os.path.join(self._folder, "output")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="freshproc-cell-output", daemon=True)

    def __enter__(self) -> OutputRelay:
        self._listener.bind(self.address)
        self._listener.listen(2)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()
        self._listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        shutil.rmtree(self._folder, ignore_errors=True)

    def finish(self) -> None:
        """Forward what is still coming (until the worker's ends close), then stop."""
        if self._thread.is_alive():
            os.write(self._wake_write, b"x")
            self._thread.join()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        open_streams: dict[socket.socket, _Stream] = {}
        deadline: float | None = None
        try:
            while deadline is None or open_streams:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    break
                for key, _ in selector.select(timeout):
                    if key.fileobj is self._listener:
                        connection, _ = self._listener.accept()
                        open_streams[connection] = _Stream()
                        selector.register(connection, selectors.EVENT_READ)
                    elif key.fileobj == self._wake_read:
                        # The cell ended: take the connections still queued, then drain.
                        selector.unregister(self._wake_read)
                        deadline = time.monotonic() + _OUTPUT_LINGER
                        self._listener.setblocking(False)
                        with contextlib.suppress(BlockingIOError):
                            while True:
                                connection, _ = self._listener.accept()
                                connection.setblocking(True)
                                open_streams[connection] = _Stream()
                                selector.register(connection, selectors.EVENT_READ)
                    else:
                        connection = key.fileobj  # type: ignore[assignment]
                        assert isinstance(connection, socket.socket)
                        if not self._forward(connection, open_streams[connection]):
                            selector.unregister(connection)
                            connection.close()
                            del open_streams[connection]
        finally:
            for connection in open_streams:
                connection.close()
            selector.close()

    def _forward(self, connection: socket.socket, stream: _Stream) -> bool:
        chunk = connection.recv(65536)
        if not chunk:
            text = stream.decoder.decode(b"", final=True)
            if text and stream.target is not None:
                stream.target.write(text)
            return False
        if stream.target is None:
            stream.target = self._streams.get(chunk[:1], self._streams[b"2"])
            chunk = chunk[1:]
        text = stream.decoder.decode(chunk)
        if text:
            stream.target.write(text)
            stream.target.flush()
        return True


@dataclass(slots=True)
class _Stream:
    target: IO[str] | None = None
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


# -- the worker's side ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CellContext:
    source: str
    sent: dict[str, bytes]
    sys_path: list[str]
    cwd: str


@dataclass(frozen=True, slots=True)
class CellResult:
    bound: dict[str, bytes]
    not_returned: dict[str, str]
    value: bytes | None = None
    error: bytes | None = None
    error_lines: list[str] = field(default_factory=list)


def run_cell(context: CellContext, relay_address: str) -> CellResult:
    sys.path[:] = context.sys_path + [entry for entry in sys.path if entry not in context.sys_path]
    os.chdir(context.cwd)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    for name, data in context.sent.items():
        namespace[name] = loads(data, [])
    received = dict(namespace)
    tree = ast.parse(context.source, CELL_FILENAME)
    last_expression = None
    if tree.body and isinstance(last := tree.body[-1], ast.Expr):
        tree.body.pop()
        last_expression = ast.Expression(last.value)
    linecache.cache[CELL_FILENAME] = (len(context.source), None, context.source.splitlines(True), CELL_FILENAME)
    value: bytes | None = None
    not_returned: dict[str, str] = {}
    with _output_to(relay_address):
        try:
            exec(compile(tree, CELL_FILENAME, "exec"), namespace)  # noqa: S102 - running the cell is the point
            if last_expression is not None:
                result = eval(compile(last_expression, CELL_FILENAME, "eval"), namespace)
                if result is not None:
                    value = _pickled(result, "the cell's value", not_returned)
        except BaseException as exc:  # noqa: BLE001 - the cell's error is shown in the notebook
            error_lines = traceback.format_exception(
                type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None
            )
            error = _pickled(exc, "the exception", {})
            return CellResult(_bound(namespace, received, not_returned), not_returned, None, error, error_lines)
    return CellResult(_bound(namespace, received, not_returned), not_returned, value)


def _bound(namespace: dict[str, Any], received: dict[str, Any], not_returned: dict[str, str]) -> dict[str, bytes]:
    """The names the cell bound (or rebound), pickled; those that do not pickle go in
    ``not_returned`` with the reason."""
    bound = {}
    for name, value in namespace.items():
        if name.startswith("__") or (name in received and received[name] is value):
            continue
        pickled = _pickled(value, name, not_returned)
        if pickled is not None:
            bound[name] = pickled
    return bound


def _pickled(value: object, name: str, problems: dict[str, str]) -> bytes | None:
    try:
        return dumps(value, out_of_band=False)[0]
    except Exception as exc:  # noqa: BLE001 - whatever stops pickling, the report says it
        problems[name] = str(exc) or type(exc).__name__
        return None


@contextlib.contextmanager
def _output_to(address: str) -> Iterator[None]:
    """Point descriptors 1 and 2 (and so ``sys.stdout``/``sys.stderr``) at the caller's
    relay for the cell; closing them at the end tells the caller the output is complete."""
    saved = []
    for fd, tag in ((1, b"1"), (2, b"2")):
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(address)
        connection.sendall(tag)
        _flush_streams()
        saved.append(os.dup(fd))
        os.dup2(connection.fileno(), fd)
        connection.close()
    try:
        yield
    finally:
        _flush_streams()
        for fd, previous in zip((1, 2), saved, strict=True):
            os.dup2(previous, fd)
            os.close(previous)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
