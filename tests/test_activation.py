"""Bill on first use and grace periods, through gRPC with the test clock."""

from __future__ import annotations

from datetime import datetime, timedelta

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import clock_service_pb2 as k
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import Application
from tests.support import T0, Stubs, data_plan, first_use_plan
from tests.usage_support import account_with_sims, rate, record

MiB = 1_048_576
DEADLINE = T0 + timedelta(days=30)


def naive(when: datetime) -> datetime:
    return when.replace(tzinfo=None)


async def status(stubs: Stubs, iccid: str) -> t.SimStatus:
    return (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))).status


async def advance(stubs: Stubs, to: datetime) -> None:
    request = k.AdvanceTimeRequest()
    request.to.FromDatetime(to)
    await stubs.clock.AdvanceTime(request)


async def fu_sims(stubs: Stubs, count: int = 1, plan: t.Plan | None = None) -> list[str]:
    """FIRST_USE SIMs provisioned at T0 (grace 30 days); the clock is moved to T0 + 5 days."""
    sims = await account_with_sims(
        stubs, count, plan=plan or first_use_plan("FU"), provisioned_at=T0
    )
    await advance(stubs, T0 + timedelta(days=5))
    return sims


async def test_threshold_reached_in_one_record(stubs: Stubs) -> None:
    [sim] = await fu_sims(stubs)
    [result] = await rate(stubs, record("a", sim, 2 * MiB, when=T0 + timedelta(hours=1)))
    assert result.charged and result.started_billing
    got = await status(stubs, sim)
    assert got.state == t.SIM_STATE_ACTIVE
    assert got.billing_start_reason == t.BILLING_START_REASON_FIRST_USE
    assert got.billing_started_at.ToDatetime() == naive(T0 + timedelta(hours=1))


async def test_threshold_reached_over_several_records_charges_from_the_reaching_one(
    stubs: Stubs,
) -> None:
    [sim] = await fu_sims(stubs)
    results = await rate(
        stubs,
        record("a", sim, 500_000, when=T0 + timedelta(days=1)),
        record("b", sim, 300_000, when=T0 + timedelta(days=2)),
    )
    assert [x.charged for x in results] == [False, False]
    got = await status(stubs, sim)
    assert got.state == t.SIM_STATE_PROVISIONED and not got.HasField("billing_started_at")
    assert [(p.quantity, p.threshold) for p in got.first_use_progress] == [(800_000, MiB)]
    [reaching] = await rate(stubs, record("c", sim, 300_000, when=T0 + timedelta(days=3)))
    assert reaching.charged and reaching.started_billing
    [after] = await rate(stubs, record("d", sim, 10, when=T0 + timedelta(days=4)))
    assert after.charged and not after.started_billing
    got = await status(stubs, sim)
    assert got.billing_started_at.ToDatetime() == naive(T0 + timedelta(days=3))
    assert {u.usage_type: u.quantity for u in got.period_usage} == {t.USAGE_TYPE_DATA: 1_100_010}


async def test_two_thresholds_whichever_comes_first(stubs: Stubs) -> None:
    plan = first_use_plan("FU2")
    plan.activation.thresholds.append(
        t.ActivationThreshold(usage_type=t.USAGE_TYPE_SMS, quantity=2)
    )
    sims = await fu_sims(stubs, 2, plan=plan)
    await rate(
        stubs,
        record("s1", sims[0], 1, when=T0 + timedelta(days=1), usage_type=t.USAGE_TYPE_SMS),
        record("d1", sims[0], MiB, when=T0 + timedelta(days=2)),
        record("s2", sims[0], 1, when=T0 + timedelta(days=3), usage_type=t.USAGE_TYPE_SMS),
        record("x1", sims[1], 1, when=T0 + timedelta(days=1), usage_type=t.USAGE_TYPE_SMS),
        record("x2", sims[1], 1, when=T0 + timedelta(days=2), usage_type=t.USAGE_TYPE_SMS),
        record("x3", sims[1], MiB, when=T0 + timedelta(days=3)),
    )
    first, second = await status(stubs, sims[0]), await status(stubs, sims[1])
    assert first.billing_started_at.ToDatetime() == naive(T0 + timedelta(days=2))  # data first
    assert second.billing_started_at.ToDatetime() == naive(T0 + timedelta(days=2))  # SMS first
    assert sorted((p.usage_type, p.quantity, p.threshold) for p in first.first_use_progress) == [
        (t.USAGE_TYPE_DATA, MiB, MiB),
        (t.USAGE_TYPE_SMS, 2, 2),
    ]


