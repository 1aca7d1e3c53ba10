"""Restart recovery: the state cache rebuilt from PostgreSQL at start.

In order, in one snapshot (docs/storage.md): plans, accounts, SIMs and settled periods;
then the usage state of OPEN account-periods only: the last checkpoint's aggregates, the
uncharged records of FIRST_USE SIMs and the settled raw totals, the current billing
starts installed again on them; then the records committed after the checkpoint's
watermark (`usage_records.seq`) in open account-periods, replayed through the rating
engine as their counting after commit did. Nothing of a settled period is read, so a
start depends on the SIMs, the open periods and the records since the last checkpoint,
not on history.

The other half, the last checkpoint at stop (so the next start replays nothing), is
`CheckpointWorker.write_last`.
"""

from __future__ import annotations

import time
from datetime import datetime

import asyncpg
import structlog

from service.domain.activation import is_charged
from service.ingestion.engine import UsageEngine
from service.ops.metrics import Metrics
from service.state.cache import StateCache
from service.storage import catalog, invoices, sims, usage_records, usage_state

log = structlog.get_logger("recovery")

REPLAY_CHUNK = 50_000  # records counted at a time while the start replays


async def load_cache(
    pool: asyncpg.Pool, cache: StateCache, engine: UsageEngine, metrics: Metrics
) -> int:
    """Fill the empty `cache` from the database; returns the `usage_records.seq` of the
    last committed record (the persister's starting `committed_seq`)."""
    started = time.perf_counter()
    # One snapshot: every table as of one instant (nothing else writes at start, but a
    # cursor needs a transaction anyway).
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        for plan in await catalog.load_plans(conn):
            cache.put_plan(plan)
        for account in await catalog.load_accounts(conn):
            cache.put_account(account)
        cache.load_sims([s async for chunk in sims.load_sims(conn) for s in chunk])
        cache.add_settled(await invoices.settled_periods(conn))
        watermark = await usage_state.checkpoint_watermark(conn)
        sim_periods = await _load_usage_state(conn, cache, watermark)
        engine.charge_restored_uncharged()
        replayed, committed_seq = await _replay(conn, cache, engine, watermark)
    metrics.cache_loaded_sim_periods.set(sim_periods)
    metrics.cache_replayed_records.set(replayed)
    log.info(
        "cache loaded",
        plans=len(cache.plans),
        accounts=len(cache.accounts),
        sims=len(cache.sims),
        sim_periods=sim_periods,
        replayed_records=replayed,
        committed_seq=committed_seq,
        seconds=round(time.perf_counter() - started, 3),
    )
    return committed_seq


async def _load_usage_state(conn: asyncpg.Connection, cache: StateCache, watermark: int) -> int:
    """The last checkpoint's usage state of OPEN account-periods (no invoice), the
    uncharged records and settled raw totals. Returns the SIM-periods loaded. Settled
    periods are never read: their SIMs' totals are in sim_settled_usage."""
    loaded = 0
    with_sims = [a for a in cache.accounts if cache.account_has_sims(a)]
    for period in await usage_state.aggregate_periods(conn):
        open_accounts = [a for a in with_sims if (a, period) not in cache.settled]
        if open_accounts:
            everyone = len(open_accounts) == len(with_sims)
            async for rows in usage_state.period_aggregates(
                conn, period, None if everyone else open_accounts
            ):
                loaded += cache.restore_period(period, rows)
    cache.restore_uncharged(_uncharged_at(cache, watermark, await usage_state.uncharged_rows(conn)))
    with_thresholds = [p.plan_id for p in cache.plans.values() if p.thresholds]
    async for settled in usage_state.settled_usage(conn, with_thresholds):
        cache.restore_settled_raw(settled)
    return loaded


def _uncharged_at(
    cache: StateCache, watermark: int, rows: list[tuple[usage_state.UnchargedRow, int]]
) -> list[usage_state.UnchargedRow]:
    """The stored uncharged records as the checkpoint's state holds them: those with
    seq <= watermark (the replay adds the later ones of open periods again), and those
    of settled periods the current billing start does not charge (a settled period's
    stored counters already hold the charged ones, and its records are not replayed)."""
    kept = []
    for row, seq in rows:
        sim = cache.sims.get(row[0])
        if sim is None:
            continue
        if (sim.account_id, row[5]) in cache.settled:
            if not is_charged(row[1], sim.billing_started_at):
                kept.append(row)
        elif seq <= watermark:
            kept.append(row)
    return kept


async def _replay(
    conn: asyncpg.Connection, cache: StateCache, engine: UsageEngine, watermark: int
) -> tuple[int, int]:
    """Count the records committed after `watermark` in open account-periods; returns
    (records replayed, the last seq committed)."""
    last, replayed = watermark, 0
    known_sims, settled = cache.sims, cache.settled
    batch: list[tuple[str, int, int, int, datetime, str]] = []
    async for iccid, kind, quantity, rated, event_time, period, seq in usage_records.records_after(
        conn, watermark
    ):
        last = seq
        sim = known_sims.get(iccid)
        if sim is None or (sim.account_id, period) in settled:
            continue
        batch.append((iccid, kind, quantity, rated, event_time, period))
        if len(batch) >= REPLAY_CHUNK:
            replayed += engine.replay(batch)
            batch.clear()
    replayed += engine.replay(batch)
    return replayed, last
