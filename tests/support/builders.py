"""Builders shared by the domain tests: plans, accounts, docs/settlement.md's worked example."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings

from service.domain.iccid import make_iccid
from service.domain.model import (
    Account,
    ActivationMode,
    BillingMode,
    CommitmentStep,
    Plan,
    Proration,
    SimPeriodFacts,
    SimUsageFacts,
    Threshold,
    Tier,
    UsageRate,
    UsageType,
)

# Property tests run on busy CI machines: no per-example deadline.
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

MIB = 1_048_576
EUR = 1_000_000  # micros


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def data_rate(**changes: Any) -> UsageRate:
    rate = UsageRate(
        usage_type=UsageType.DATA,
        unit_quantity=MIB,
        rounding_increment=1024,
        included_quantity=10 * MIB,
        pooled=False,
        tiers=(Tier(up_to_quantity=0, price_micros=100_000),),
    )
    return replace(rate, **changes)


def plan_p(**changes: Any) -> Plan:
    """Plan P of the worked example: 2 EUR, first use on 1 MiB, 30 days grace, daily."""
    plan = Plan(
        plan_id="P",
        currency="EUR",
        subscription_fee_micros=2 * EUR,
        activation_mode=ActivationMode.FIRST_USE,
        thresholds=(Threshold(UsageType.DATA, MIB),),
        grace_period=timedelta(days=30),
        billing_mode=BillingMode.ALWAYS,
        proration=Proration.DAILY,
        usage_rates=(data_rate(),),
    )
    return replace(plan, **changes)


def account_a(**changes: Any) -> Account:
    """Account A of the worked example: UTC, day 1, EUR, 3 SIMs and 10 EUR from 2026-01."""
    account = Account(
        account_id="A",
        currency="EUR",
        timezone="UTC",
        billing_day=1,
        commitment_schedule=(
            CommitmentStep(
                effective_period="2026-01",
                min_billable_sims=3,
                sim_commitment_plan_id="P",
                min_spend_micros=10 * EUR,
            ),
        ),
    )
    return replace(account, **changes)


SIM1, SIM2, SIM3 = make_iccid(1), make_iccid(2), make_iccid(3)
JAN_1 = utc(2026, 1, 1)
SIM1_RECORDS = (
    (utc(2026, 1, 2, 12), UsageType.DATA, 500_000),
    (utc(2026, 1, 5, 10), UsageType.DATA, 600_000),
    (utc(2026, 1, 20, 8), UsageType.DATA, 20_971_520),
)


def worked_example_facts() -> list[SimPeriodFacts]:
    """January facts of the worked example, as the cache would hand them to settlement."""
    return [
        SimPeriodFacts(
            iccid=SIM1,
            plan_id="P",
            billing_started_at=utc(2026, 1, 5, 10),
            terminated_at=None,
            usage={
                UsageType.DATA: SimUsageFacts(
                    raw_quantity=500_000 + 600_000 + 20_971_520,
                    charged_rated_quantity=600_064 + 20_971_520,
                    charged_raw_quantity=600_000 + 20_971_520,
                    records=3,
                    charged_records=2,
                )
            },
        ),
        SimPeriodFacts(
            iccid=SIM2, plan_id="P", billing_started_at=utc(2026, 1, 31), terminated_at=None
        ),
        SimPeriodFacts(iccid=SIM3, plan_id="P", billing_started_at=None, terminated_at=None),
    ]
