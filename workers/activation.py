"""The activation worker: grace deadlines of FIRST_USE SIMs.

SIMs waiting for first use sit in a heap ordered by activation deadline. When the clock
passes a deadline, the SIM's billing starts AT THE DEADLINE (reason GRACE_EXPIRED), not
at the moment the worker noticed. Nothing due means no work: the production loop sleeps
until the earliest deadline (or until a new, earlier one is tracked); on a test clock,
`run_once` runs inside every ClockService.AdvanceTime.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import asyncpg
import structlog

from service.domain.activation import activation_deadline, started_sim
from service.domain.errors import StorageUnavailable
from service.domain.model import BillingStartReason, Sim
from service.ingestion.engine import UsageEngine
from service.ops.clock import Clock
from service.ops.metrics import Metrics
from service.state.cache import StateCache
from service.state.lock import StateLock
from service.storage import transactions
from service.storage.sims import update_sims

log = structlog.get_logger("activation")

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_RETRY_AFTER = timedelta(seconds=5)
_COMMIT_CHUNK = 10_000


async def _update_sims(conn: asyncpg.Connection, *, sims: list[Sim]) -> None:
    await update_sims(conn, sims)


class ActivationWorker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        cache: StateCache,
        engine: UsageEngine,
        clock: Clock,
        metrics: Metrics,
        state_lock: StateLock,
        count_committed: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._engine = engine
        self._clock = clock
        self._metrics = metrics
        self._state_lock = state_lock
        self._count_committed = count_committed  # see StateLock
        self._heap: list[tuple[datetime, str]] = []
        self._wake = asyncio.Event()

    def deadline_of(self, sim: Sim) -> datetime | None:
        """The deadline the SIM waits for, or None if it waits for nothing."""
        if sim.billing_started_at is not None:
            return None
        deadline = activation_deadline(self._cache.plans[sim.plan_id], sim.provisioned_at)
        if deadline is None or (sim.terminated_at is not None and sim.terminated_at <= deadline):
            return None
        return deadline

    def track(self, sim: Sim) -> None:
        deadline = self.deadline_of(sim)
        if deadline is None:
            return
        if not self._heap or deadline < self._heap[0][0]:
            self._wake.set()  # the loop sleeps until a later deadline: look again
        heapq.heappush(self._heap, (deadline, sim.iccid))

    @property
    def pending(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        while True:
            due = self._heap[0][0] if self._heap else _FAR_FUTURE
            self._wake.clear()
            await self._clock.wait_until(due, self._wake)
            try:
                await self.run_once(self._clock.now())
            except StorageUnavailable as exc:
                log.warning("activation deferred: database unavailable", error=str(exc))
                await self._clock.wait_until(self._clock.now() + _RETRY_AFTER, asyncio.Event())
            except Exception:
                # Not an outage (a bug, a violated constraint): logged and counted; the SIMs
                # stay due and are tried again later, the service keeps running.
                self._metrics.internal_errors.labels("activation").inc()
                log.exception("activation failed")
                await self._clock.wait_until(self._clock.now() + _RETRY_AFTER, asyncio.Event())

    async def run_once(self, now: datetime) -> int:
        """Start billing for every SIM whose deadline is <= now; returns how many."""
        if not self._heap or self._heap[0][0] > now:
            return 0
        started = time.perf_counter()
        async with self._state_lock:
            self._count_committed()
            due: list[Sim] = []
            while self._heap and self._heap[0][0] <= now:
                deadline, iccid = heapq.heappop(self._heap)
                sim = self._cache.sims[iccid]
                if self.deadline_of(sim) == deadline:  # not started meanwhile by first use
                    due.append(started_sim(sim, deadline, BillingStartReason.GRACE_EXPIRED))
            for offset in range(0, len(due), _COMMIT_CHUNK):
                chunk = due[offset : offset + _COMMIT_CHUNK]
                try:
                    await transactions.retried(self._pool, partial(_update_sims, sims=chunk))
                except Exception:
                    for sim in due[offset:]:  # not committed: keep waiting, retry next run
                        assert sim.billing_started_at is not None
                        heapq.heappush(self._heap, (sim.billing_started_at, sim.iccid))
                    raise
                for sim in chunk:
                    self._engine.install_start(sim)
        if due:
            log.info(
                "grace periods expired",
                activated=len(due),
                pending=len(self._heap),
                seconds=round(time.perf_counter() - started, 3),
            )
        return len(due)
