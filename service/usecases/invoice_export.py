"""Invoice exports for finance: JSON is the stored document; CSV puts one row per invoice
line, one row per SIM and usage type of the breakdown, and a total row, in one table
(`section` column)."""

from __future__ import annotations

import csv
import io
import json

from service.domain.model import Invoice
from service.domain.money import minor_unit_digits, minor_unit_micros
from service.storage.invoice_codec import invoice_to_json


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
            line_row(
                header,
                kind=line.kind.name,
                plan_id=line.plan_id,
                usage_type=line.usage_type.name if line.usage_type else "",
                quantity=line.quantity,
                chargeable_quantity=line.chargeable_quantity,
                amount_micros=line.amount_micros,
                description=line.description,
            )
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
    writer.writerow(total_row(header, invoice.billable_sims, invoice.total_micros))
    return out.getvalue()


def line_row(
    header: dict[str, str],
    *,
    kind: str,
    plan_id: str,
    usage_type: str,
    quantity: int,
    chargeable_quantity: int,
    amount_micros: int,
    description: str,
) -> dict[str, object]:
    """One invoice line's CSV row; `header` holds account_id, period and currency."""
    return {
        **header,
        "section": "line",
        "kind": kind,
        "plan_id": plan_id,
        "usage_type": usage_type,
        "quantity": quantity,
        "chargeable_quantity": chargeable_quantity,
        "amount": decimal_amount(amount_micros, header["currency"]),
        "amount_micros": amount_micros,
        "description": description,
    }


def total_row(header: dict[str, str], billable_sims: int, total_micros: int) -> dict[str, object]:
    """The invoice's total CSV row (quantity = billable SIMs)."""
    return {
        **header,
        "section": "total",
        "quantity": billable_sims,
        "amount": decimal_amount(total_micros, header["currency"]),
        "amount_micros": total_micros,
        "description": "total; quantity = billable SIMs",
    }


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
