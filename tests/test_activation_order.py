"""Property: billing start and the charged records do not depend on arrival order.

Drives the rating engine exactly as the persister does (check -> plan_starts -> apply) on a
real StateCache, with no database: the commit step is the only thing left out.
"""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.model import (
    Account,
    ActivationMode,
    BillingMode,
    Plan,
    Proration,
    Sim,
    SimState,
    Threshold,
    Tier,
    UsageRate,
    UsageRecord,
    UsageType,
)
from service.ingestion.engine import UsageEngine
from service.ops.clock import TestClock
from service.state.cache import StateCache
from tests.support import T0
from tests.support.usage import replay

PLAN = Plan(
    plan_id="FU",
    currency="EUR",
    subscription_fee_micros=2_000_000,
    activation_mode=ActivationMode.FIRST_USE,
    thresholds=(Threshold(UsageType.DATA, 1_000), Threshold(UsageType.SMS, 3)),
    grace_period=timedelta(days=20),
    billing_mode=BillingMode.ALWAYS,
    proration=Proration.DAILY,
    usage_rates=(UsageRate(UsageType.DATA, 1_000, 100, 0, False, (Tier(0, 1_000),)),),
)
NOW = T0 + timedelta(days=40)

records_strategy = st.lists(
    st.tuples(
        st.integers(0, 40 * 24),  # hour of the event after provisioning
        st.sampled_from([UsageType.DATA, UsageType.SMS, UsageType.VOICE]),
        st.integers(0, 600),
    ),
    min_size=1,
    max_size=25,
)


def run(records: list[UsageRecord], batches: list[int]) -> tuple[object, object]:
    cache = StateCache()
    cache.put_plan(PLAN)
    cache.put_account(Account("A", "EUR"))
    cache.put_sims([Sim("8900000000000000001", "A", "FU", T0, SimState.PROVISIONED)])
    replay(UsageEngine(cache, TestClock(NOW)), records, batches)
    sim = cache.sims["8900000000000000001"]
    usage = cache.usage_of(sim.iccid)
    counters = {
        (period, usage_type): (c.raw_quantity, c.charged_rated_quantity, c.charged_records)
        for period, by_type in usage.periods.items()
        for usage_type, c in by_type.items()
    }
    return (sim.billing_started_at, sim.billing_start_reason), counters


@settings(max_examples=200, deadline=None)
@given(records_strategy, st.randoms(use_true_random=False))
def test_billing_start_and_charges_ignore_arrival_order(
    raw: list[tuple[int, UsageType, int]], rnd: random.Random
) -> None:
    records = [
        UsageRecord(f"r{i}", "8900000000000000001", usage_type, quantity, T0 + timedelta(hours=h))
        for i, (h, usage_type, quantity) in enumerate(raw)
    ]
    expected = run(sorted(records, key=lambda r: r.event_time), [len(records)])
    shuffled = records[:]
    rnd.shuffle(shuffled)
    batches = []
    left = len(shuffled)
    while left:
        size = rnd.randint(1, left)
        batches.append(size)
        left -= size
    assert run(shuffled, batches) == expected
