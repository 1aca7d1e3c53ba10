"""The stored usage state (usage_aggregates, usage_uncharged, sim_settled_usage) against what
the stored usage records imply, computed here in Python from usage_records alone, and the
cache's counters against the stored ones."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import asyncpg

from service.state.cache import StateCache

Key = tuple[str, str, int]  # (period, iccid, usage_type)
Totals = tuple[int, int, int, int, int]  # raw, charged raw, charged rated, records, charged


class UsageState:
    def __init__(self) -> None:
        self.aggregates: dict[Key, Totals] = {}
        self.uncharged: Counter[tuple[Any, ...]] = Counter()
        self.settled_raw: dict[tuple[str, int], int] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UsageState) and (
            (self.aggregates, self.uncharged, self.settled_raw)
            == (other.aggregates, other.uncharged, other.settled_raw)
        )

    def __repr__(self) -> str:
        return (
            f"UsageState({len(self.aggregates)} aggregates, {sum(self.uncharged.values())}"
            f" uncharged, {len(self.settled_raw)} settled totals)"
        )


async def expected_state(conn: asyncpg.Connection) -> UsageState:
    """What the stored records imply: charged when event_time >= the SIM's billing start;
    uncharged ones kept for SIMs on FIRST_USE plans; settled totals over invoiced periods."""
    sims = {
        row["iccid"]: row
        for row in await conn.fetch(
            "SELECT s.iccid, s.account_id, s.billing_started_at,"
            " p.body ->> 'activation_mode' AS mode FROM sims s JOIN plans p USING (plan_id)"
        )
    }
    settled = {(r[0], r[1]) for r in await conn.fetch("SELECT account_id, period FROM invoices")}
    totals: defaultdict[Key, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    state = UsageState()
    for row in await conn.fetch(
        "SELECT iccid, usage_type, quantity, rated_quantity, event_time, period FROM usage_records"
    ):
        sim = sims.get(row["iccid"])
        if sim is None:
            continue
        total = totals[(row["period"], row["iccid"], row["usage_type"])]
        total[0] += row["quantity"]
        total[3] += 1
        start = sim["billing_started_at"]
        if start is not None and row["event_time"] >= start:
            total[1] += row["quantity"]
            total[2] += row["rated_quantity"]
            total[4] += 1
        elif sim["mode"] == "FIRST_USE":
            state.uncharged[
                (
                    row["iccid"],
                    row["event_time"],
                    row["usage_type"],
                    row["quantity"],
                    row["rated_quantity"],
                    row["period"],
                )
            ] += 1
    state.aggregates = {key: (t[0], t[1], t[2], t[3], t[4]) for key, t in totals.items()}
    for (period, iccid, usage_type), total in state.aggregates.items():
        if (sims[iccid]["account_id"], period) in settled:
            key = (iccid, usage_type)
            state.settled_raw[key] = state.settled_raw.get(key, 0) + total[0]
    return state


async def stored_state(conn: asyncpg.Connection) -> UsageState:
    state = UsageState()
    for row in await conn.fetch("SELECT * FROM usage_aggregates"):
        state.aggregates[(row["period"], row["iccid"], row["usage_type"])] = (
            int(row["raw_quantity"]),
            int(row["charged_raw_quantity"]),
            int(row["charged_rated_quantity"]),
            row["records"],
            row["charged_records"],
        )
    for row in await conn.fetch(
        "SELECT iccid, event_time, usage_type, quantity, rated_quantity, period"
        " FROM usage_uncharged"
    ):
        state.uncharged[tuple(row)] += 1
    for row in await conn.fetch("SELECT iccid, usage_type, raw_quantity FROM sim_settled_usage"):
        state.settled_raw[(row[0], row[1])] = int(row[2])
    return state


def cache_state(cache: StateCache) -> UsageState:
    """The cache's usage as a UsageState: counters of the periods it holds (open ones)."""
    state = UsageState()
    for iccid, usage in cache.usage.items():
        for period, by_type in usage.periods.items():
            for usage_type, c in by_type.items():
                state.aggregates[(period, iccid, usage_type.value)] = (
                    c.raw_quantity,
                    c.charged_raw_quantity,
                    c.charged_rated_quantity,
                    c.records,
                    c.charged_records,
                )
        for u in usage.uncharged:
            key = (iccid, u.event_time, u.usage_type.value, u.quantity, u.rated_quantity, u.period)
            state.uncharged[key] += 1
        for usage_type, raw in usage.settled_raw:
            state.settled_raw[(iccid, usage_type.value)] = raw
    return state


def open_part(state: UsageState, cache: StateCache) -> UsageState:
    """`state` without the aggregates of settled account-periods (and without zero totals
    of settled periods, which the cache does not keep)."""
    part = UsageState()
    part.aggregates = {
        key: totals
        for key, totals in state.aggregates.items()
        if (cache.sims[key[1]].account_id, key[0]) not in cache.settled
    }
    part.uncharged = state.uncharged
    # Memory holds them for SIMs on plans with thresholds only (SimUsage.settled_raw).
    part.settled_raw = {
        key: raw
        for key, raw in state.settled_raw.items()
        if cache.plans[cache.sims[key[0]].plan_id].thresholds
    }
    return part


SETTLED_SEQ = 2**63 - 1


async def check_checkpoint(conn: asyncpg.Connection) -> int:
    """The stored checkpoint is exact as of its seqs, whatever instant it was left at: each
    row of an open period holds the raw quantity and record count of the records with seq <=
    the row's seq <= the watermark, and every SIM-period-type with records up to the
    watermark has a row. Returns the watermark."""
    watermark: int = await conn.fetchval("SELECT watermark FROM usage_checkpoint")
    rows = {
        (row["period"], row["iccid"], row["usage_type"]): row
        for row in await conn.fetch("SELECT * FROM usage_aggregates")
    }
    by_key: defaultdict[Key, list[tuple[int, int]]] = defaultdict(list)  # (seq, quantity)
    for r in await conn.fetch("SELECT period, iccid, usage_type, quantity, seq FROM usage_records"):
        by_key[(r["period"], r["iccid"], r["usage_type"])].append((r["seq"], r["quantity"]))
    for key, row in rows.items():
        if row["seq"] == SETTLED_SEQ:
            continue
        assert row["seq"] <= watermark, key
        upto = [quantity for seq, quantity in by_key[key] if seq <= row["seq"]]
        assert (int(row["raw_quantity"]), row["records"]) == (sum(upto), len(upto)), key
    for key, records in by_key.items():
        if min(seq for seq, _ in records) <= watermark:
            assert key in rows, key
    return watermark
