"""Settlement rules end to end (gRPC, test clock, PostgreSQL): WHEN_USED, allowances,
tiers, ramp-up steps, termination, currencies without decimals, time zones and DST,
billing day 28 across February."""

from __future__ import annotations

from datetime import timedelta

import grpc

from rating.v1 import types_pb2 as t
from tests.support import T0, Stubs, data_plan, iccids
from tests.support.billing import (
    EUR,
    MiB,
    advance,
    amounts,
    failure,
    line,
    list_invoices,
    preview,
    provision,
    put_account,
    put_plans,
    settle,
    step,
    terminate,
    utc,
)
from tests.support.usage import rate, record

DEC_31 = T0 - timedelta(days=1)  # SIMs provisioned then bill the whole of January
FEB_1 = utc(2026, 2, 1)


async def test_when_used_bills_only_sims_with_charged_usage(stubs: Stubs) -> None:
    plan = data_plan("W", billing_mode=t.BILLING_MODE_WHEN_USED, proration=t.PRORATION_NONE)
    await put_plans(stubs, plan)
    await put_account(stubs)
    used, zero, idle, february = sims = iccids(1, 4)
    await provision(stubs, sims, DEC_31, plan_id="W")
    await advance(stubs, utc(2026, 1, 31))
    await rate(
        stubs,
        record("a", used, 2 * MiB, when=utc(2026, 1, 3)),
        record("b", zero, 0, when=utc(2026, 1, 4)),  # usage, but of nothing
    )
    await advance(stubs, utc(2026, 2, 3))
    await rate(stubs, record("c", february, 1, when=utc(2026, 2, 2)))
    january = await settle(stubs, "2026-01")
    subscription = line(january, t.LINE_KIND_SUBSCRIPTION)
    assert (subscription.quantity, subscription.amount_micros) == (1, 2 * EUR)  # full fee
    assert january.billable_sims == 1
    assert amounts(january) == [("SUBSCRIPTION", 2 * EUR), ("USAGE", 0)]
    assert idle not in str(january)
    february_bill = await preview(stubs, "2026-02")
    assert line(february_bill, t.LINE_KIND_SUBSCRIPTION).quantity == 1


async def test_pooled_and_per_sim_allowances(stubs: Stubs) -> None:
    pooled = data_plan("POOL")
    pooled.usage_rates[0].pooled = True
    await put_plans(stubs, pooled, data_plan("EACH"))
    await put_account(stubs)
    pool_sims, each_sims = iccids(1, 3), iccids(11, 3)
    await provision(stubs, pool_sims, DEC_31, plan_id="POOL")
    await provision(stubs, each_sims, DEC_31, plan_id="EACH")
    await advance(stubs, FEB_1)
    for prefix, sims in (("p", pool_sims), ("e", each_sims)):
        await rate(
            stubs,
            record(f"{prefix}1", sims[0], 25 * MiB, when=utc(2026, 1, 10)),
            record(f"{prefix}3", sims[2], 2 * MiB, when=utc(2026, 1, 11)),
        )
    invoice = await settle(stubs, "2026-01")
    pool_line = line(invoice, t.LINE_KIND_USAGE, "POOL")
    each_line = line(invoice, t.LINE_KIND_USAGE, "EACH")
    # Pooled: 27 MiB used against 3 x 10 MiB shared -> nothing to charge.
    assert (pool_line.quantity, pool_line.chargeable_quantity) == (27 * MiB, 0)
    assert pool_line.amount_micros == 0
    # Per SIM: 25 - 10 = 15 MiB over; the SIM with 2 MiB stays inside its own allowance.
    assert (each_line.quantity, each_line.chargeable_quantity) == (27 * MiB, 15 * MiB)
    assert each_line.amount_micros == 1_500_000
    assert invoice.total_micros == 6 * EUR + 6 * EUR + 1_500_000


