"""The state cache's footprint per SIM and per SIM-period (docs/storage.md, Memory).

SIMs are built from rows as a start loads them (every value its own object, as asyncpg
decodes it) and their usage is counted by the engine from records carrying their own
ICCID strings, as gRPC decodes them; tracemalloc counts what stays allocated. The bounds
leave ~20% above the figures measured here (134 and 285 bytes: 5,000 SIMs, so smaller
dict tables than bench/memory.py's 100,000); the layout before the compaction took 230
and 789.
"""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta

from service.domain.iccid import make_iccid
from service.domain.model import (
    Account,
    ActivationMode,
    BillingStartReason,
    SimState,
    UsageRecord,
    UsageType,
)
from service.ingestion.engine import UsageEngine
from service.ops.clock import TestClock
from service.state.cache import StateCache
from service.storage.sims import sims_from_rows
from tests.support import T0
from tests.support.builders import plan_p
from tests.support.usage import replay

SIMS = 5_000
HOUR = timedelta(hours=1)


def micros(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def fresh(text: str) -> str:
    """A new string object equal to `text`."""
    return "".join([text[:1], text[1:]])


def test_bytes_per_sim_and_per_sim_period() -> None:
    plan = plan_p(activation_mode=ActivationMode.IMMEDIATE, thresholds=())
    iccids = [make_iccid(9_000_000 + n) for n in range(SIMS)]
    rows = [  # as the start's query returns them: instants in microseconds since 1970
        (
            iccid,
            fresh("account-1"),
            fresh(plan.plan_id),
            micros(T0 - timedelta(days=1, microseconds=-n // 1_000)),
            SimState.ACTIVE.value,
            micros(T0 - timedelta(days=1, microseconds=-n // 1_000)),
            BillingStartReason.IMMEDIATE.value,
            None,
            None,
        )
        for n, iccid in enumerate(iccids)
    ]
    records = [
        UsageRecord(f"r{k}-{n}", fresh(iccid), UsageType.DATA, 1_000_000 + n, T0 + k * HOUR)
        for k in range(2)
        for n, iccid in enumerate(iccids)
    ]
    cache = StateCache()
    cache.put_plan(plan)
    cache.put_account(Account("account-1", "EUR"))
    engine = UsageEngine(cache, TestClock(T0 + timedelta(days=2)))

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache.put_sims(sims_from_rows(rows))  # type: ignore[arg-type]
        del rows
        gc.collect()
        with_sims = tracemalloc.get_traced_memory()[0]
        replay(engine, records, [1_000] * (len(records) // 1_000))
        del records
        cache.take_marks()  # as the next checkpoint does
        gc.collect()
        with_usage = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()

    counted = cache.usage_rows(cache.sims)
    assert len(counted) == SIMS and {row[6] for row in counted} == {2}  # records
    per_sim = (with_sims - before) / SIMS
    per_sim_period = (with_usage - with_sims) / SIMS
    assert per_sim < 165, per_sim
    assert per_sim_period < 340, per_sim_period
