"""The archive: a settled period's usage records leave PostgreSQL for a compressed file.

`archive_periods` exports each period's partition to `usage_records-YYYY-MM.csv.gz` in
`out_dir` (every column, a header, ordered by iccid, event_time, record_id, timestamps in
UTC), reads the file back and compares its record count and quantity sums per usage type
with the partition's (the same snapshot), then detaches the partition (CONCURRENTLY: the
group commits do not wait) and drops it. A period is archived only when

- it is older than the retention: the current month (UTC) and the `retention_periods`
  periods before it stay;
- every account that could have records in it has settled it: an account with a SIM
  provisioned before its period of that name ended must have the invoice (period names
  are per account, the partition of a name holds every account's period of that name).

Every step can be run again: the file is written under a temporary name and renamed, a
partition is dropped only after its detached table was counted again against the file
(records that arrived in between put it back, attached), and a run that stopped between
DETACH and DROP is finished by the next one. Records of an archived period are refused
by the engine (the period is settled); a resend is PERIOD_CLOSED (docs/storage.md).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from service.domain.model import UsageType
from service.domain.periods import parse_period_name, period_named
from service.storage import partitions
from service.storage.usage_records import USAGE_COLUMNS

COLUMNS = (*USAGE_COLUMNS, "received_at")


@dataclass(frozen=True, slots=True)
class TypeTotals:
    """Records of one usage type: their count and quantity sums."""

    usage_type: int
    records: int
    quantity: int
    rated_quantity: int

    @property
    def name(self) -> str:
        try:
            return UsageType(self.usage_type).name
        except ValueError:
            return str(self.usage_type)


@dataclass(frozen=True, slots=True)
class PeriodOutcome:
    period: str
    archived: bool  # the period is archived now (this run or an earlier one)
    detail: str
    file: Path | None = None
    totals: tuple[TypeTotals, ...] = ()


@dataclass(frozen=True, slots=True)
class ArchiveReport:
    periods: tuple[PeriodOutcome, ...]

    @property
    def refused(self) -> list[PeriodOutcome]:
        return [p for p in self.periods if not p.archived]


class ArchiveMismatch(Exception):
    """The file does not hold what the partition holds: nothing is dropped."""


def archive_file(out_dir: Path, period: str) -> Path:
    return out_dir / f"usage_records-{period}.csv.gz"


def newest_archivable(now: datetime, retention_periods: int) -> str:
    """The newest period name older than the retention at `now`."""
    index = now.year * 12 + now.month - 1 - retention_periods - 1
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


async def archive_periods(
    conn: asyncpg.Connection,
    *,
    out_dir: Path,
    retention_periods: int,
    now: datetime,
    periods: Sequence[str] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ArchiveReport:
    """Archive `periods` (default: every period in PostgreSQL older than the retention)."""
    newest = newest_archivable(now, retention_periods)
    tables = await partitions.partition_tables(conn)
    if periods is None:
        periods = sorted(p for p in tables if p <= newest)
    outcomes = []
    for period in periods:
        parse_period_name(period)  # InvalidArgument("period") for a bad name
        if period > newest:
            outcome = PeriodOutcome(
                period,
                False,
                f"refused: period {period} is within the retention"
                f" ({retention_periods} periods before the current one stay);"
                f" the newest period that may be archived is {newest}",
            )
        elif period not in tables:
            file = archive_file(out_dir, period)
            outcome = (
                PeriodOutcome(period, True, "already archived", file)
                if file.exists()
                else PeriodOutcome(period, False, f"refused: no records of period {period}")
            )
        else:
            outcome = await _archive_period(conn, period, tables[period], out_dir, progress)
        progress(f"{period}: {outcome.detail}")
        outcomes.append(outcome)
    return ArchiveReport(tuple(outcomes))


async def _archive_period(
    conn: asyncpg.Connection,
    period: str,
    state: str,
    out_dir: Path,
    progress: Callable[[str], None],
) -> PeriodOutcome:
    unsettled = await unsettled_accounts(conn, period)
    if unsettled:
        shown = ", ".join(unsettled[:5]) + (", ..." if len(unsettled) > 5 else "")
        return PeriodOutcome(
            period,
            False,
            f"refused: period {period} is not settled for {len(unsettled)} account(s)"
            f" ({shown}); settle it first",
        )
    file = archive_file(out_dir, period)
    progress(f"{period}: exporting to {file}")
    stored = await _export(conn, period, file)
    written = read_totals(file)
    if written != stored:
        file.unlink()
        raise ArchiveMismatch(
            f"{period}: the file holds {_describe(written)}, PostgreSQL {_describe(stored)};"
            " nothing dropped"
        )
    progress(f"{period}: {_describe(stored)} exported and checked; detaching")
    await partitions.detach_partition(conn, period, state)
    if await _totals(conn, partitions.partition_name(period)) != stored:
        await partitions.attach_partition(conn, period)
        return PeriodOutcome(
            period, False, f"refused: records of {period} arrived while archiving; run again"
        )
    await partitions.drop_detached(conn, period)
    return PeriodOutcome(period, True, f"archived: {_describe(stored)}", file, stored)


async def unsettled_accounts(conn: asyncpg.Connection, period: str) -> list[str]:
    """The accounts with a SIM provisioned before their period `period` ended and no
    invoice of that period."""
    rows = await conn.fetch(
        """SELECT a.account_id, a.timezone, a.billing_day, min(s.provisioned_at) AS earliest
           FROM accounts a JOIN sims s ON s.account_id = a.account_id
           WHERE NOT EXISTS (SELECT 1 FROM invoices i
                             WHERE i.account_id = a.account_id AND i.period = $1)
           GROUP BY a.account_id ORDER BY a.account_id""",
        period,
    )
    return [
        row["account_id"]
        for row in rows
        if row["earliest"] < period_named(period, row["timezone"], row["billing_day"]).end
    ]


async def _export(conn: asyncpg.Connection, period: str, file: Path) -> tuple[TypeTotals, ...]:
    """Write the partition to `file` (atomically); return its totals, of the same snapshot."""
    table = partitions.partition_name(period)
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(file.name + ".partial")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        with gzip.open(partial, "wb") as out:

            async def write(chunk: bytes) -> None:
                out.write(chunk)

            await conn.copy_from_query(
                f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY iccid, event_time, record_id",
                output=write,
                format="csv",
                header=True,
            )
        stored = await _totals(conn, table)
    with partial.open("rb") as done:
        os.fsync(done.fileno())
    partial.replace(file)
    return stored


async def _totals(conn: asyncpg.Connection, table: str) -> tuple[TypeTotals, ...]:
    rows = await conn.fetch(
        f"SELECT usage_type, count(*), sum(quantity), sum(rated_quantity) FROM {table}"
        " GROUP BY usage_type ORDER BY usage_type"
    )
    return tuple(TypeTotals(row[0], row[1], int(row[2]), int(row[3])) for row in rows)


def read_totals(file: Path) -> tuple[TypeTotals, ...]:
    """Count and sum an archive file, as an auditor would."""
    sums: dict[int, list[int]] = {}
    with gzip.open(file, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ArchiveMismatch(f"{file}: unexpected columns {reader.fieldnames}")
        for row in reader:
            totals = sums.setdefault(int(row["usage_type"]), [0, 0, 0])
            totals[0] += 1
            totals[1] += int(row["quantity"])
            totals[2] += int(row["rated_quantity"])
    return tuple(TypeTotals(t, *sums[t]) for t in sorted(sums))


def _describe(totals: tuple[TypeTotals, ...]) -> str:
    if not totals:
        return "0 records"
    return "; ".join(
        f"{t.name}: {t.records} records, quantity {t.quantity}, rated {t.rated_quantity}"
        for t in totals
    )
