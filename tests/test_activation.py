"""Bill on first use and grace periods, through gRPC with the test clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import Application
from tests.conftest import AppFactory
from tests.support import T0, Stubs, data_plan, first_use_plan, iccids
from tests.support.billing import (
    advance,
    get_invoice,
    preview,
    provision,
    put_account,
    put_plans,
    settle,
    utc,
)
from tests.support.usage import account_with_sims, rate, record

MiB = 1_048_576
DEADLINE = T0 + timedelta(days=30)


def naive(when: datetime) -> datetime:
    return when.replace(tzinfo=None)


async def status(stubs: Stubs, iccid: str) -> t.SimStatus:
    return (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))).status


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


async def test_provisioned_after_its_deadline_bills_from_the_deadline_at_once(
    start_app: AppFactory,
) -> None:
    """Provisioned back in time, past its grace period: billing has started at the deadline
    in the provisioning answer's wake, not at the activation worker's next run (which a
    restart would run at start: the same calls would then leave two states)."""
    app, stubs = await start_app(clock_start=DEADLINE + timedelta(days=2))
    [sim] = await account_with_sims(stubs, 1, plan=first_use_plan("FU"), provisioned_at=T0)
    got = await status(stubs, sim)
    assert got.state == t.SIM_STATE_ACTIVE
    assert got.billing_start_reason == t.BILLING_START_REASON_GRACE_EXPIRED
    assert got.billing_started_at.ToDatetime() == naive(DEADLINE)
    assert app.metrics.registry.get_sample_value("rating_activation_pending") == 0
    await app.stop()
    _, stubs = await start_app(clock_start=DEADLINE + timedelta(days=2))
    assert await status(stubs, sim) == got


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


# --- corrections next to a settled period --------------------------------------------------
# February is settled on demand while January is still open (the late-usage window is longer
# than February), then a late January record moves first use back into January. Periods are
# in the accounts' time zone, an hour ahead of UTC in winter.

ZONE = "Europe/Berlin"
FEBRUARY = datetime(2026, 2, 1, tzinfo=ZoneInfo(ZONE))  # 2026-01-31 23:00 UTC
WINDOW = timedelta(days=40)  # January is due on 2026-03-13, after February has ended
MARCH = utc(2026, 3, 1)


async def settled_february(stubs: Stubs, grace: timedelta) -> tuple[str, str, t.Invoice]:
    """SIM `late` on account A, whose January records stay below the threshold until
    February is settled (the record reaching it is left to the caller), and SIM `on_time`
    on account B with the same records, all in time.
    The FIRST_USE plan (20 MiB) starts billing at provisioning (T0) + `grace` at the latest.
    Returns (late, on_time, A's February invoice); the clock is at 2026-03-01."""
    plan = first_use_plan("FU", threshold=20 * MiB)
    plan.activation.grace_period.FromTimedelta(grace)
    await put_plans(stubs, plan)
    late, on_time = iccids(1, 2)
    for account_id, iccid in (("A", late), ("B", on_time)):
        await put_account(stubs, account_id, timezone=ZONE)
        await provision(stubs, [iccid], T0, plan_id="FU", account_id=account_id)
    await advance(stubs, utc(2026, 1, 21))
    await rate(stubs, record("b-jan10", on_time, 20 * MiB, when=utc(2026, 1, 10)))
    for tag, iccid in (("a", late), ("b", on_time)):
        await rate(
            stubs,
            record(f"{tag}-jan05", iccid, 500_000, when=utc(2026, 1, 5)),
            record(f"{tag}-jan20", iccid, 12 * MiB, when=utc(2026, 1, 20)),
        )
    await advance(stubs, utc(2026, 2, 15))
    got = await status(stubs, late)
    assert got.billing_start_reason == t.BILLING_START_REASON_GRACE_EXPIRED
    assert got.billing_started_at.ToDatetime(UTC) == T0 + grace
    for tag, iccid in (("a", late), ("b", on_time)):
        await rate(stubs, record(f"{tag}-feb10", iccid, 15 * MiB, when=utc(2026, 2, 10)))
    await advance(stubs, MARCH)
    february = await settle(stubs, "2026-02", "A")
    assert (await preview(stubs, "2026-01", "A")).lines == [], "A is not billed in January yet"
    return late, on_time, february


async def test_correction_ending_where_a_settled_period_starts_is_applied(
    start_app: AppFactory,
) -> None:
    # Grace expiry started billing at February's start: the correction spans
    # [Jan 10, Feb 1), wholly inside open January, and leaves settled February as it was.
    app, stubs = await start_app(late_usage_window=WINDOW)
    late, on_time, february = await settled_february(stubs, FEBRUARY - T0)
    [result] = await rate(stubs, record("a-jan10", late, 20 * MiB, when=utc(2026, 1, 10)))
    assert result.status == t.RECORD_STATUS_RATED
    assert result.charged and result.started_billing
    got = await status(stubs, late)
    assert got.billing_start_reason == t.BILLING_START_REASON_FIRST_USE
    assert got.billing_started_at.ToDatetime() == naive(utc(2026, 1, 10))
    assert (await status(stubs, on_time)).billing_started_at == got.billing_started_at
    value = app.metrics.registry.get_sample_value
    assert value("rating_activation_corrections_rejected_total") == 0
    assert await get_invoice(stubs, "2026-02", "A") == february
    january_before_restart = await preview(stubs, "2026-01", "A")

    # The corrected start is stored: a restart rebuilds the same state from the database.
    await app.stop()
    _, stubs = await start_app(late_usage_window=WINDOW, clock_start=MARCH)
    assert await status(stubs, late) == got
    january = await settle(stubs, "2026-01", "A")
    assert january.lines == january_before_restart.lines
    # January bills the SIM exactly like the one whose records all came in time: the
    # subscription from Jan 10 and the usage from Jan 10 on.
    expected = await settle(stubs, "2026-01", "B")
    assert [x.kind for x in january.lines] == [t.LINE_KIND_SUBSCRIPTION, t.LINE_KIND_USAGE]
    assert january.lines == expected.lines and january.total_micros == expected.total_micros
    assert january.lines[0].quantity == 1
    assert january.lines[1].quantity == 20 * MiB + 12 * MiB
    # February is unchanged, and is what it would have been with the records in time.
    assert await get_invoice(stubs, "2026-02", "A") == february
    assert february.lines == (await settle(stubs, "2026-02", "B")).lines


async def test_correction_reaching_into_a_settled_period_is_rejected(
    start_app: AppFactory,
) -> None:
    # Billing started one second into February: the correction [Jan 10, Feb 1 00:00:01)
    # would reach settled February, so it is refused and February stays as settled.
    app, stubs = await start_app(late_usage_window=WINDOW)
    grace = FEBRUARY - T0 + timedelta(seconds=1)
    late, _, february = await settled_february(stubs, grace)
    before = await status(stubs, late)
    [result] = await rate(stubs, record("a-jan10", late, 20 * MiB, when=utc(2026, 1, 10)))
    assert result.status == t.RECORD_STATUS_RATED
    assert not result.charged and not result.started_billing
    got = await status(stubs, late)
    assert got.billing_start_reason == t.BILLING_START_REASON_GRACE_EXPIRED
    assert got.billing_started_at == before.billing_started_at
    value = app.metrics.registry.get_sample_value
    assert value("rating_activation_corrections_rejected_total") == 1
    assert await get_invoice(stubs, "2026-02", "A") == february
