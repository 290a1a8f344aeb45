"""Lifecycle: the ``with`` / ``async with`` protocol that every resource owner shares
(``Pool``, ``Service`` and their Dask counterparts).

Entering starts the owner; if starting fails, the owner is closed before the error
propagates, since ``with`` will not call ``__exit__`` then and a half-started owner must
not be left unclosed. Leaving closes it, shielded from cancellation so that a cancelled
task still waits for its processes to end. ``aclose`` runs the blocking ``close`` on a
worker thread. How an owner starts and closes is its own: each names its two starts
(``_start_on_enter``, ``_start_on_aenter``) and keeps its own ``close``.
"""

from __future__ import annotations

from abc import abstractmethod
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from typing_extensions import Self


class Lifecycle:
    """Base of the resource owners: ``with``/``async with`` start and close them."""

    @abstractmethod
    def close(self) -> None:
        """End what the owner holds and wait for it; idempotent."""

    @abstractmethod
    def _start_on_enter(self) -> None:
        """Start (blocking), for ``with``."""

    @abstractmethod
    async def _start_on_aenter(self) -> None:
        """Start, for ``async with``."""

    async def aclose(self) -> None:
        """``close`` for async code: it runs on a worker thread while the event loop goes on."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> Self:
        try:
            self._start_on_enter()
        except BaseException:
            self.close()  # `with` will not: what could not start is not left unclosed
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        try:
            await self._start_on_aenter()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()
