"""The one source of time. Every component asks a Clock, never `datetime.now()`.

`SystemClock` follows the wall clock. `TestClock` stands still until `advance_to` moves it;
each move then runs every subscribed worker step in order (activation before settlement),
so a caller of ClockService.AdvanceTime reads the results as soon as it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from service.domain.errors import InvalidArgument

DueWork = Callable[[datetime], Awaitable[object]]
TEST_CLOCK_LIMIT = datetime(3000, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def wait_until(self, when: datetime, wake: asyncio.Event) -> None:
        """Return when `when` has come or `wake` is set, whichever is first."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def wait_until(self, when: datetime, wake: asyncio.Event) -> None:
        delay = (when - self.now()).total_seconds()
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            pass


class TestClock:
    """A clock that moves only when told, monotonically, running due work on each move."""

    __test__ = False  # not a pytest test class

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime.now(UTC)).astimezone(UTC)
        self._due_work: list[DueWork] = []
        self._lock = asyncio.Lock()

    def now(self) -> datetime:
        return self._now

    def subscribe(self, work: DueWork) -> None:
        """Run `work(now)` after every move, in subscription order."""
        self._due_work.append(work)

    async def wait_until(self, when: datetime, wake: asyncio.Event) -> None:
        # Due work runs inside advance_to; a worker loop on a test clock only needs waking.
        await wake.wait()

    async def advance_to(self, when: datetime) -> datetime:
        if when.tzinfo is None:
            raise InvalidArgument("to", "must carry a time zone")
        if when >= TEST_CLOCK_LIMIT:
            # Far beyond any billing horizon; date arithmetic near year 9999 overflows.
            raise InvalidArgument("to", f"must be before {TEST_CLOCK_LIMIT.date().isoformat()}")
        async with self._lock:
            if when < self._now:
                raise InvalidArgument("to", f"time never goes back (now {self._now.isoformat()})")
            self._now = when.astimezone(UTC)
            for work in self._due_work:
                await work(self._now)
            return self._now
