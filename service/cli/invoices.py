"""`simrating invoices list|show|export`: through BillingService, or, for the export with
the per-SIM breakdown, straight from PostgreSQL (`--database-url`).

The gRPC Invoice carries the lines and the total, not the per-SIM breakdown the service
stores with each settled invoice. So an export through the API has `line` and `total`
rows (CSV) or the Invoice message (JSON); `--database-url` exports the stored invoice
exactly as settled: `sim` rows included (CSV), the stored document (JSON). The CSV columns
are the same either way.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import asyncpg
from google.protobuf import json_format
from rich.table import Table

from rating.v1 import types_pb2 as t
from service.domain.model import Invoice
from service.storage.database import init_connection
from service.storage.invoices import fetch_invoice
from service.usecases.invoice_export import (
    CSV_COLUMNS,
    decimal_amount,
    export_csv,
    export_json,
    line_row,
    total_row,
)


def enum_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix) if value else ""


def proto_csv(invoice: t.Invoice) -> str:
    """The CSV of `invoice_export.export_csv`, from the gRPC Invoice: lines and the total
    (the per-SIM rows need the stored invoice: `--database-url`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    header = {
        "account_id": invoice.account_id,
        "period": invoice.period,
        "currency": invoice.currency,
    }
    for line in invoice.lines:
        writer.writerow(
            line_row(
                header,
                kind=enum_name(t.LineKind, line.kind, "LINE_KIND_"),
                plan_id=line.plan_id,
                usage_type=enum_name(t.UsageType, line.usage_type, "USAGE_TYPE_"),
                quantity=line.quantity,
                chargeable_quantity=line.chargeable_quantity,
                amount_micros=line.amount_micros,
                description=line.description,
            )
        )
    writer.writerow(total_row(header, invoice.billable_sims, invoice.total_micros))
    return out.getvalue()


def proto_json(invoice: t.Invoice) -> str:
    document = json_format.MessageToDict(invoice, preserving_proto_field_name=True)
    return json.dumps(document, indent=2) + "\n"


def export_from_api(invoice: t.Invoice, fmt: str) -> str:
    return proto_csv(invoice) if fmt == "csv" else proto_json(invoice)


async def export_from_database(url: str, account_id: str, period: str, fmt: str) -> str | None:
    """The stored invoice with its per-SIM breakdown, or None if the period is not settled."""
    conn = await asyncpg.connect(url)
    try:
        await init_connection(conn)
        invoice: Invoice | None = await fetch_invoice(conn, account_id, period)
    finally:
        await conn.close()
    if invoice is None:
        return None
    return export_csv(invoice) if fmt == "csv" else export_json(invoice)


def invoices_table(invoices: list[t.Invoice]) -> Table:
    table = Table(title="invoices", title_justify="left")
    for column in ("account", "period", "currency", "billable SIMs", "total", "settled at"):
        table.add_column(
            column, justify="right" if column in ("billable SIMs", "total") else "left"
        )
    for inv in invoices:
        table.add_row(
            inv.account_id,
            inv.period,
            inv.currency,
            f"{inv.billable_sims:,}",
            decimal_amount(inv.total_micros, inv.currency),
            inv.settled_at.ToDatetime().isoformat(timespec="seconds") + "Z" if inv.final else "",
        )
    return table


def invoice_table(inv: t.Invoice) -> Table:
    state = "settled" if inv.final else "preview (not final)"
    table = Table(
        title=f"invoice {inv.account_id} {inv.period} ({state}), {inv.currency},"
        f" {inv.billable_sims:,} billable SIMs",
        title_justify="left",
    )
    for column in ("kind", "plan", "usage", "quantity", "chargeable", "amount"):
        numeric = column in ("quantity", "chargeable", "amount")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for line in inv.lines:
        table.add_row(
            enum_name(t.LineKind, line.kind, "LINE_KIND_"),
            line.plan_id,
            enum_name(t.UsageType, line.usage_type, "USAGE_TYPE_"),
            f"{line.quantity:,}",
            f"{line.chargeable_quantity:,}",
            decimal_amount(line.amount_micros, inv.currency),
        )
    table.add_row("total", "", "", "", "", decimal_amount(inv.total_micros, inv.currency))
    return table