async def test_grace_expiry_starts_billing_exactly_at_the_deadline(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    sims = await fu_sims(stubs, 2)
    await rate(stubs, record("a", sims[0], 10, when=T0 + timedelta(days=1)))
    got = await status(stubs, sims[0])
    assert got.activation_deadline.ToDatetime() == naive(DEADLINE)
    await advance(stubs, DEADLINE - timedelta(seconds=1))
    assert (await status(stubs, sims[0])).state == t.SIM_STATE_PROVISIONED
    await advance(stubs, DEADLINE + timedelta(days=3, hours=7))  # the sweep comes late
    for sim in sims:
        got = await status(stubs, sim)
        assert got.state == t.SIM_STATE_ACTIVE
        assert got.billing_start_reason == t.BILLING_START_REASON_GRACE_EXPIRED
        assert got.billing_started_at.ToDatetime() == naive(DEADLINE)
    value = app.metrics.registry.get_sample_value
    assert value("rating_activations_total", {"reason": "GRACE_EXPIRED"}) == 2
    assert value("rating_activation_pending") == 0
    assert value("rating_sims", {"state": "ACTIVE"}) == 2
    [after] = await rate(stubs, record("b", sims[0], 10, when=DEADLINE + timedelta(days=1)))
    assert after.charged and not after.started_billing


async def test_record_exactly_at_the_deadline(stubs: Stubs) -> None:
    [sim] = await fu_sims(stubs)
    await advance(stubs, DEADLINE)
    [at_deadline] = await rate(stubs, record("a", sim, 2 * MiB, when=DEADLINE))
    assert at_deadline.charged
    got = await status(stubs, sim)
    assert got.billing_started_at.ToDatetime() == naive(DEADLINE)
    assert got.billing_start_reason == t.BILLING_START_REASON_GRACE_EXPIRED


async def test_late_record_moves_first_use_before_a_grace_activation(stubs: Stubs) -> None:
    [sim] = await fu_sims(stubs)
    await rate(stubs, record("early", sim, 600_000, when=T0 + timedelta(days=2)))
    await advance(stubs, DEADLINE + timedelta(hours=1))
    assert (await status(stubs, sim)).billing_start_reason == t.BILLING_START_REASON_GRACE_EXPIRED
    [late] = await rate(stubs, record("late", sim, 600_000, when=T0 + timedelta(days=10)))
    assert late.charged and late.started_billing
    got = await status(stubs, sim)
    assert got.billing_start_reason == t.BILLING_START_REASON_FIRST_USE
    assert got.billing_started_at.ToDatetime() == naive(T0 + timedelta(days=10))
    # An even later-arriving record dated before both moves it again, and the earlier
    # uncharged record becomes charged from the new start on.
    await rate(stubs, record("later", sim, 500_000, when=T0 + timedelta(days=1)))
    got = await status(stubs, sim)
    assert got.billing_started_at.ToDatetime() == naive(T0 + timedelta(days=2))


async def test_immediate_plans_are_unchanged(stubs: Stubs) -> None:
    [sim] = await account_with_sims(stubs, 1, plan=data_plan("P"), provisioned_at=T0)
    await advance(stubs, T0 + timedelta(days=1))
    [result] = await rate(stubs, record("a", sim, 1, when=T0 + timedelta(hours=1)))
    assert result.charged and not result.started_billing
    await advance(stubs, T0 + timedelta(days=40))
    got = await status(stubs, sim)
    assert got.billing_start_reason == t.BILLING_START_REASON_IMMEDIATE
    assert got.billing_started_at.ToDatetime() == naive(T0)
    assert not got.HasField("activation_deadline")


async def test_authorize_says_whether_a_session_would_start_billing(stubs: Stubs) -> None:
    [sim] = await fu_sims(stubs)
    await rate(stubs, record("a", sim, 1_000_000, when=T0))

    async def would(quantity: int) -> bool:
        answer = await stubs.rating.AuthorizeSession(
            r.AuthorizeSessionRequest(
                iccid=sim, usage_type=t.USAGE_TYPE_DATA, requested_quantity=quantity
            )
        )
        assert answer.allowed and not answer.billing_started
        return answer.would_start_billing

    assert not await would(48_575)
    assert await would(48_576)


async def test_first_use_plan_round_trips(stubs: Stubs) -> None:
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=first_use_plan("FU")))
    got = await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id="FU"))
    assert got.plan == first_use_plan("FU")
