"""Properties of settlement over arrival order and duplicates.

1. Hypothesis, on the rating engine exactly as the persister drives it (check ->
   plan_starts -> apply on a real StateCache, no database) and `compute_invoice`: the
   invoices of every period are the same whatever the order and batching of the records.
2. A few seeded random examples end to end: two accounts get the same usage, one in
   event-time order, the other shuffled into random batches with every record sent
   twice; their settled invoices have the same lines.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rating.v1 import types_pb2 as t
from service.domain.model import (
    Account,
    ActivationMode,
    BillingMode,
    CommitmentStep,
    Invoice,
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
from service.domain.periods import period_named
from service.domain.settlement import compute_invoice
from service.ingestion.engine import UsageEngine
from service.ops.clock import TestClock
from service.state.cache import StateCache
from tests.support import T0, Stubs, first_use_plan, iccids
from tests.support.billing import advance, provision, put_account, put_plans, settle, step, utc
from tests.support.usage import rate, record, replay

PLAN = Plan(
    plan_id="FU",
    currency="EUR",
    subscription_fee_micros=2_000_000,
    activation_mode=ActivationMode.FIRST_USE,
    thresholds=(Threshold(UsageType.DATA, 1_000),),
    grace_period=timedelta(days=20),
    billing_mode=BillingMode.ALWAYS,
    proration=Proration.DAILY,
    usage_rates=(
        UsageRate(UsageType.DATA, 1_000, 100, 500, True, (Tier(2_000, 1_000), Tier(0, 300))),
        UsageRate(UsageType.SMS, 1, 1, 1, False, (Tier(0, 50_000),)),
    ),
)
USED = Plan(
    plan_id="WU",
    currency="EUR",
    subscription_fee_micros=1_000_000,
    activation_mode=ActivationMode.IMMEDIATE,
    thresholds=(),
    grace_period=timedelta(0),
    billing_mode=BillingMode.WHEN_USED,
    proration=Proration.NONE,
    usage_rates=(UsageRate(UsageType.DATA, 1_000, 10, 0, False, (Tier(0, 2_000),)),),
)
ACCOUNT = Account("A", "EUR", commitment_schedule=(CommitmentStep("2026-01", 4, "FU", 9_000_000),))
SIMS = [(f"89000000000000000{n:02d}", "FU" if n < 3 else "WU") for n in range(5)]
NOW = T0 + timedelta(days=62)

records_strategy = st.lists(
    st.tuples(
        st.integers(0, len(SIMS) - 1),
        st.integers(0, 59 * 24),  # hour of the event after T0: January and February
        st.sampled_from([UsageType.DATA, UsageType.SMS, UsageType.VOICE]),
        st.integers(0, 1_500),
    ),
    min_size=1,
    max_size=30,
)


def invoices(records: list[UsageRecord], batches: list[int]) -> list[Invoice]:
    cache = StateCache()
    cache.put_plan(PLAN)
    cache.put_plan(USED)
    cache.put_account(ACCOUNT)
    cache.put_sims(
        Sim(iccid, "A", plan_id, T0, SimState.PROVISIONED)
        if plan_id == "FU"
        else Sim(iccid, "A", plan_id, T0, SimState.ACTIVE, T0)
        for iccid, plan_id in SIMS
    )
    replay(UsageEngine(cache, TestClock(NOW)), records, batches)
    return [
        compute_invoice(
            ACCOUNT,
            cache.plans,
            period_named(name, "UTC", 1),
            cache.period_facts("A", name),
            final=False,
        )
        for name in ("2026-01", "2026-02")
    ]


@settings(max_examples=150, deadline=None)
@given(records_strategy, st.randoms(use_true_random=False))
def test_invoices_ignore_arrival_order_and_batching(
    raw: list[tuple[int, int, UsageType, int]], rnd: random.Random
) -> None:
    records = [
        UsageRecord(f"r{i}", SIMS[sim][0], usage_type, quantity, T0 + timedelta(hours=h))
        for i, (sim, h, usage_type, quantity) in enumerate(raw)
    ]
    expected = invoices(sorted(records, key=lambda r: r.event_time), [len(records)])
    shuffled = records[:]
    rnd.shuffle(shuffled)
    batches = []
    left = len(shuffled)
    while left:
        size = rnd.randint(1, left)
        batches.append(size)
        left -= size
    assert invoices(shuffled, batches) == expected


def usage_records(
    prefix: str, sims: list[str], usage: list[tuple[int, datetime, int]]
) -> list[t.UsageRecord]:
    return [
        record(f"{prefix}-{i}", sims[sim], quantity, when=when)
        for i, (sim, when, quantity) in enumerate(usage)
    ]


async def test_order_and_duplicates_never_change_a_settled_invoice(stubs: Stubs) -> None:
    plan = first_use_plan("P", grace_days=20, threshold=3_000_000)
    plan.usage_rates[0].pooled = True
    await put_plans(stubs, plan)
    seeds = range(4)
    for seed in seeds:
        for side in ("in-order", "shuffled"):
            await put_account(stubs, f"{side}-{seed}", schedule=[step("2026-01", 3, "P", 0)])
    sims: dict[tuple[str, int], list[str]] = {}
    for seed in seeds:
        for offset, side in enumerate(("in-order", "shuffled")):
            sims[(side, seed)] = iccids(100 * seed + 10 * offset, 3)
            await provision(stubs, sims[(side, seed)], T0, account_id=f"{side}-{seed}")
    await advance(stubs, utc(2026, 1, 31, 23))
    for seed in seeds:
        rnd = random.Random(seed)
        usage = [
            (rnd.randrange(3), T0 + timedelta(hours=rnd.randrange(30 * 24)), rnd.randrange(2**23))
            for _ in range(rnd.randint(5, 25))
        ]

        in_order = sorted(
            usage_records(f"in-order-{seed}", sims[("in-order", seed)], usage),
            key=lambda r: r.event_time.ToDatetime(),
        )
        await rate(stubs, *in_order)
        shuffled = usage_records(f"shuffled-{seed}", sims[("shuffled", seed)], usage) * 2
        rnd.shuffle(shuffled)
        while shuffled:
            size = rnd.randint(1, len(shuffled))
            await rate(stubs, *shuffled[:size])
            del shuffled[:size]
    await advance(stubs, utc(2026, 2, 1))
    charged = 0
    for seed in seeds:
        expected = await settle(stubs, "2026-01", f"in-order-{seed}")
        charged += sum(x.chargeable_quantity for x in expected.lines if x.kind == t.LINE_KIND_USAGE)
        got = await settle(stubs, "2026-01", f"shuffled-{seed}")
        assert list(got.lines) == list(expected.lines), seed
        assert (got.total_micros, got.billable_sims) == (
            expected.total_micros,
            expected.billable_sims,
        )
    assert charged > 0  # the examples reach past the pooled allowance
