"""Invoices <-> JSON documents (the `invoices.body` column).

The stored document is the whole invoice: header, lines and the per-SIM breakdown, so a
settled invoice is read back from its body alone, identical to what was settled. The
finance exports are `usecases.invoice_export`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.domain.model import (
    Invoice,
    InvoiceLine,
    LineKind,
    Period,
    SimBreakdown,
    SimUsageFacts,
    UsageType,
)

FORMAT_VERSION = 1


def invoice_to_json(invoice: Invoice) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "account_id": invoice.account_id,
        "period": invoice.period.name,
        "period_start": invoice.period.start.isoformat(),
        "period_end": invoice.period.end.isoformat(),
        "currency": invoice.currency,
        "billable_sims": invoice.billable_sims,
        "total_micros": invoice.total_micros,
        "final": invoice.final,
        "settled_at": invoice.settled_at.isoformat() if invoice.settled_at else None,
        "lines": [_line_to_json(line) for line in invoice.lines],
        "sims": [_sim_to_json(sim) for sim in invoice.sims],
    }


def invoice_from_json(doc: dict[str, Any]) -> Invoice:
    settled_at = doc["settled_at"]
    return Invoice(
        account_id=doc["account_id"],
        period=Period(
            name=doc["period"],
            start=datetime.fromisoformat(doc["period_start"]),
            end=datetime.fromisoformat(doc["period_end"]),
        ),
        currency=doc["currency"],
        billable_sims=doc["billable_sims"],
        lines=tuple(_line_from_json(line) for line in doc["lines"]),
        total_micros=doc["total_micros"],
        final=doc["final"],
        settled_at=datetime.fromisoformat(settled_at) if settled_at else None,
        sims=tuple(_sim_from_json(sim) for sim in doc["sims"]),
    )


def _line_to_json(line: InvoiceLine) -> dict[str, Any]:
    return {
        "kind": line.kind.name,
        "plan_id": line.plan_id,
        "usage_type": line.usage_type.name if line.usage_type else None,
        "quantity": line.quantity,
        "chargeable_quantity": line.chargeable_quantity,
        "amount_micros": line.amount_micros,
        "description": line.description,
    }


def _line_from_json(doc: dict[str, Any]) -> InvoiceLine:
    usage_type = doc["usage_type"]
    return InvoiceLine(
        kind=LineKind[doc["kind"]],
        plan_id=doc["plan_id"],
        usage_type=UsageType[usage_type] if usage_type else None,
        quantity=doc["quantity"],
        chargeable_quantity=doc["chargeable_quantity"],
        amount_micros=doc["amount_micros"],
        description=doc["description"],
    )


_USAGE_FIELDS = (
    "raw_quantity",
    "charged_rated_quantity",
    "charged_raw_quantity",
    "records",
    "charged_records",
)


def _sim_to_json(sim: SimBreakdown) -> dict[str, Any]:
    return {
        "iccid": sim.iccid,
        "plan_id": sim.plan_id,
        "billable": sim.billable,
        "billed_days": sim.billed_days,
        "subscription_micros_exact": sim.subscription_micros_exact,
        "usage": {
            usage_type.name: {name: getattr(facts, name) for name in _USAGE_FIELDS}
            for usage_type, facts in sorted(sim.usage.items(), key=lambda item: item[0].value)
        },
    }


def _sim_from_json(doc: dict[str, Any]) -> SimBreakdown:
    return SimBreakdown(
        iccid=doc["iccid"],
        plan_id=doc["plan_id"],
        billable=doc["billable"],
        billed_days=doc["billed_days"],
        subscription_micros_exact=doc["subscription_micros_exact"],
        usage={
            UsageType[name]: SimUsageFacts(**{key: facts[key] for key in _USAGE_FIELDS})
            for name, facts in doc["usage"].items()
        },
    )
