"""The state lock: one lock orders every change of SIM state."""

from __future__ import annotations

import asyncio
from types import TracebackType


class StateLock:
    """The one lock that orders every change of state: catalog and provisioning writes,
    group commits, activations, settlement and checkpoints never interleave between check
    and commit.

    The rule for its holders: the persister may release the lock with a group that is
    committed but not yet counted in the cache (it counts one group while it writes the
    next, see `service.ingestion.persister`). Whoever takes the lock to read or change
    state that depends on usage calls `Persister.count_committed()` right after entering
    (each such holder receives it in its constructor). From then until it releases the
    lock, the cache shows every committed record: only the persister commits usage, and it
    needs the lock to do so. Entering runs nothing but the lock itself.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.waiting = 0  # tasks waiting to enter

    async def __aenter__(self) -> None:
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()
