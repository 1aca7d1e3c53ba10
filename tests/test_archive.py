"""The archive: a settled period's records leave for a checked file, its partition goes,
its invoice stays, its records are never counted again; the open period is untouched."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

from rating.v1 import types_pb2 as t
from service.storage.archive import archive_file, archive_periods, read_totals
from tests.conftest import AppFactory
from tests.support import T0
from tests.support.billing import advance, get_invoice, preview
from tests.support.cli import archive_command
from tests.support.usage import account_with_sims, period_usage, rate, record

JAN, FEB = "2026-01", "2026-02"
FEB_10 = T0 + timedelta(days=40)
TOTALS = (
    "SELECT usage_type, count(*), sum(quantity), sum(rated_quantity) FROM usage_records"
    " WHERE period = $1 GROUP BY 1 ORDER BY 1"
)


def _records(prefix: str, sims: list[str], start: datetime, count: int) -> list[t.UsageRecord]:
    out = []
    for n in range(count):
        usage_type = t.USAGE_TYPE_SMS if n % 4 == 0 else t.USAGE_TYPE_DATA
        when = start + timedelta(minutes=7 * n)
        out.append(record(f"{prefix}-{n}", sims[n % len(sims)], 1_000 + 13 * n, when, usage_type))
    return out


async def _partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT inhrelid::regclass::text FROM pg_inherits"
        " WHERE inhparent = 'usage_records'::regclass"
    )
    return {row[0] for row in rows}


async def test_archive_a_settled_period(
    start_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    _, stubs = await start_app()
    sims = await account_with_sims(stubs, 3)
    january = _records("jan", sims, T0 + timedelta(days=2), 120)
    await advance(stubs, T0 + timedelta(days=20))
    assert {r.status for r in await rate(stubs, *january)} == {t.RECORD_STATUS_RATED}
    await advance(stubs, FEB_10)  # January is settled (late usage window: one day)
    february = _records("feb", sims, T0 + timedelta(days=32), 50)
    assert {r.status for r in await rate(stubs, *february)} == {t.RECORD_STATUS_RATED}
    invoice = await get_invoice(stubs, JAN)
    feb_preview = await preview(stubs, FEB)
    feb_usage = {sim: await period_usage(stubs, sim) for sim in sims}
    # Before the archive, a resend of a January record is a DUPLICATE: its id is known.
    assert [r.status for r in await rate(stubs, january[5])] == [t.RECORD_STATUS_DUPLICATE]

    conn = await asyncpg.connect(database_url)
    try:
        stored_jan = [tuple(r) for r in await conn.fetch(TOTALS, JAN)]
        stored_feb = [tuple(r) for r in await conn.fetch(TOTALS, FEB)]
        assert {row[0] for row in stored_jan} == {t.USAGE_TYPE_DATA, t.USAGE_TYPE_SMS}

        out_dir = tmp_path / "archive"
        run = await archive_command(
            "--database-url",
            database_url,
            "--out-dir",
            str(out_dir),
            "--retention-periods",
            "0",
            "--now",
            FEB_10.isoformat(),
        )
        assert run.code == 0, run
        assert f"{JAN}: archived" in run.out
        file = archive_file(out_dir, JAN)
        # The file, re-read, holds exactly the stored count and sums per usage type; the
        # command printed them.
        in_file = [
            (x.usage_type, x.records, x.quantity, x.rated_quantity) for x in read_totals(file)
        ]
        assert in_file == stored_jan
        for usage_type, count, quantity, rated in stored_jan:
            assert (
                f"{JAN}\t{t.UsageType.Name(usage_type).removeprefix('USAGE_TYPE_')}\t{count}\t{quantity}\t{rated}"
                in run.out
            )
        assert "usage_records_p2026_01" not in await _partitions(conn)
        assert await conn.fetchval("SELECT to_regclass('usage_records_p2026_01')") is None
        assert await conn.fetchval("SELECT count(*) FROM usage_records WHERE period = $1", JAN) == 0
        # The open period is untouched.
        assert [tuple(r) for r in await conn.fetch(TOTALS, FEB)] == stored_feb
    finally:
        await conn.close()

    # A January record is never counted again: PERIOD_CLOSED, and the invoice is the same.
    assert [r.status for r in await rate(stubs, january[5])] == [t.RECORD_STATUS_PERIOD_CLOSED]
    assert await get_invoice(stubs, JAN) == invoice
    assert await preview(stubs, FEB) == feb_preview
    assert {sim: await period_usage(stubs, sim) for sim in sims} == feb_usage
    # February ingestion and idempotency still work.
    late = record("feb-new", sims[0], 500, FEB_10 - timedelta(hours=1))
    answers = await rate(stubs, february[0], late)
    assert [r.status for r in answers] == [t.RECORD_STATUS_DUPLICATE, t.RECORD_STATUS_RATED]

    # Running it again changes nothing: January is already archived, the file stays.
    conn = await asyncpg.connect(database_url)
    try:
        report = await archive_periods(
            conn, out_dir=out_dir, retention_periods=0, now=FEB_10, periods=[JAN]
        )
    finally:
        await conn.close()
    assert [(p.period, p.archived, p.detail) for p in report.periods] == [
        (JAN, True, "already archived")
    ]
    assert [
        (x.usage_type, x.records, x.quantity, x.rated_quantity) for x in read_totals(file)
    ] == stored_jan


async def test_archive_refuses_unsettled_and_recent_periods(
    start_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    _, stubs = await start_app(late_usage_window=timedelta(days=30))
    sims = await account_with_sims(stubs, 2)
    await advance(stubs, T0 + timedelta(days=20))
    january = _records("jan", sims, T0 + timedelta(days=2), 10)
    assert {r.status for r in await rate(stubs, *january)} == {t.RECORD_STATUS_RATED}
    await advance(stubs, FEB_10)  # January ended but is not settled (30-day window)

    conn = await asyncpg.connect(database_url)
    try:
        report = await archive_periods(conn, out_dir=tmp_path, retention_periods=0, now=FEB_10)
        assert [(p.period, p.archived) for p in report.periods] == [(JAN, False)]
        assert report.periods[0].detail == (
            "refused: period 2026-01 is not settled for 1 account(s) (A); settle it first"
        )
        report = await archive_periods(
            conn, out_dir=tmp_path, retention_periods=1, now=FEB_10, periods=[JAN]
        )
        assert report.periods[0].detail == (
            "refused: period 2026-01 is within the retention (1 periods before the current"
            " one stay); the newest period that may be archived is 2025-12"
        )
        assert "usage_records_p2026_01" in await _partitions(conn)
        assert await conn.fetchval("SELECT count(*) FROM usage_records") == len(january)
    finally:
        await conn.close()
    assert not archive_file(tmp_path, JAN).exists()
    assert [r.status for r in await rate(stubs, january[0])] == [t.RECORD_STATUS_DUPLICATE]

    run = await archive_command(
        "--database-url",
        database_url,
        "--out-dir",
        str(tmp_path),
        "--retention-periods",
        "0",
        "--now",
        FEB_10.isoformat(),
    )
    assert run.code == 2, run
    assert "2026-01: refused: period 2026-01 is not settled" in run.out
