"""Export one settled invoice with its per-SIM breakdown, as JSON or CSV, to stdout.

    python -m service.cli.export_invoice --account A --period 2026-01 --format csv

Reads PostgreSQL directly (RATING_DATABASE_URL, or --database-url), so it works while the
service is down; only settled invoices exist there. Exit status 1 if there is no invoice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import asyncpg

from service.domain.model import Invoice
from service.storage import repository
from service.usecases import invoice_export

FORMATS = {"json": invoice_export.export_json, "csv": invoice_export.export_csv}


async def fetch(url: str, account_id: str, period: str) -> Invoice | None:
    conn = await asyncpg.connect(url)
    try:
        await repository.init_connection(conn)
        return await repository.fetch_invoice(conn, account_id, period)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.cli.export_invoice", description=__doc__
    )
    parser.add_argument("--account", required=True, help="account_id")
    parser.add_argument("--period", required=True, help="YYYY-MM")
    parser.add_argument("--format", choices=sorted(FORMATS), default="json")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("RATING_DATABASE_URL"),
        help="postgresql:// URL (default: RATING_DATABASE_URL)",
    )
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("set RATING_DATABASE_URL or pass --database-url")
    invoice = asyncio.run(fetch(args.database_url, args.account, args.period))
    if invoice is None:
        print(f"no invoice for account {args.account!r} period {args.period}", file=sys.stderr)
        return 1
    sys.stdout.write(FORMATS[args.format](invoice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
