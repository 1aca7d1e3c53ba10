"""Catalog validation: every broken rule is an InvalidArgument naming its field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from service.domain.errors import InvalidArgument
from service.domain.model import (
    Account,
    ActivationMode,
    CommitmentStep,
    Plan,
    Threshold,
    Tier,
    UsageType,
)
from service.domain.validation import validate_account, validate_plan
from tests.support.builders import account_a, data_rate, plan_p

TWO_TIERS = (Tier(up_to_quantity=100, price_micros=2), Tier(up_to_quantity=0, price_micros=1))


def test_worked_example_plan_and_account_are_valid() -> None:
    validate_plan(plan_p())
    validate_account(account_a(), {"P": plan_p()})


def test_other_valid_shapes() -> None:
    validate_plan(
        plan_p(
            plan_id="iot-eu.basic_v2:2026",
            activation_mode=ActivationMode.IMMEDIATE,
            thresholds=(),
            usage_rates=(data_rate(tiers=TWO_TIERS, pooled=True, included_quantity=0),),
            subscription_fee_micros=0,
        )
    )
    validate_plan(plan_p(currency="JPY", usage_rates=()))
    validate_account(
        account_a(timezone="America/New_York", billing_day=28, commitment_schedule=()), {}
    )
    free_step = CommitmentStep("2026-01", 0, "", 5_000_000)
    validate_account(account_a(commitment_schedule=(free_step,)), {})


def tiers(*bounds: int) -> Callable[[], Plan]:
    return lambda: plan_p(
        usage_rates=(
            data_rate(tiers=tuple(Tier(up_to_quantity=b, price_micros=1) for b in bounds)),
        )
    )


PLAN_CASES: list[tuple[str, Callable[[], Plan], str]] = [
    ("empty id", lambda: plan_p(plan_id=""), "plan.plan_id"),
    ("long id", lambda: plan_p(plan_id="p" * 129), "plan.plan_id"),
    ("space in id", lambda: plan_p(plan_id="my plan"), "plan.plan_id"),
    ("control in id", lambda: plan_p(plan_id="p\x00"), "plan.plan_id"),
    ("lowercase currency", lambda: plan_p(currency="eur"), "plan.currency"),
    ("unknown currency", lambda: plan_p(currency="EUX"), "plan.currency"),
    ("negative fee", lambda: plan_p(subscription_fee_micros=-1), "plan.subscription_fee_micros"),
    (
        "fee beyond int64",
        lambda: plan_p(subscription_fee_micros=2**63),
        "plan.subscription_fee_micros",
    ),
    ("first use without threshold", lambda: plan_p(thresholds=()), "plan.activation.thresholds"),
    (
        "immediate with threshold",
        lambda: plan_p(activation_mode=ActivationMode.IMMEDIATE),
        "plan.activation.thresholds",
    ),
    (
        "threshold of zero",
        lambda: plan_p(thresholds=(Threshold(UsageType.DATA, 0),)),
        "plan.activation.thresholds[0].quantity",
    ),
    (
        "duplicate threshold type",
        lambda: plan_p(thresholds=(Threshold(UsageType.SMS, 1), Threshold(UsageType.SMS, 2))),
        "plan.activation.thresholds[1].usage_type",
    ),
    (
        "negative grace",
        lambda: plan_p(grace_period=timedelta(seconds=-1)),
        "plan.activation.grace_period",
    ),
    (
        "duplicate rate type",
        lambda: plan_p(usage_rates=(data_rate(), data_rate())),
        "plan.usage_rates[1].usage_type",
    ),
    (
        "zero unit",
        lambda: plan_p(usage_rates=(data_rate(unit_quantity=0),)),
        "plan.usage_rates[0].unit_quantity",
    ),
    (
        "zero increment",
        lambda: plan_p(usage_rates=(data_rate(rounding_increment=0),)),
        "plan.usage_rates[0].rounding_increment",
    ),
    (
        "negative included",
        lambda: plan_p(usage_rates=(data_rate(included_quantity=-1),)),
        "plan.usage_rates[0].included_quantity",
    ),
    ("no tiers", tiers(), "plan.usage_rates[0].tiers"),
    (
        "negative price",
        lambda: plan_p(usage_rates=(data_rate(tiers=(Tier(0, -1),)),)),
        "plan.usage_rates[0].tiers[0].price_micros",
    ),
    ("negative bound", tiers(-5, 0), "plan.usage_rates[0].tiers[0].up_to_quantity"),
    ("descending bounds", tiers(100, 50, 0), "plan.usage_rates[0].tiers[1].up_to_quantity"),
    ("equal bounds", tiers(100, 100, 0), "plan.usage_rates[0].tiers[1].up_to_quantity"),
    ("unbounded in the middle", tiers(0, 100, 0), "plan.usage_rates[0].tiers[0].up_to_quantity"),
    ("bounded last tier", tiers(100, 200), "plan.usage_rates[0].tiers[1].up_to_quantity"),
]


@pytest.mark.parametrize(
    ("make_plan", "field"),
    [pytest.param(make, field, id=name) for name, make, field in PLAN_CASES],
)
def test_invalid_plan_names_the_field(make_plan: Callable[[], Plan], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_plan(make_plan())
    assert error.value.field == field


def step(**changes: object) -> CommitmentStep:
    return replace(CommitmentStep("2026-01", 3, "P", 10_000_000), **changes)  # type: ignore[arg-type]


def schedule(*steps: CommitmentStep) -> Callable[[], Account]:
    return lambda: account_a(commitment_schedule=steps)


STEP0 = "account.commitment_schedule[0]"
STEP1 = "account.commitment_schedule[1]"
ACCOUNT_CASES: list[tuple[str, Callable[[], Account], str]] = [
    ("empty id", lambda: account_a(account_id=""), "account.account_id"),
    ("tab in id", lambda: account_a(account_id="a\tb"), "account.account_id"),
    ("long id", lambda: account_a(account_id="a" * 129), "account.account_id"),
    ("bad currency", lambda: account_a(currency="EURO"), "account.currency"),
    ("unknown zone", lambda: account_a(timezone="Mars/Olympus"), "account.timezone"),
    ("empty zone", lambda: account_a(timezone=""), "account.timezone"),
    ("zone case", lambda: account_a(timezone="utc"), "account.timezone"),
    ("host zone", lambda: account_a(timezone="localtime"), "account.timezone"),
    ("path zone", lambda: account_a(timezone="../../etc/passwd"), "account.timezone"),
    ("billing day 0", lambda: account_a(billing_day=0), "account.billing_day"),
    ("billing day 29", lambda: account_a(billing_day=29), "account.billing_day"),
    ("month 13", schedule(step(effective_period="2026-13")), f"{STEP0}.effective_period"),
    ("short period", schedule(step(effective_period="2026-1")), f"{STEP0}.effective_period"),
    (
        "not ascending",
        schedule(step(effective_period="2026-04"), step(effective_period="2026-01")),
        f"{STEP1}.effective_period",
    ),
    (
        "repeated period",
        schedule(step(), step()),
        f"{STEP1}.effective_period",
    ),
    ("negative sims", schedule(step(min_billable_sims=-1)), f"{STEP0}.min_billable_sims"),
    ("negative spend", schedule(step(min_spend_micros=-1)), f"{STEP0}.min_spend_micros"),
    (
        "unknown commitment plan",
        schedule(step(sim_commitment_plan_id="Q")),
        f"{STEP0}.sim_commitment_plan_id",
    ),
    (
        "commitment without plan",
        schedule(step(sim_commitment_plan_id="")),
        f"{STEP0}.sim_commitment_plan_id",
    ),
    (
        "commitment plan in another currency",
        schedule(step(sim_commitment_plan_id="USD-PLAN")),
        f"{STEP0}.sim_commitment_plan_id",
    ),
]


@pytest.mark.parametrize(
    ("make_account", "field"),
    [pytest.param(make, field, id=name) for name, make, field in ACCOUNT_CASES],
)
def test_invalid_account_names_the_field(make_account: Callable[[], Account], field: str) -> None:
    plans = {"P": plan_p(), "USD-PLAN": plan_p(plan_id="USD-PLAN", currency="USD")}
    with pytest.raises(InvalidArgument) as error:
        validate_account(make_account(), plans)
    assert error.value.field == field
    assert str(error.value).startswith(field + ": ")
