"""`python -m service.cli.archive`: archive settled periods' usage records to files.

The logic is `service.storage.archive.archive_periods`; this is its command line. Exit
status 0 when every period asked for is archived (or was already), 2 when some were
refused (not settled, within the retention, no records), 1 when the check of an exported
file failed or the database could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from service.cli.connection import EXIT_OK, EXIT_REJECTED, EXIT_SERVICE, EXIT_USAGE
from service.domain.errors import InvalidArgument
from service.ops.settings import parse_retention_periods
from service.storage import database
from service.storage.archive import ArchiveMismatch, ArchiveReport, archive_periods


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.cli.archive",
        description="Export settled periods' usage records to usage_records-YYYY-MM.csv.gz,"
        " check counts and quantity sums, then drop their partitions.",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("RATING_DATABASE_URL"),
        help="postgresql:// URL (default RATING_DATABASE_URL; unset: the embedded server"
        " under RATING_DATA_DIR)",
    )
    parser.add_argument(
        "--data-dir", default=os.environ.get("RATING_DATA_DIR", ".rating-data"), type=Path
    )
    parser.add_argument("--out-dir", required=True, type=Path, help="where the files go")
    parser.add_argument(
        "--retention-periods",
        default=os.environ.get("RATING_RETENTION_PERIODS", "3"),
        help="periods before the current one that stay (default RATING_RETENTION_PERIODS, 3)",
    )
    parser.add_argument(
        "--period",
        action="append",
        dest="periods",
        help="archive this period (YYYY-MM; repeatable); default: every period older than"
        " the retention",
    )
    parser.add_argument("--now", help="ISO time the retention counts from (default: now)")
    return parser


async def run(args: argparse.Namespace) -> ArchiveReport:
    url = args.database_url or await database.embedded_url(args.data_dir)
    now = datetime.now(UTC)
    if args.now:
        now = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
        now = now.replace(tzinfo=now.tzinfo or UTC)
    conn = await asyncpg.connect(url)
    try:
        return await archive_periods(
            conn,
            out_dir=args.out_dir,
            retention_periods=parse_retention_periods(args.retention_periods),
            now=now,
            periods=args.periods,
            progress=lambda line: print(line, flush=True),
        )
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except (InvalidArgument, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ArchiveMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SERVICE
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_SERVICE
    for outcome in report.periods:
        for totals in outcome.totals:
            print(
                f"{outcome.period}\t{totals.name}\t{totals.records}\t{totals.quantity}"
                f"\t{totals.rated_quantity}"
            )
    return EXIT_REJECTED if report.refused else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
