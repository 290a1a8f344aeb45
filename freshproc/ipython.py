"""The IPython/Jupyter extension: ``%load_ext freshproc``.

``%%fresh`` runs a cell in a fresh worker. The names the cell reads from the notebook's
namespace travel there by value; the names it binds come back when they pickle (a short
report lists the ones that do not), and so does the value of a last expression. What the
cell writes to stdout and stderr (Python's streams and the descriptors beneath, so child
processes and C code too) streams back over a Unix socket as it is written, into the
cell's output. A crash of the worker shows its signal; the kernel carries on.

``%freshproc_reload on|off`` switches hot reload of the default pool, ``%freshproc stats`` prints the default pool's counters.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from freshproc import _api
from freshproc._cell import CELL_FILENAME, CellContext, CellResult, OutputRelay, names_read, run_cell
from freshproc._errors import CallTimeoutError, WorkerCrashedError
from freshproc._isolated import isolated
from freshproc._pool import Pool
from freshproc._serialization import dumps, loads


def load_ipython_extension(ipython: InteractiveShell) -> None:
    ipython.register_magics(FreshMagics(ipython))


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    magics = ipython.magics_manager.registry.get(FreshMagics.__name__)
    if isinstance(magics, FreshMagics):
        magics.close()


@magics_class
class FreshMagics(Magics):
    """``%%fresh``, ``%freshproc_reload`` and ``%freshproc``."""

    def __init__(self, shell: InteractiveShell) -> None:
        super().__init__(shell)
        self._pool: Pool | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _fresh_pool(self) -> Pool:
        if self._pool is None or self._pool.closed:
            self._pool = Pool(workers=1, fresh=True)
        return self._pool

    @magic_arguments()
    @argument("--timeout", "-t", type=float, default=None, help="seconds; a longer cell's worker is ended")
    @cell_magic
    def fresh(self, line: str, cell: str) -> object:
        """Run the cell in a fresh worker process: the names it reads travel there by
        value, the names it binds come back when they pickle."""
        args = parse_argstring(self.fresh, line)
        shell = self.shell
        assert shell is not None
        source = shell.transform_cell(cell)
        try:
            tree = ast.parse(source, CELL_FILENAME)
        except SyntaxError as exc:
            raise UsageError(f"%%fresh: the cell does not parse: {exc}") from None
        sent = _namespace_to_send(tree, shell.user_ns, shell.user_ns_hidden)
        context = CellContext(source, sent, list(sys.path), os.getcwd())
        pool = self._fresh_pool()
        with OutputRelay(sys.stdout, sys.stderr) as relay:
            try:
                result: CellResult = isolated(pool=pool, timeout=args.timeout)(run_cell)(context, relay.address)
            except (WorkerCrashedError, CallTimeoutError) as exc:
                relay.finish()
                _render_as(exc, [f"{type(exc).__name__}: the cell's worker ended: {exc}. This kernel carries on."])
                raise
        for name, data in result.bound.items():
            shell.user_ns[name] = loads(data, [])
        if result.not_returned:
            listed = ", ".join(f"{name} ({reason})" for name, reason in sorted(result.not_returned.items()))
            print(f"%%fresh: not brought back, as they do not pickle: {listed}", file=sys.stderr)
        if result.error_lines:
            error = _rebuilt_exception(result)
            _render_as(error, result.error_lines)
            raise error
        return loads(result.value, []) if result.value is not None else None

    @line_magic
    def freshproc_reload(self, line: str) -> None:
        """``%freshproc_reload on|off``: hot reload for the default pool."""
        choice = line.strip().lower()
        if choice not in ("on", "off"):
            raise UsageError("usage: %freshproc_reload on|off")
        _api.configure_default_pool(reload=choice == "on")
        print(f"freshproc: hot reload is {choice} for the default pool")

    @line_magic
    def freshproc(self, line: str) -> None:
        """``%freshproc stats``: the default pool's counters."""
        if line.strip() != "stats":
            raise UsageError("usage: %freshproc stats")
        stats = _api.default_pool().stats()
        width = max(len(item.name) for item in dataclasses.fields(stats))
        for item in dataclasses.fields(stats):
            print(f"{item.name:<{width}}  {getattr(stats, item.name)}")


def _render_as(exc: BaseException, lines: list[str]) -> None:
    """Have IPython show ``lines`` as the exception's traceback (its ``_render_traceback_``
    protocol), instead of the frames of this extension."""
    with contextlib.suppress(AttributeError):  # an exception without a __dict__ keeps its own
        exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]


def _namespace_to_send(tree: ast.AST, user_ns: dict[str, Any], hidden: dict[str, Any]) -> dict[str, bytes]:
    """The pickled values of the names the cell reads; a name that does not pickle is a
    usage error naming it (the cell would not find it in the worker)."""
    sent: dict[str, bytes] = {}
    problems: list[str] = []
    for name in sorted(names_read(tree)):
        if name not in user_ns or (name in hidden and hidden[name] is user_ns[name]):
            continue
        try:
            sent[name] = dumps(user_ns[name], out_of_band=False)[0]
        except Exception as exc:  # noqa: BLE001 - whatever stops pickling, the error says it
            problems.append(f"{name} ({exc})")
    if problems:
        raise UsageError(
            "%%fresh: the cell reads names whose values do not pickle, so they cannot travel: "
            + "; ".join(problems)
            + ". Make them in the cell instead."
        )
    return sent


def _rebuilt_exception(result: CellResult) -> BaseException:
    if result.error is not None:
        with contextlib.suppress(Exception):
            value = loads(result.error, [])
            if isinstance(value, BaseException):
                return value
    return FreshCellError(result.error_lines[-1].strip() if result.error_lines else "the cell failed")


class FreshCellError(Exception):
    """A ``%%fresh`` cell's exception that could not come back as itself."""
