"""Bytes per SIM and per SIM-period of the state cache, measured with tracemalloc.

    python -m bench.memory [--sims 100000] [--records-per-sim 2] [--top 15]

Not a timed benchmark (tracemalloc slows allocation down several times) and not in the
registry: it builds a `StateCache` in this process through the service's own code paths
and reports what each part of it costs:

1. `--sims` SIMs (realistic 19-digit ICCIDs) in 100 accounts on 2 plans, installed with
   `StateCache.put_sims` in two forms: as `ProvisionSims` builds them (one instant and one
   account/plan id string per call of 10,000) and as a start loads them from PostgreSQL
   (rows with their own strings and instants, as the start's query returns them, through
   `storage.sims.sims_from_rows`);
2. one open period (2026-01) with usage for 90% of the SIMs, DATA, and for 10% also SMS,
   either counted through `UsageEngine` (check_all, plan_starts, apply: the persister's
   path, records with their own ICCID strings as gRPC decodes them) or restored as a start
   restores a checkpoint (`StateCache.restore_period`, counters of a month of hourly
   records);
3. the SIMs marked for the next checkpoint (`StateCache.mark_dirty`) are reported apart: the
   checkpoint empties that set every interval.

Bytes per SIM = the SIMs' allocations / SIMs; bytes per SIM-period = the usage's
allocations / SIMs with usage in the period (a SIM-period may hold DATA and SMS).
"""

from __future__ import annotations

import argparse
import gc
import random
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from service.domain.iccid import make_iccid
from service.domain.model import (
    Account,
    ActivationMode,
    BillingMode,
    BillingStartReason,
    Plan,
    Proration,
    Sim,
    SimState,
    Tier,
    UsageRate,
    UsageRecord,
    UsageType,
)
from service.ingestion.engine import UsageEngine
from service.ingestion.records import Candidate
from service.ops.clock import TestClock
from service.state.cache import StateCache
from service.storage.sims import sims_from_rows

ACCOUNTS = 100
PERIOD = "2026-01"
PROVISIONED_AT = datetime(2025, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 31, tzinfo=UTC)
CALL = 10_000  # SIMs per ProvisionSims call
MIB = 1_048_576
IMMEDIATE = BillingStartReason.IMMEDIATE


def plans() -> list[Plan]:
    def rate(usage_type: UsageType, unit: int, included: int, pooled: bool) -> UsageRate:
        return UsageRate(
            usage_type, unit, 1 if unit == 1 else 1024, included, pooled, (Tier(0, 100_000),)
        )

    def plan(plan_id: str, pooled: bool) -> Plan:
        return Plan(
            plan_id=plan_id,
            currency="EUR",
            subscription_fee_micros=2_000_000,
            activation_mode=ActivationMode.IMMEDIATE,
            thresholds=(),
            grace_period=timedelta(0),
            billing_mode=BillingMode.ALWAYS,
            proration=Proration.DAILY,
            usage_rates=(
                rate(UsageType.DATA, MIB, 10 * MIB, pooled),
                rate(UsageType.SMS, 1, 10, pooled),
            ),
        )

    return [plan("iot-basic", pooled=False), plan("iot-pool", pooled=True)]


def copy(text: str) -> str:
    """A new string object equal to `text` (as a decoded row or message field is)."""
    return "".join([text[:1], text[1:]])


