"""The checkpoint worker: the in-memory usage counters written to PostgreSQL.

The group commit stores the records, not the counters (docs/storage.md). Counting marks
the SIMs whose counters change (`StateCache.mark_dirty`, and `mark_started` for installed
billing starts). Every `interval_s`, and once more at shutdown, a checkpoint:

1. under the state lock, after `Persister.count_committed()` (so the cache holds every
   record with seq <= the persister's `committed_seq`): copies the dirty SIMs' counters
   and takes W = `committed_seq`; clears the marks. Skipped while the persister has
   records in doubt (a commit whose outcome is unknown: they are not counted yet);
2. outside the lock, in ONE transaction: the counters as values exact at W (a row stored
   at a higher seq, a settled period's, is kept), the stored uncharged records up to W
   that the installed billing starts charge are deleted, and the watermark becomes W.

If the write fails, the SIMs are marked again: the next checkpoint writes fresher values.
A start loads the checkpoint and replays the records with seq > W, so after `kill -9` at
any instant (even during a checkpoint) the counters equal the stored records.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from service.domain.errors import StorageUnavailable
from service.ingestion.persister import Persister
from service.ops.metrics import Metrics
from service.state.cache import StateCache
from service.state.lock import StateLock
from service.storage import transactions, usage_state

log = structlog.get_logger("checkpoint")

SNAPSHOT_CHUNK = 1_000  # SIMs whose counters are copied between two turns of the event loop


@dataclass(frozen=True, slots=True)
class Snapshot:
    watermark: int
    sims: set[str]  # the dirty SIMs whose counters `rows` holds
    rows: list[usage_state.AggregateRow]
    started: set[str]  # the SIMs whose billing start was installed
    starts: list[tuple[str, datetime]]


class CheckpointWorker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        cache: StateCache,
        persister: Persister,
        state_lock: StateLock,
        metrics: Metrics,
        *,
        interval_s: float,
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._persister = persister
        self._state_lock = state_lock
        self._metrics = metrics
        self._interval_s = interval_s
        self._one_at_a_time = asyncio.Lock()  # the loop's and the shutdown's
        self._written: int | None = None  # the watermark stored by the last checkpoint

    async def run(self) -> None:
        """Checkpoint every interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.run_once()
            except StorageUnavailable as exc:
                log.warning("checkpoint deferred: database unavailable", error=str(exc))
            except Exception:
                # Not an outage (a bug, a violated constraint): logged and counted; the SIMs
                # stay marked and the next checkpoint tries again, the service keeps running.
                self._metrics.internal_errors.labels("checkpoint").inc()
                log.exception("checkpoint failed")

    async def write_last(self, seconds: float) -> None:
        """At stop, once the persister is drained: the counters as it left them, so the
        next start replays nothing; if they cannot be written within `seconds`, the next
        start replays more (service.recovery)."""
        try:
            await asyncio.wait_for(self.run_once(), seconds)
        except (StorageUnavailable, TimeoutError) as exc:
            log.warning("last checkpoint not written; the next start replays", error=repr(exc))

    async def run_once(self) -> int | None:
        """Write one checkpoint (nothing if nothing changed since the last one); its
        watermark, or None if skipped (records in doubt)."""
        async with self._one_at_a_time:
            started = time.perf_counter()
            async with self._state_lock:
                self._persister.count_committed()
                if self._persister.in_doubt:
                    self._metrics.checkpoints.labels("skipped").inc()
                    log.info(
                        "checkpoint skipped: records in doubt", records=self._persister.in_doubt
                    )
                    return None
                snapshot = await self._take()
            if not snapshot.sims and not snapshot.started and snapshot.watermark == self._written:
                return self._written  # nothing changed since the last one
            locked = time.perf_counter() - started
            try:
                async with transactions.transaction(self._pool) as conn:
                    await usage_state.write_checkpoint(
                        conn, snapshot.rows, snapshot.starts, snapshot.watermark
                    )
            except BaseException:
                # Outages arrive as StorageUnavailable (transactions.transaction); either way
                # the SIMs are marked again, for the next checkpoint.
                self._cache.mark_again(snapshot.sims, snapshot.started)
                self._metrics.checkpoints.labels("failed").inc()
                raise
            elapsed = time.perf_counter() - started
            self._written = snapshot.watermark
            self._metrics.checkpoints.labels("written").inc()
            self._metrics.checkpoint_rows.inc(len(snapshot.rows))
            self._metrics.checkpoint_seconds.observe(elapsed)
            self._metrics.checkpoint_watermark.set(snapshot.watermark)
            log.info(
                "checkpoint written",
                watermark=snapshot.watermark,
                sims=len(snapshot.sims),
                rows=len(snapshot.rows),
                starts=len(snapshot.starts),
                locked_seconds=round(locked, 4),
                seconds=round(elapsed, 4),
            )
            return snapshot.watermark

    async def _take(self) -> Snapshot:
        """Under the state lock: the marked SIMs' counters and the watermark; clears the marks.

        The counters are copied SNAPSHOT_CHUNK SIMs at a time, with the event loop let run
        between two chunks: the first checkpoint after a start that replayed many records
        copies every SIM with usage (631,724 at the hot benchmark's 1M SIMs, ~2 s of
        Python), and calls must not wait for it. The lock stays held, so no counter changes
        meanwhile (only its holders count records)."""
        cache = self._cache
        # Taken at once and put back if cancelled while copying: every mark stays in place.
        sims, started = cache.take_marks()
        rows: list[usage_state.AggregateRow] = []
        pending = list(sims)
        try:
            for first in range(0, len(pending), SNAPSHOT_CHUNK):
                if first:
                    await asyncio.sleep(0)  # serve calls; the lock is still held
                rows.extend(cache.usage_rows(pending[first : first + SNAPSHOT_CHUNK]))
        except BaseException:
            cache.mark_again(sims, started)
            raise
        starts = []
        for iccid in started:
            start = cache.sims[iccid].billing_started_at
            if start is not None:
                starts.append((iccid, start))
        return Snapshot(self._persister.committed_seq, sims, rows, started, starts)
