"""The state lock: one lock orders every change of SIM state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType


def _nothing() -> None:
    pass


class StateLock:
    """The one lock that orders every change of state: catalog and provisioning writes,
    group commits, activations and settlement never interleave between check and commit.

    Catch-up: the persister may leave the lock with a group that is committed but not yet
    counted in the cache (it counts one group while the next one is being written, see
    `workers.persister`). The wiring registers the persister's counting as this lock's
    catch-up (`set_catch_up`); entering the lock runs it first, so inside the lock the
    cache always shows every committed record. The persister itself enters with
    `held_without_catch_up`: it counts its own pending group as it goes.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._catch_up: Callable[[], None] = _nothing
        self.waiting = 0  # tasks waiting to enter

    def set_catch_up(self, catch_up: Callable[[], None]) -> None:
        """Run `catch_up` on every entry (but `held_without_catch_up`), before the body."""
        self._catch_up = catch_up

    @property
    def catch_up(self) -> Callable[[], None]:
        return self._catch_up

    async def __aenter__(self) -> None:
        await self._acquire()
        try:
            self._catch_up()
        except BaseException:
            self._lock.release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()

    @asynccontextmanager
    async def held_without_catch_up(self) -> AsyncIterator[None]:
        """The lock alone, for the persister, which counts its own pending group itself."""
        await self._acquire()
        try:
            yield
        finally:
            self._lock.release()

    async def _acquire(self) -> None:
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
