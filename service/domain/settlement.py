"""Settlement: the invoice of one account for one period (docs/settlement.md).

Lines, each computed with exact Fractions and rounded once, half-up, to the minor unit:

1. SUBSCRIPTION per plan with billable SIMs: sum of fee x fraction (billed days / period days
   for ALWAYS + DAILY, else 1).
2. USAGE per (plan, usage type) with charged usage: the chargeable quantity left after the
   allowance, priced through the tiers.
3. SIM_COMMITMENT_SHORTFALL: missing billable SIMs x the full fee of the commitment plan.
4. MINIMUM_SPEND_TRUE_UP: what lines 1-3 (rounded) fall short of the minimum spend.

The total is the sum of the rounded lines. The result depends only on the set of SIM facts,
never on their order, so settling twice gives the same invoice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from service.domain.model import (
    Account,
    BillingMode,
    CommitmentStep,
    Invoice,
    InvoiceLine,
    LineKind,
    Period,
    Plan,
    Proration,
    SimBreakdown,
    SimPeriodFacts,
    SimUsageFacts,
    UsageType,
)
from service.domain.money import format_micros, price_through_tiers, round_line
from service.domain.periods import billed_days, period_days


@dataclass(frozen=True, slots=True)
class _SimAssessment:
    facts: SimPeriodFacts
    billable: bool
    billed_days: int
    subscription: Fraction  # exact micros before the line's rounding


def commitment_step_for(account: Account, period_name: str) -> CommitmentStep | None:
    """The ramp-up step in force: latest effective_period <= period_name, if any.

    "YYYY-MM" strings sort like the months they name, so string comparison is enough.
    """
    in_force = [s for s in account.commitment_schedule if s.effective_period <= period_name]
    return max(in_force, key=lambda step: step.effective_period, default=None)


def compute_invoice(
    account: Account,
    plans: Mapping[str, Plan],
    period: Period,
    sims: Iterable[SimPeriodFacts],
    *,
    final: bool,
    settled_at: datetime | None = None,
) -> Invoice:
    """The invoice of `account` for `period` from the facts of every SIM of the account.

    Raises ValueError for inconsistent input (a SIM on a plan missing from `plans`, a plan
    in another currency, an ICCID listed twice): callers hold validated state, so that is a
    programming error, not a bad request.
    """
    facts = sorted(sims, key=lambda sim: sim.iccid)
    _check_consistent(account, plans, facts)
    days_in_period = period_days(period, account.timezone)
    assessed = [
        _assess(sim, plans[sim.plan_id], period, account.timezone, days_in_period) for sim in facts
    ]
    by_plan: dict[str, list[_SimAssessment]] = defaultdict(list)
    for item in assessed:
        by_plan[item.facts.plan_id].append(item)

    currency = account.currency
    lines: list[InvoiceLine] = []
    for plan_id in sorted(by_plan):
        line = _subscription_line(plans[plan_id], by_plan[plan_id], currency)
        if line is not None:
            lines.append(line)
    for plan_id in sorted(by_plan):
        lines.extend(_usage_lines(plans[plan_id], by_plan[plan_id], currency))

    billable_sims = sum(1 for item in assessed if item.billable)
    step = commitment_step_for(account, period.name)
    if step is not None:
        shortfall = _shortfall_line(step, plans, billable_sims, currency)
        if shortfall is not None:
            lines.append(shortfall)
        true_up = _true_up_line(step, sum(line.amount_micros for line in lines), currency)
        if true_up is not None:
            lines.append(true_up)

    return Invoice(
        account_id=account.account_id,
        period=period,
        currency=currency,
        billable_sims=billable_sims,
        lines=tuple(lines),
        total_micros=sum(line.amount_micros for line in lines),
        final=final,
        settled_at=settled_at,
        sims=tuple(_breakdown(item) for item in assessed),
    )


def _check_consistent(
    account: Account, plans: Mapping[str, Plan], facts: Sequence[SimPeriodFacts]
) -> None:
    seen: set[str] = set()
    for sim in facts:
        if sim.iccid in seen:
            raise ValueError(f"SIM {sim.iccid} listed twice")
        seen.add(sim.iccid)
        plan = plans.get(sim.plan_id)
        if plan is None:
            raise ValueError(f"SIM {sim.iccid} is on plan {sim.plan_id!r}, not in plans")
        if plan.currency != account.currency:
            raise ValueError(
                f"plan {plan.plan_id!r} is in {plan.currency}, account in {account.currency}"
            )


def _assess(
    sim: SimPeriodFacts, plan: Plan, period: Period, timezone: str, days_in_period: int
) -> _SimAssessment:
    days = billed_days(period, timezone, sim.billing_started_at, sim.terminated_at)
    if plan.billing_mode is BillingMode.ALWAYS:
        billable = days > 0
        prorated = plan.proration is Proration.DAILY
        fraction = Fraction(days, days_in_period) if prorated else Fraction(1)
    else:
        # A charged record implies billing had started; the explicit check guards against
        # facts assembled inconsistently.
        billable = sim.billing_started_at is not None and any(
            usage.charged_raw_quantity > 0 for usage in sim.usage.values()
        )
        fraction = Fraction(1)  # WHEN_USED always charges the full fee
    subscription = plan.subscription_fee_micros * fraction if billable else Fraction(0)
    return _SimAssessment(sim, billable, days, subscription)


def _subscription_line(
    plan: Plan, sims: Sequence[_SimAssessment], currency: str
) -> InvoiceLine | None:
    billable = [item for item in sims if item.billable]
    if not billable:
        return None
    count = len(billable)
    if plan.billing_mode is BillingMode.WHEN_USED:
        how = "billed for periods with usage"
    elif plan.proration is Proration.DAILY:
        how = "prorated daily"
    else:
        how = "full period"
    return InvoiceLine(
        kind=LineKind.SUBSCRIPTION,
        plan_id=plan.plan_id,
        usage_type=None,
        quantity=count,
        chargeable_quantity=count,
        amount_micros=round_line(
            sum((item.subscription for item in billable), Fraction(0)), currency
        ),
        description=f"{_sims(count)} on plan {plan.plan_id}, {how}",
    )


def _usage_lines(plan: Plan, sims: Sequence[_SimAssessment], currency: str) -> list[InvoiceLine]:
    used_types = {
        usage_type
        for item in sims
        for usage_type, usage in item.facts.usage.items()
        if usage.charged_rated_quantity > 0
    }
    billable_count = sum(1 for item in sims if item.billable)
    return [
        _usage_line(plan, usage_type, sims, billable_count, currency)
        for usage_type in sorted(used_types, key=lambda usage_type: usage_type.value)
    ]


def _usage_line(
    plan: Plan,
    usage_type: UsageType,
    sims: Sequence[_SimAssessment],
    billable_count: int,
    currency: str,
) -> InvoiceLine:
    quantities = [
        (item.billable, item.facts.usage.get(usage_type, SimUsageFacts()).charged_rated_quantity)
        for item in sims
    ]
    total = sum(quantity for _, quantity in quantities)
    name = usage_type.name
    rate = plan.rate_for(usage_type)
    if rate is None:
        # Unpriced usage is rated at zero but still shown: it made the SIM "used".
        return InvoiceLine(
            kind=LineKind.USAGE,
            plan_id=plan.plan_id,
            usage_type=usage_type,
            quantity=total,
            chargeable_quantity=0,
            amount_micros=0,
            description=f"{name} on plan {plan.plan_id}: {total} used, not priced by the plan",
        )
    included = rate.included_quantity
    if rate.pooled:
        allowance = included * billable_count
        chargeable = max(0, total - allowance)
        how = f"{allowance} included, pooled over {_sims(billable_count)}"
    else:
        # Only billable SIMs bring an allowance; under WHEN_USED a SIM with charged usage is
        # billable anyway, so this only matters for inconsistent facts.
        chargeable = sum(
            max(0, quantity - (included if billable else 0)) for billable, quantity in quantities
        )
        how = f"{included} included per billable SIM"
    amount = price_through_tiers(chargeable, rate.unit_quantity, rate.tiers)
    return InvoiceLine(
        kind=LineKind.USAGE,
        plan_id=plan.plan_id,
        usage_type=usage_type,
        quantity=total,
        chargeable_quantity=chargeable,
        amount_micros=round_line(amount, currency),
        description=f"{name} on plan {plan.plan_id}: {total} rated, {how}, {chargeable} charged",
    )


def _shortfall_line(
    step: CommitmentStep, plans: Mapping[str, Plan], billable_sims: int, currency: str
) -> InvoiceLine | None:
    shortfall = step.min_billable_sims - billable_sims
    if shortfall <= 0:
        return None
    plan = plans.get(step.sim_commitment_plan_id)
    if plan is None:
        raise ValueError(
            f"commitment plan {step.sim_commitment_plan_id!r} from {step.effective_period} "
            "is not in plans"
        )
    fee = format_micros(plan.subscription_fee_micros, currency)
    return InvoiceLine(
        kind=LineKind.SIM_COMMITMENT_SHORTFALL,
        plan_id=plan.plan_id,
        usage_type=None,
        quantity=shortfall,
        chargeable_quantity=shortfall,
        amount_micros=round_line(Fraction(shortfall * plan.subscription_fee_micros), currency),
        description=(
            f"commitment of {_sims(step.min_billable_sims)} from {step.effective_period}: "
            f"{billable_sims} billable, {shortfall} short at {fee} (plan {plan.plan_id})"
        ),
    )


def _true_up_line(step: CommitmentStep, subtotal: int, currency: str) -> InvoiceLine | None:
    # A minimum spend finer than the minor unit is rounded like any other line; a true-up
    # that rounds to nothing is left out rather than shown as a zero line.
    amount = round_line(Fraction(step.min_spend_micros - subtotal), currency)
    if amount <= 0:
        return None
    minimum = format_micros(step.min_spend_micros, currency)
    return InvoiceLine(
        kind=LineKind.MINIMUM_SPEND_TRUE_UP,
        plan_id="",
        usage_type=None,
        quantity=1,
        chargeable_quantity=1,
        amount_micros=amount,
        description=(
            f"minimum spend {minimum} from {step.effective_period}: "
            f"charges so far {format_micros(subtotal, currency)}"
        ),
    )


def _breakdown(item: _SimAssessment) -> SimBreakdown:
    exact = item.subscription
    return SimBreakdown(
        iccid=item.facts.iccid,
        plan_id=item.facts.plan_id,
        billable=item.billable,
        billed_days=item.billed_days,
        subscription_micros_exact=f"{exact.numerator}/{exact.denominator}",
        usage=dict(item.facts.usage),
    )


def _sims(count: int) -> str:
    return f"{count} SIM" if count == 1 else f"{count} SIMs"