def sims(count: int, loaded: bool) -> Iterator[Sim]:
    """The SIMs as ProvisionSims installs them (shared per call), or as a start loads them."""
    plan_ids = [plan.plan_id for plan in plans()]
    for call_start in range(0, count, CALL):
        account_id = f"account-{call_start // CALL % ACCOUNTS:03d}"
        plan_id = plan_ids[call_start // CALL % 2]
        at = PROVISIONED_AT + timedelta(seconds=call_start // CALL)
        call = range(call_start, min(call_start + CALL, count))
        if not loaded:
            for n in call:
                iccid = make_iccid(4_000_000_000 + n)
                yield Sim(iccid, account_id, plan_id, at, SimState.ACTIVE, at, IMMEDIATE)
            continue
        micros = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        rows = [  # as the start's query returns them: new objects for every value of every row
            (
                make_iccid(4_000_000_000 + n),
                copy(account_id),
                copy(plan_id),
                int(str(micros)),
                SimState.ACTIVE.value,
                int(str(micros)),
                IMMEDIATE.value,
                None,
                None,
            )
            for n in call
        ]
        yield from sims_from_rows(rows)


def new_cache(sim_count: int, loaded: bool) -> StateCache:
    cache = StateCache()
    for plan in plans():
        cache.put_plan(plan)
    for a in range(ACCOUNTS):
        cache.put_account(Account(f"account-{a:03d}", "EUR"))
    batch: list[Sim] = []
    for sim in sims(sim_count, loaded):
        batch.append(sim)
        if len(batch) == CALL:
            cache.put_sims(batch)
            batch = []
    cache.put_sims(batch)
    return cache


def users(cache: StateCache) -> tuple[list[str], list[str]]:
    """ICCIDs with DATA usage (90%) and with SMS usage too (10%), in a fixed random order."""
    iccids = list(cache.sims)
    random.Random(2026).shuffle(iccids)
    data = iccids[: len(iccids) * 9 // 10]
    return data, data[: len(iccids) // 10]


def count_usage(cache: StateCache, per_sim: int) -> int:
    """Count `per_sim` DATA records of 90% of the SIMs (and one SMS of 10%) through the
    engine, in batches of 1,000 as the persister groups them."""
    data, sms = users(cache)
    engine = UsageEngine(cache, TestClock(NOW))
    rng = random.Random(7)
    records = [
        UsageRecord(
            f"r-{k}-{iccid}",
            copy(iccid),
            UsageType.DATA,
            rng.randrange(1, 4 * MIB),
            NOW - timedelta(seconds=rng.randrange(1, 20 * 86400)),
        )
        for k in range(per_sim)
        for iccid in data
    ]
    records += [
        UsageRecord(f"s-{iccid}", copy(iccid), UsageType.SMS, 1, NOW - timedelta(days=1))
        for iccid in sms
    ]
    for position in range(0, len(records), 1_000):
        checked = engine.check_all(records[position : position + 1_000])
        candidates = [c for c in checked if isinstance(c, Candidate)]
        assert len(candidates) == len(checked), "every record must be counted"
        engine.apply(candidates, engine.plan_starts(candidates))
    return len(data)


def restore_usage(cache: StateCache) -> int:
    """Install the counters of a month of hourly records, as a start restores them."""
    data, sms = users(cache)
    rng = random.Random(7)
    rows = []
    for iccid in data:
        records = rng.randrange(700, 745)  # about one an hour; each row its own int objects
        raw = rng.randrange(records, records * 4 * MIB)
        rows.append((copy(iccid), UsageType.DATA.value, raw, raw, raw + 1024, records, records))
    for iccid in sms:
        sent = rng.randrange(257, 400)
        rows.append((copy(iccid), UsageType.SMS.value, sent, sent, sent, sent, sent))
    cache.restore_period(copy(PERIOD), rows)
    return len(data)


def measure(
    label: str, sim_count: int, loaded: bool, restored: bool, per_sim: int, top: int
) -> None:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    cache = new_cache(sim_count, loaded)
    gc.collect()
    with_sims = tracemalloc.take_snapshot()
    sim_bytes = _total(with_sims, base)
    if restored:
        with_usage_count = restore_usage(cache)
    else:
        with_usage_count = count_usage(cache, per_sim)
    gc.collect()
    with_usage = tracemalloc.take_snapshot()
    dirty = len(cache.take_marks()[0])  # what a checkpoint does
    gc.collect()
    checkpointed = tracemalloc.take_snapshot()
    tracemalloc.stop()
    usage_bytes = _total(checkpointed, with_sims)
    dirty_bytes = _total(with_usage, checkpointed)
    periods = sum(usage.period_count() for usage in cache.usage.values())
    print(
        f"\n== {label}: {sim_count:,} SIMs, {with_usage_count:,} SIM-periods ({periods:,} in cache)"
    )
    print(f"  per SIM (no usage):  {sim_bytes / sim_count:7.1f} bytes")
    print(f"  per SIM-period:      {usage_bytes / with_usage_count:7.1f} bytes")
    if dirty:
        per_dirty = dirty_bytes / dirty
        print(f"  dirty set ({dirty:,} SIMs, until the next checkpoint): {per_dirty:.1f} B per SIM")
    print("  top allocation sites, SIMs:")
    _top(with_sims, base, top)
    print("  top allocation sites, usage (after the checkpoint cleared the dirty set):")
    _top(checkpointed, with_sims, top)


def _total(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot) -> int:
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def _top(after: tracemalloc.Snapshot, before: tracemalloc.Snapshot, top: int) -> None:
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        where = "/".join(frame.filename.split("/")[-2:]) + f":{frame.lineno}"
        print(f"    {stat.size_diff:>12,} B {stat.count_diff:>10,} blocks  {where}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sims", type=int, default=100_000)
    parser.add_argument("--records-per-sim", type=int, default=2)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument(
        "--form", choices=["provisioned", "loaded"], action="append", help="default: both"
    )
    args = parser.parse_args(argv)
    for form in args.form or ["provisioned", "loaded"]:
        loaded = form == "loaded"
        measure(
            f"SIMs {form}, usage counted", args.sims, loaded, False, args.records_per_sim, args.top
        )
        measure(f"SIMs {form}, usage restored", args.sims, loaded, True, 0, args.top)


if __name__ == "__main__":
    main()
