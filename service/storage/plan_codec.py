"""Domain objects <-> JSON documents stored in PostgreSQL `jsonb` columns."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from service.domain.model import (
    ActivationMode,
    BillingMode,
    CommitmentStep,
    Plan,
    Proration,
    Threshold,
    Tier,
    UsageRate,
    UsageType,
)


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return {
        "plan_id": plan.plan_id,
        "currency": plan.currency,
        "subscription_fee_micros": plan.subscription_fee_micros,
        "activation_mode": plan.activation_mode.name,
        "thresholds": [
            {"usage_type": t.usage_type.name, "quantity": t.quantity} for t in plan.thresholds
        ],
        "grace_period_us": plan.grace_period // timedelta(microseconds=1),
        "billing_mode": plan.billing_mode.name,
        "proration": plan.proration.name,
        "usage_rates": [
            {
                "usage_type": r.usage_type.name,
                "unit_quantity": r.unit_quantity,
                "rounding_increment": r.rounding_increment,
                "included_quantity": r.included_quantity,
                "pooled": r.pooled,
                "tiers": [[t.up_to_quantity, t.price_micros] for t in r.tiers],
            }
            for r in plan.usage_rates
        ],
    }


def plan_from_json(doc: dict[str, Any]) -> Plan:
    return Plan(
        plan_id=doc["plan_id"],
        currency=doc["currency"],
        subscription_fee_micros=doc["subscription_fee_micros"],
        activation_mode=ActivationMode[doc["activation_mode"]],
        thresholds=tuple(
            Threshold(UsageType[t["usage_type"]], t["quantity"]) for t in doc["thresholds"]
        ),
        grace_period=timedelta(microseconds=doc["grace_period_us"]),
        billing_mode=BillingMode[doc["billing_mode"]],
        proration=Proration[doc["proration"]],
        usage_rates=tuple(
            UsageRate(
                usage_type=UsageType[r["usage_type"]],
                unit_quantity=r["unit_quantity"],
                rounding_increment=r["rounding_increment"],
                included_quantity=r["included_quantity"],
                pooled=r["pooled"],
                tiers=tuple(Tier(up_to, price) for up_to, price in r["tiers"]),
            )
            for r in doc["usage_rates"]
        ),
    )


def schedule_to_json(steps: tuple[CommitmentStep, ...]) -> list[dict[str, Any]]:
    return [
        {
            "effective_period": s.effective_period,
            "min_billable_sims": s.min_billable_sims,
            "sim_commitment_plan_id": s.sim_commitment_plan_id,
            "min_spend_micros": s.min_spend_micros,
        }
        for s in steps
    ]


def schedule_from_json(doc: list[dict[str, Any]]) -> tuple[CommitmentStep, ...]:
    return tuple(
        CommitmentStep(
            effective_period=s["effective_period"],
            min_billable_sims=s["min_billable_sims"],
            sim_commitment_plan_id=s["sim_commitment_plan_id"],
            min_spend_micros=s["min_spend_micros"],
        )
        for s in doc
    )
