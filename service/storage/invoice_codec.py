"""Invoices <-> JSON documents (the `invoices.body` column) and the CSV/JSON exports.

The stored document is the whole invoice: header, lines and the per-SIM breakdown, so a
settled invoice is read back from its body alone, identical to what was settled. The
exports are for finance: JSON is that document; CSV puts one row per invoice line, one row
per SIM and usage type of the breakdown, and a total row, in one table (`section` column).
"""

from __future__ import annotations

import csv
import io
import json
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
from service.domain.money import minor_unit_digits, minor_unit_micros

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


# --- exports -------------------------------------------------------------------------------


def export_json(invoice: Invoice) -> str:
    return json.dumps(invoice_to_json(invoice), indent=2) + "\n"


CSV_COLUMNS = (
    "section",  # line | sim | total
    "account_id",
    "period",
    "currency",
    "kind",
    "plan_id",
    "usage_type",
    "iccid",
    "billable",
    "billed_days",
    "subscription_micros_exact",
    "quantity",
    "raw_quantity",
    "chargeable_quantity",
    "amount",
    "amount_micros",
    "description",
)


def export_csv(invoice: Invoice) -> str:
    """The invoice as one CSV table: lines, then the per-SIM breakdown, then the total.

    Line rows carry the invoice line. SIM rows carry one SIM and one usage type it used
    (quantity = charged rated quantity, raw_quantity = every accepted record), or a single
    row without usage type for a SIM without usage; they never carry amounts, because an
    amount is rounded per line, not per SIM.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    header = {
        "account_id": invoice.account_id,
        "period": invoice.period.name,
        "currency": invoice.currency,
    }
    for line in invoice.lines:
        writer.writerow(
            {
                **header,
                "section": "line",
                "kind": line.kind.name,
                "plan_id": line.plan_id,
                "usage_type": line.usage_type.name if line.usage_type else "",
                "quantity": line.quantity,
                "chargeable_quantity": line.chargeable_quantity,
                "amount": decimal_amount(line.amount_micros, invoice.currency),
                "amount_micros": line.amount_micros,
                "description": line.description,
            }
        )
    for sim in invoice.sims:
        common = {
            **header,
            "section": "sim",
            "plan_id": sim.plan_id,
            "iccid": sim.iccid,
            "billable": str(sim.billable).lower(),
            "billed_days": sim.billed_days,
            "subscription_micros_exact": sim.subscription_micros_exact,
        }
        usage = sorted(sim.usage.items(), key=lambda item: item[0].value)
        if not usage:
            writer.writerow(common)
        for usage_type, facts in usage:
            writer.writerow(
                {
                    **common,
                    "usage_type": usage_type.name,
                    "quantity": facts.charged_rated_quantity,
                    "raw_quantity": facts.raw_quantity,
                }
            )
    writer.writerow(
        {
            **header,
            "section": "total",
            "quantity": invoice.billable_sims,
            "amount": decimal_amount(invoice.total_micros, invoice.currency),
            "amount_micros": invoice.total_micros,
            "description": "total; quantity = billable SIMs",
        }
    )
    return out.getvalue()


def decimal_amount(micros: int, currency: str) -> str:
    """Micros as a plain decimal in the currency's minor digits ("10.00", "1500", "1.250").

    Invoice amounts are already whole minor units; exact, no rounding here.
    """
    digits = minor_unit_digits(currency)
    minor, remainder = divmod(abs(micros), minor_unit_micros(currency))
    if remainder:
        raise ValueError(f"{micros} micros is not a whole minor unit of {currency}")
    sign = "-" if micros < 0 else ""
    if digits == 0:
        return f"{sign}{minor}"
    whole, fraction = divmod(minor, 10**digits)
    return f"{sign}{whole}.{fraction:0{digits}d}"