async def test_three_tiers_crossed_by_one_account(stubs: Stubs) -> None:
    plan = data_plan("T")
    rate_ = plan.usage_rates[0]
    rate_.included_quantity = 0
    del rate_.tiers[:]
    rate_.tiers.extend(
        [
            t.Tier(up_to_quantity=10 * MiB, price_micros=100_000),
            t.Tier(up_to_quantity=20 * MiB, price_micros=50_000),
            t.Tier(up_to_quantity=0, price_micros=10_000),
        ]
    )
    await put_plans(stubs, plan)
    await put_account(stubs)
    sims = iccids(1, 2)
    await provision(stubs, sims, DEC_31, plan_id="T")
    await advance(stubs, FEB_1)
    # Neither SIM alone leaves the second tier: tiers apply to the account's quantity.
    await rate(
        stubs,
        record("a", sims[0], 15 * MiB, when=utc(2026, 1, 5)),
        record("b", sims[1], 10 * MiB, when=utc(2026, 1, 6)),
    )
    usage = line(await settle(stubs, "2026-01"), t.LINE_KIND_USAGE)
    assert usage.chargeable_quantity == 25 * MiB
    assert usage.amount_micros == 1_000_000 + 500_000 + 50_000


async def test_ramp_step_changes_between_two_periods(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    ramp = [step("2026-01", 2), step("2026-02", 5, "P", 20 * EUR), step("2026-04", 1)]
    await put_account(stubs, schedule=ramp)
    await provision(stubs, iccids(1, 3), DEC_31)
    await advance(stubs, utc(2026, 3, 2))  # February's end + the one-day window
    # Settled by the worker, from the period of the first SIM (provisioned Dec 31) on.
    december, january, february = await list_invoices(stubs)
    assert amounts(december) == [("SUBSCRIPTION", 190_000)]  # 3 x 2.00 x 1/31, no step
    assert amounts(january) == [("SUBSCRIPTION", 6 * EUR)]  # 3 >= 2, no minimum spend
    assert amounts(february) == [
        ("SUBSCRIPTION", 6 * EUR),
        ("SHORTFALL", 4 * EUR),  # 5 - 3 SIMs at the full 2.00 fee
        ("TRUE_UP", 10 * EUR),  # 10.00 < 20.00
    ]
    # March is still under the February step; April's step needs one SIM only.
    assert amounts(await preview(stubs, "2026-03")) == amounts(february)
    assert amounts(await preview(stubs, "2026-04")) == [("SUBSCRIPTION", 6 * EUR)]
    # A new schedule applies to periods not yet settled, never to settled invoices.
    await put_account(stubs, schedule=[step("2026-01", 10)])
    assert (await list_invoices(stubs))[:3] == [december, january, february]
    assert line(await preview(stubs, "2026-03"), t.LINE_KIND_SIM_COMMITMENT_SHORTFALL).quantity == 7


async def test_termination_mid_period(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    kept, ended = iccids(1, 2)
    await provision(stubs, [kept, ended], DEC_31)
    await advance(stubs, utc(2026, 1, 11, 12))
    await terminate(stubs, ended, utc(2026, 1, 11, 12))  # billed Jan 1..10, not the 11th
    [after] = await rate(stubs, record("late", ended, 10, when=utc(2026, 1, 11, 12, 1)))
    assert after.status == t.RECORD_STATUS_AFTER_TERMINATION
    await advance(stubs, FEB_1)
    january = await settle(stubs, "2026-01")
    subscription = line(january, t.LINE_KIND_SUBSCRIPTION)
    assert subscription.quantity == 2
    assert subscription.amount_micros == 2_650_000  # 2.00 + 2.00 x 10/31 = 2.645161
    february = await preview(stubs, "2026-02")
    assert line(february, t.LINE_KIND_SUBSCRIPTION).quantity == 1


async def test_termination_cannot_reach_into_a_settled_period(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    first, second = iccids(1, 2)
    await provision(stubs, [first, second], DEC_31)
    await advance(stubs, utc(2026, 2, 10))
    await settle(stubs, "2026-01")
    for at, period in ((utc(2026, 1, 20), "2026-01"), (DEC_31, "2025-12")):
        code, details = await failure(terminate(stubs, first, at))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert f"settled period {period}" in details
    await terminate(stubs, first, FEB_1)  # from the period end on: January is untouched
    await terminate(stubs, second, utc(2026, 2, 5))
    february = line(await preview(stubs, "2026-02"), t.LINE_KIND_SUBSCRIPTION)
    # `first` has no February day (terminated at its first instant); `second` has Feb 1..4.
    assert (february.quantity, february.amount_micros) == (1, 290_000)  # 2.00 x 4/28


async def test_jpy_rounds_lines_to_whole_yen(stubs: Stubs) -> None:
    plan = data_plan("Y", currency="JPY", subscription_fee_micros=1_000 * EUR)
    plan.usage_rates[0].included_quantity = 0
    plan.usage_rates[0].tiers[0].price_micros = 1_500_000  # 1.5 yen per MiB
    await put_plans(stubs, plan)
    await put_account(stubs, currency="JPY")
    [sim] = iccids(1, 1)
    await advance(stubs, utc(2026, 1, 10))
    await provision(stubs, [sim], utc(2026, 1, 10), plan_id="Y")
    await rate(stubs, record("a", sim, 3 * MiB, when=utc(2026, 1, 10)))
    await advance(stubs, FEB_1)
    invoice = await settle(stubs, "2026-01")
    assert invoice.currency == "JPY"
    assert amounts(invoice) == [
        ("SUBSCRIPTION", 710 * EUR),  # 1000 x 22/31 = 709.68
        ("USAGE", 5 * EUR),  # 4.5 rounds half-up to 5
    ]
    assert invoice.total_micros == 715 * EUR


async def test_new_york_period_across_the_dst_change(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs, timezone="America/New_York")
    [sim] = iccids(1, 1)
    # 2026-03-15 03:30 UTC is still March 14 in New York (EDT since March 8).
    await advance(stubs, utc(2026, 3, 15, 3, 30))
    await provision(stubs, [sim], utc(2026, 3, 15, 3, 30))
    await advance(stubs, utc(2026, 4, 1, 4, 1))
    await rate(
        stubs,
        record("march", sim, 11 * MiB, when=utc(2026, 4, 1, 3, 59)),  # Mar 31 23:59 EDT
        record("april", sim, 5 * MiB, when=utc(2026, 4, 1, 4)),  # Apr 1 00:00 EDT
    )
    march = await settle(stubs, "2026-03")
    assert march.period_start.ToDatetime() == utc(2026, 3, 1, 5).replace(tzinfo=None)  # EST
    assert march.period_end.ToDatetime() == utc(2026, 4, 1, 4).replace(tzinfo=None)  # EDT
    assert amounts(march) == [
        ("SUBSCRIPTION", 1_160_000),  # March 14..31 = 18 of 31 days: 1.161290
        ("USAGE", 100_000),  # 11 MiB - 10 included
    ]
    assert line(march, t.LINE_KIND_USAGE).quantity == 11 * MiB
    april = await preview(stubs)
    assert april.period == "2026-04"
    assert line(april, t.LINE_KIND_USAGE).quantity == 5 * MiB


async def test_billing_day_28_across_february(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs, billing_day=28)
    [sim] = iccids(1, 1)
    await advance(stubs, utc(2026, 2, 14))
    await provision(stubs, [sim], utc(2026, 2, 14))
    await advance(stubs, utc(2026, 2, 28))
    january = await settle(stubs, "2026-01")  # Jan 28 .. Feb 28: 31 days
    assert january.period_start.ToDatetime() == utc(2026, 1, 28).replace(tzinfo=None)
    assert january.period_end.ToDatetime() == utc(2026, 2, 28).replace(tzinfo=None)
    assert amounts(january) == [("SUBSCRIPTION", 900_000)]  # Feb 14..27: 14/31 x 2.00
    await advance(stubs, utc(2026, 3, 29))  # Feb 28 .. Mar 28 (28 days) + the window
    invoices = await list_invoices(stubs)
    assert [x.period for x in invoices] == ["2026-01", "2026-02"]
    assert amounts(invoices[1]) == [("SUBSCRIPTION", 2 * EUR)]
