"""Settled invoices."""

from __future__ import annotations

import asyncpg

from service.domain.model import (
    Invoice,
)
from service.storage import invoice_codec


async def settled_periods(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch("SELECT account_id, period FROM invoices")
    return [(row["account_id"], row["period"]) for row in rows]


async def insert_invoice(conn: asyncpg.Connection, invoice: Invoice) -> tuple[Invoice, bool]:
    """Store a settled invoice unless the period has one; (the stored invoice, inserted).

    ON CONFLICT DO NOTHING and then reading back: whoever settles concurrently, every
    caller gets the one invoice that was committed first, exactly as read later.
    """
    assert invoice.settled_at is not None, "only settled invoices are stored"
    inserted = await conn.fetchval(
        """INSERT INTO invoices (account_id, period, period_start, period_end, currency,
                                 total_micros, body, settled_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (account_id, period) DO NOTHING
           RETURNING true""",
        invoice.account_id,
        invoice.period.name,
        invoice.period.start,
        invoice.period.end,
        invoice.currency,
        invoice.total_micros,
        invoice_codec.invoice_to_json(invoice),
        invoice.settled_at,
    )
    stored = await fetch_invoice(conn, invoice.account_id, invoice.period.name)
    assert stored is not None
    return stored, bool(inserted)


async def fetch_invoice(conn: asyncpg.Connection, account_id: str, period: str) -> Invoice | None:
    body = await conn.fetchval(
        "SELECT body FROM invoices WHERE account_id = $1 AND period = $2", account_id, period
    )
    return None if body is None else invoice_codec.invoice_from_json(body)


async def list_invoices(conn: asyncpg.Connection, account_id: str) -> list[Invoice]:
    rows = await conn.fetch(
        "SELECT body FROM invoices WHERE account_id = $1 ORDER BY period", account_id
    )
    return [invoice_codec.invoice_from_json(row["body"]) for row in rows]
