"""Settlement: docs/settlement.md's worked example, each line rule, invoice-wide properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from fractions import Fraction
from random import Random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from service.domain.iccid import make_iccid
from service.domain.model import (
    Account,
    ActivationMode,
    BillingMode,
    CommitmentStep,
    Invoice,
    LineKind,
    Plan,
    Proration,
    SimPeriodFacts,
    SimUsageFacts,
    Tier,
    UsageType,
)
from service.domain.money import minor_unit_micros, round_line
from service.domain.periods import period_named
from service.domain.pricing import rated_quantity
from service.domain.settlement import commitment_step_for, compute_invoice
from tests.support.builders import (
    EUR,
    PROPERTY,
    SIM1,
    SIM1_RECORDS,
    SIM2,
    SIM3,
    account_a,
    data_rate,
    plan_p,
    utc,
    worked_example_facts,
)

JANUARY = period_named("2026-01", "UTC", 1)
JAN_1 = utc(2026, 1, 1)


def january_invoice(
    facts: list[SimPeriodFacts], account: Account | None = None, **plans: Plan
) -> Invoice:
    return compute_invoice(
        account or account_a(), {"P": plan_p(), **plans}, JANUARY, facts, final=True
    )


def sim(
    iccid: str,
    plan_id: str = "P",
    started: datetime | None = JAN_1,
    terminated: datetime | None = None,
    **charged_rated: int,
) -> SimPeriodFacts:
    usage = {
        UsageType[name]: SimUsageFacts(
            raw_quantity=quantity,
            charged_rated_quantity=quantity,
            charged_raw_quantity=quantity,
            records=1,
            charged_records=1,
        )
        for name, quantity in charged_rated.items()
    }
    return SimPeriodFacts(iccid, plan_id, started, terminated, usage)


def amounts(invoice: Invoice) -> dict[LineKind, int]:
    return {line.kind: line.amount_micros for line in invoice.lines}


def test_worked_example_invoice() -> None:
    rate = data_rate()
    rated = [rated_quantity(quantity, rate) for _, _, quantity in SIM1_RECORDS[1:]]
    assert rated == [600_064, 20_971_520]
    assert sum(rated) == worked_example_facts()[0].usage[UsageType.DATA].charged_rated_quantity

    invoice = compute_invoice(
        account_a(), {"P": plan_p()}, JANUARY, worked_example_facts(), final=True
    )

    subscription, usage, shortfall, true_up = invoice.lines
    assert (subscription.kind, subscription.quantity, subscription.amount_micros) == (
        LineKind.SUBSCRIPTION,
        2,
        1_810_000,
    )
    assert (usage.kind, usage.usage_type, usage.plan_id) == (LineKind.USAGE, UsageType.DATA, "P")
    assert (usage.quantity, usage.chargeable_quantity, usage.amount_micros) == (
        21_571_584,
        11_085_824,
        1_060_000,
    )
    assert (shortfall.kind, shortfall.quantity, shortfall.amount_micros) == (
        LineKind.SIM_COMMITMENT_SHORTFALL,
        1,
        2_000_000,
    )
    assert (true_up.kind, true_up.amount_micros) == (LineKind.MINIMUM_SPEND_TRUE_UP, 5_130_000)
    assert invoice.total_micros == 10 * EUR
    assert invoice.billable_sims == 2
    assert invoice.currency == "EUR"
    assert invoice.period == JANUARY
    assert invoice.final


def test_worked_example_descriptions_and_breakdown() -> None:
    invoice = january_invoice(worked_example_facts())
    assert invoice.lines[0].description == "2 SIMs on plan P, prorated daily"
    assert "11085824 charged" in invoice.lines[1].description
    assert "1 short at 2.00 EUR" in invoice.lines[2].description
    assert "minimum spend 10.00 EUR" in invoice.lines[3].description
    assert "4.87 EUR" in invoice.lines[3].description

    sim1, sim2, sim3 = invoice.sims
    assert [s.iccid for s in invoice.sims] == [SIM1, SIM2, SIM3]
    assert (sim1.billable, sim1.billed_days, sim1.subscription_micros_exact) == (
        True,
        27,
        "54000000/31",
    )
    assert (sim2.billable, sim2.billed_days, sim2.subscription_micros_exact) == (
        True,
        1,
        "2000000/31",
    )
    assert (sim3.billable, sim3.billed_days, sim3.subscription_micros_exact) == (False, 0, "0/1")
    assert sim1.usage[UsageType.DATA].charged_rated_quantity == 21_571_584


def test_commitment_ramp_steps() -> None:
    ramp = account_a(
        commitment_schedule=(
            CommitmentStep("2026-01", 100, "P", 0),
            CommitmentStep("2026-04", 500, "P", 0),
            CommitmentStep("2026-07", 1_000, "P", 0),
        )
    )
    assert commitment_step_for(ramp, "2025-12") is None
    assert [
        step.min_billable_sims if (step := commitment_step_for(ramp, name)) else None
        for name in ("2026-01", "2026-03", "2026-04", "2026-06", "2026-07", "2031-01")
    ] == [100, 100, 500, 500, 1_000, 1_000]


def test_no_commitment_before_the_first_step() -> None:
    december = period_named("2025-12", "UTC", 1)
    facts = [sim(SIM1, started=utc(2025, 12, 1))]
    invoice = compute_invoice(account_a(), {"P": plan_p()}, december, facts, final=False)
    assert [line.kind for line in invoice.lines] == [LineKind.SUBSCRIPTION]
    assert invoice.total_micros == 2 * EUR
    assert not invoice.final


def test_commitment_met_needs_no_shortfall_or_true_up() -> None:
    facts = [sim(make_iccid(i), DATA=100 * 1_048_576) for i in range(3)]
    invoice = january_invoice(facts)
    assert [line.kind for line in invoice.lines] == [LineKind.SUBSCRIPTION, LineKind.USAGE]
    assert amounts(invoice) == {LineKind.SUBSCRIPTION: 6 * EUR, LineKind.USAGE: 27 * EUR}


def test_proration_none_charges_the_full_fee() -> None:
    plan = plan_p(proration=Proration.NONE)
    facts = [sim(SIM1, started=utc(2026, 1, 31, 23))]
    invoice = compute_invoice(
        account_a(commitment_schedule=()), {"P": plan}, JANUARY, facts, final=True
    )
    assert amounts(invoice) == {LineKind.SUBSCRIPTION: 2 * EUR}
    assert invoice.lines[0].description == "1 SIM on plan P, full period"


def test_terminated_sim_is_prorated_to_its_termination_date() -> None:
    facts = [sim(SIM1, started=utc(2025, 12, 1), terminated=utc(2026, 1, 11, 9))]
    invoice = january_invoice(facts, account_a(commitment_schedule=()))
    assert invoice.sims[0].billed_days == 10
    assert amounts(invoice) == {
        LineKind.SUBSCRIPTION: round_line(Fraction(2 * EUR * 10, 31), "EUR")
    }


WHEN_USED = plan_p(
    plan_id="W",
    billing_mode=BillingMode.WHEN_USED,
    activation_mode=ActivationMode.IMMEDIATE,
    thresholds=(),
)


def test_when_used_bills_only_sims_with_charged_usage() -> None:
    idle = sim(make_iccid(1), "W")
    used = sim(make_iccid(2), "W", started=utc(2026, 1, 30), SMS=1)  # SMS is not priced by W
    uncharged = SimPeriodFacts(
        make_iccid(3),
        "W",
        utc(2026, 1, 30),
        None,
        {UsageType.DATA: SimUsageFacts(raw_quantity=5_000, records=1)},
    )
    invoice = january_invoice(
        [idle, used, uncharged], account_a(commitment_schedule=()), W=WHEN_USED
    )
    assert [s.billable for s in invoice.sims] == [False, True, False]
    subscription, sms = invoice.lines
    assert (subscription.quantity, subscription.amount_micros) == (1, 2 * EUR)  # not prorated
    assert subscription.description == "1 SIM on plan W, billed for periods with usage"
    assert (sms.usage_type, sms.quantity, sms.chargeable_quantity, sms.amount_micros) == (
        UsageType.SMS,
        1,
        0,
        0,
    )


def test_per_sim_allowance_is_not_shared() -> None:
    plan = plan_p(
        usage_rates=(data_rate(unit_quantity=1, included_quantity=10, tiers=(Tier(0, 1),)),)
    )
    facts = [sim(make_iccid(1), DATA=5), sim(make_iccid(2), DATA=20)]
    usage = january_invoice(facts, account_a(commitment_schedule=()), P=plan).lines[1]
    assert (usage.quantity, usage.chargeable_quantity) == (25, 10)


def test_pooled_allowance_is_shared_by_billable_sims() -> None:
    rate = data_rate(unit_quantity=1, included_quantity=10, pooled=True, tiers=(Tier(0, 1),))
    plan = plan_p(usage_rates=(rate,))
    facts = [
        sim(make_iccid(1), DATA=5),
        sim(make_iccid(2), DATA=20),
        sim(make_iccid(3), started=None),  # not billable: brings no allowance
    ]
    usage = january_invoice(facts, account_a(commitment_schedule=()), P=plan).lines[1]
    assert (usage.quantity, usage.chargeable_quantity) == (25, 5)


def test_fully_included_usage_still_gets_a_zero_line() -> None:
    facts = [sim(SIM1, DATA=1_000)]
    usage = january_invoice(facts, account_a(commitment_schedule=())).lines[1]
    assert (usage.quantity, usage.chargeable_quantity, usage.amount_micros) == (1_000, 0, 0)


def test_non_billable_sim_gets_no_allowance() -> None:
    # Inconsistent facts (charged usage without billed days) must not create free usage.
    rate = data_rate(unit_quantity=1, included_quantity=10, tiers=(Tier(0, 10_000),))
    facts = [sim(SIM1, started=utc(2026, 2, 1), DATA=7)]
    invoice = january_invoice(
        facts, account_a(commitment_schedule=()), P=plan_p(usage_rates=(rate,))
    )
    usage = invoice.lines[0]
    assert (usage.kind, usage.chargeable_quantity, usage.amount_micros) == (
        LineKind.USAGE,
        7,
        70_000,
    )


def test_usage_is_priced_through_tiers_across_the_account() -> None:
    tiers = (Tier(10, 30_000), Tier(20, 20_000), Tier(0, 10_000))
    plan = plan_p(usage_rates=(data_rate(unit_quantity=1, included_quantity=0, tiers=tiers),))
    facts = [sim(make_iccid(1), DATA=15), sim(make_iccid(2), DATA=15)]
    usage = january_invoice(facts, account_a(commitment_schedule=()), P=plan).lines[1]
    # 30 units of the account, not 15 + 15 each from the first tier: 10 x 3 + 10 x 2 + 10 x 1.
    assert usage.amount_micros == 600_000


def test_rounding_happens_once_per_line_not_per_sim() -> None:
    plan = plan_p(subscription_fee_micros=10_000, usage_rates=())  # one cent
    facts = [sim(make_iccid(i), started=utc(2026, 1, 17)) for i in range(3)]
    invoice = january_invoice(facts, account_a(commitment_schedule=()), P=plan)
    # Each SIM owes 15/31 of a cent, which alone would round to nothing; together 1.45 cents.
    assert invoice.total_micros == 10_000


def test_lines_are_ordered_by_kind_plan_and_usage_type() -> None:
    second = plan_p(
        plan_id="B", usage_rates=(data_rate(), replace(data_rate(), usage_type=UsageType.VOICE))
    )
    facts = [
        sim(make_iccid(1), "P", SMS=3, DATA=1),
        sim(make_iccid(2), "B", VOICE=60, DATA=1, SMS=1),
    ]
    invoice = january_invoice(facts, B=second)
    assert [(line.kind.name, line.plan_id, line.usage_type) for line in invoice.lines] == [
        ("SUBSCRIPTION", "B", None),
        ("SUBSCRIPTION", "P", None),
        ("USAGE", "B", UsageType.DATA),
        ("USAGE", "B", UsageType.VOICE),
        ("USAGE", "B", UsageType.SMS),
        ("USAGE", "P", UsageType.DATA),
        ("USAGE", "P", UsageType.SMS),
        ("SIM_COMMITMENT_SHORTFALL", "P", None),
        ("MINIMUM_SPEND_TRUE_UP", "", None),
    ]


def test_zero_decimal_currency_rounds_to_whole_yen() -> None:
    plan = plan_p(currency="JPY", subscription_fee_micros=1_000 * EUR)  # 1,000 JPY
    account = account_a(currency="JPY", commitment_schedule=())
    facts = [sim(SIM1, started=utc(2026, 1, 30))]  # 2 of 31 days: 64.516... JPY
    invoice = compute_invoice(account, {"P": plan}, JANUARY, facts, final=True)
    assert invoice.total_micros == 65 * EUR


def test_settled_at_and_final_are_carried() -> None:
    invoice = compute_invoice(
        account_a(), {"P": plan_p()}, JANUARY, [], final=True, settled_at=utc(2026, 2, 2)
    )
    assert invoice.settled_at == utc(2026, 2, 2)
    assert invoice.billable_sims == 0
    assert amounts(invoice) == {
        LineKind.SIM_COMMITMENT_SHORTFALL: 6 * EUR,
        LineKind.MINIMUM_SPEND_TRUE_UP: 4 * EUR,
    }


def test_inconsistent_input_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not in plans"):
        january_invoice([sim(SIM1, "MISSING")])
    with pytest.raises(ValueError, match="twice"):
        january_invoice([sim(SIM1), sim(SIM1)])
    with pytest.raises(ValueError, match="USD"):
        january_invoice([sim(SIM1, "U")], U=plan_p(plan_id="U", currency="USD"))
    gone = account_a(commitment_schedule=(CommitmentStep("2026-01", 1, "GONE", 0),))
    with pytest.raises(ValueError, match="GONE"):
        january_invoice([], gone)


# --- properties -------------------------------------------------------------------------

CURRENCIES = ["EUR", "JPY", "BHD"]
rates = st.builds(
    data_rate,
    usage_type=st.sampled_from(UsageType),
    unit_quantity=st.sampled_from([1, 60, 1_048_576]),
    rounding_increment=st.just(1),
    included_quantity=st.integers(0, 5_000_000),
    pooled=st.booleans(),
    tiers=st.sampled_from(
        [
            (Tier(0, 100_000),),
            (Tier(1_000, 333_333), Tier(2_000_000, 7_777), Tier(0, 1)),
            (Tier(0, 0),),
        ]
    ),
)


@st.composite
def plans(draw: st.DrawFn, plan_id: str, currency: str) -> Plan:
    usage_rates = draw(st.lists(rates, max_size=3, unique_by=lambda rate: rate.usage_type))
    return plan_p(
        plan_id=plan_id,
        currency=currency,
        subscription_fee_micros=draw(st.integers(0, 50 * EUR)),
        billing_mode=draw(st.sampled_from(BillingMode)),
        proration=draw(st.sampled_from(Proration)),
        usage_rates=tuple(usage_rates),
    )


usage_facts = st.builds(
    lambda raw, charged: SimUsageFacts(
        raw_quantity=raw + charged,
        charged_rated_quantity=charged,
        charged_raw_quantity=charged,
        records=2,
        charged_records=1 if charged else 0,
    ),
    st.integers(0, 10**7),
    st.integers(0, 10**8) | st.just(0),
)
instants = st.none() | st.integers(-40, 70).map(
    lambda day: utc(2026, 1, 1) + timedelta(days=day, hours=7)
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Account, dict[str, Plan], list[SimPeriodFacts]]:
    currency = draw(st.sampled_from(CURRENCIES))
    plan_ids = ["A", "B", "C"][: draw(st.integers(1, 3))]
    catalog = {plan_id: draw(plans(plan_id, currency)) for plan_id in plan_ids}
    steps = draw(
        st.lists(
            st.builds(
                CommitmentStep,
                effective_period=st.sampled_from(["2025-06", "2026-01", "2026-02"]),
                min_billable_sims=st.integers(0, 8),
                sim_commitment_plan_id=st.sampled_from(plan_ids),
                min_spend_micros=st.integers(0, 300 * EUR),
            ),
            max_size=2,
            unique_by=lambda step: step.effective_period,
        ).map(lambda steps: tuple(sorted(steps, key=lambda step: step.effective_period)))
    )
    account = account_a(
        currency=currency,
        timezone=draw(st.sampled_from(["UTC", "Asia/Tokyo", "America/New_York"])),
        commitment_schedule=steps,
    )
    count = draw(st.integers(0, 8))
    facts = [
        SimPeriodFacts(
            iccid=make_iccid(i),
            plan_id=draw(st.sampled_from(plan_ids)),
            billing_started_at=draw(instants),
            terminated_at=draw(instants),
            usage=draw(st.dictionaries(st.sampled_from(UsageType), usage_facts, max_size=3)),
        )
        for i in range(count)
    ]
    return account, catalog, facts


@given(scenarios(), st.randoms())
@PROPERTY
def test_invoice_rules_hold_for_any_account(
    scenario: tuple[Account, dict[str, Plan], list[SimPeriodFacts]], random: Random
) -> None:
    account, catalog, facts = scenario
    period = period_named("2026-01", account.timezone, account.billing_day)
    invoice = compute_invoice(account, catalog, period, facts, final=True)

    shuffled = list(facts)
    random.shuffle(shuffled)
    assert compute_invoice(account, catalog, period, iter(shuffled), final=True) == invoice

    step = minor_unit_micros(account.currency)
    assert invoice.total_micros == sum(line.amount_micros for line in invoice.lines)
    assert all(line.amount_micros % step == 0 for line in invoice.lines)
    assert all(line.amount_micros >= 0 for line in invoice.lines)
    assert invoice.billable_sims == sum(1 for s in invoice.sims if s.billable)
    subscribed = sum(line.quantity for line in invoice.lines if line.kind is LineKind.SUBSCRIPTION)
    assert subscribed == invoice.billable_sims
    in_force = commitment_step_for(account, period.name)
    if in_force is not None:
        assert invoice.total_micros >= round_line(in_force.min_spend_micros, account.currency)


@given(scenarios())
@PROPERTY
def test_each_line_is_rounded_once_from_its_exact_amount(
    scenario: tuple[Account, dict[str, Plan], list[SimPeriodFacts]],
) -> None:
    account, catalog, facts = scenario
    assume(facts)
    period = period_named("2026-01", account.timezone, account.billing_day)
    invoice = compute_invoice(account, catalog, period, facts, final=False)
    for line in invoice.lines:
        if line.kind is LineKind.SUBSCRIPTION:
            exact = sum(
                (
                    Fraction(s.subscription_micros_exact)
                    for s in invoice.sims
                    if s.plan_id == line.plan_id
                ),
                start=Fraction(0),
            )
            assert line.amount_micros == round_line(exact, account.currency)
