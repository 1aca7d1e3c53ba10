"""Schema migrations: applied once, idempotently, safely from instances starting together."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import grpc

from rating.v1 import types_pb2 as t
from service.app import Application
from service.domain.iccid import make_iccid
from service.domain.model import BillingStartReason, Sim, SimState, UsageType
from service.domain.pricing import rated_quantity
from service.ingestion.records import Candidate
from service.ops.metrics import Metrics
from service.storage import catalog, database, usage_records
from service.storage.sims import insert_sims
from tests.conftest import RUN_ID
from tests.conftest import test_settings as settings_for
from tests.support import T0, Stubs
from tests.support.billing import line, preview
from tests.support.builders import account_a, plan_p
from tests.support.postgres import with_database
from tests.support.usage import rate, record


async def test_concurrent_migrations_apply_each_file_once(server_url: str) -> None:
    name = f"simrating_migrations_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conns = [await asyncpg.connect(with_database(server_url, name)) for _ in range(4)]
        try:
            applied = await asyncio.gather(*(database.migrate(conn) for conn in conns))
            names = [m.name for m in database.migrations()]
            # Exactly one instance applied everything; the others found nothing to do.
            assert sorted(applied, key=len) == [[], [], [], names]
            assert await database.migrate(conns[0]) == []
            rows = await conns[0].fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
            assert [(r["version"], r["name"]) for r in rows] == [
                (m.version, m.name) for m in database.migrations()
            ]
        finally:
            for conn in conns:
                await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --- 0004: usage_records partitioned by period ------------------------------------------------

_BEFORE_PARTITIONING = 3  # the last migration before 0004
_USAGE_SELECT = (
    "SELECT record_id, iccid, usage_type, quantity, rated_quantity, event_time, session_id,"
    " period, received_at, seq FROM usage_records ORDER BY record_id"
)


async def _unpartitioned_history(conn: asyncpg.Connection) -> dict[str, int]:
    """Plan P, account A, two SIMs billed from 2025-10, 300 records in each of 2025-10,
    -11 and -12, written with the storage modules into the pre-0004 schema; the rated quantity
    stored per period."""
    plan = plan_p()
    now = datetime(2025, 10, 1, tzinfo=UTC)
    await catalog.insert_plan(conn, plan, now)
    await catalog.upsert_account(conn, account_a(commitment_schedule=()), now)
    sims = [make_iccid(n) for n in (1, 2)]
    await insert_sims(
        conn,
        [
            Sim(sim, "A", "P", now, SimState.ACTIVE, now, BillingStartReason.IMMEDIATE)
            for sim in sims
        ],
    )
    rate = plan.rate_for(UsageType.DATA)
    rows: list[Candidate] = []
    rated: dict[str, int] = {}
    for month in (10, 11, 12):
        period = f"2025-{month:02d}"
        for n in range(300):
            quantity = 1_000 + 7 * n
            rows.append(
                Candidate(
                    f"r-{period}-{n}",
                    sims[n % 2],
                    UsageType.DATA,
                    quantity,
                    rated_quantity(quantity, rate),
                    datetime(2025, month, 1 + n % 28, n % 24, tzinfo=UTC),
                    f"s{n % 5}",
                    period,
                )
            )
            rated[period] = rated.get(period, 0) + rows[-1].rated_quantity
    assert await usage_records.insert_usage(conn, rows) == rows
    return rated


async def test_partitioning_keeps_every_record_once_and_ingestion_works(
    server_url: str,
) -> None:
    name = f"simrating_{RUN_ID}_m4_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server_url, name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await database.migrate(conn, until=_BEFORE_PARTITIONING)
            await database.init_connection(conn)
            rated = await _unpartitioned_history(conn)
            before = await conn.fetch(_USAGE_SELECT)
        finally:
            await conn.close()

        # The service's start applies 0004.
        app = Application(settings_for(url), Metrics())
        await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        try:
            stubs = Stubs(channel)
            conn = await asyncpg.connect(url)
            try:
                await database.init_connection(conn)
                assert await conn.fetch(_USAGE_SELECT) == before  # every record, once
                assert (
                    await conn.fetchval(
                        "SELECT relkind::text FROM pg_class WHERE relname = 'usage_records'"
                    )
                    == "p"
                )
                assert await _partitions(conn) == {
                    "usage_records_p2025_10",
                    "usage_records_p2025_11",
                    "usage_records_p2025_12",
                }
                assert await _index_columns(conn) == {
                    ("record_id", "period"),
                    ("iccid", "event_time"),
                    ("seq",),
                }
                assert not await conn.fetchval(
                    "SELECT to_regclass('usage_records_unpartitioned') IS NOT NULL"
                )

                # The counters were rebuilt from the moved records.
                for period, quantity in rated.items():
                    usage = line(await preview(stubs, period), t.LINE_KIND_USAGE)
                    assert usage.quantity == quantity, period

                # Idempotency: a stored record is a DUPLICATE; a new one of a new period
                # gets its partition and is RATED once.
                sim = make_iccid(1)
                old = record("r-2025-12-0", sim, 1_000, datetime(2025, 12, 1, tzinfo=UTC))
                new = record("r-new", sim, 5_000, T0)
                answers = await rate(stubs, old, new, new)
                assert [a.status for a in answers] == [
                    t.RECORD_STATUS_DUPLICATE,
                    t.RECORD_STATUS_RATED,
                    t.RECORD_STATUS_DUPLICATE,
                ]
                assert [a.status for a in await rate(stubs, new)] == [t.RECORD_STATUS_DUPLICATE]
                assert "usage_records_p2026_01" in await _partitions(conn)
                assert await conn.fetchval("SELECT count(*) FROM usage_records") == len(before) + 1
                assert (
                    await conn.fetchval(
                        "SELECT count(*) FROM usage_records_p2026_01 WHERE record_id = 'r-new'"
                    )
                    == 1
                )
            finally:
                await conn.close()
        finally:
            await channel.close()
            await app.stop()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT inhrelid::regclass::text FROM pg_inherits"
        " WHERE inhparent = 'usage_records'::regclass"
    )
    return {row[0] for row in rows}


async def _index_columns(conn: asyncpg.Connection) -> set[tuple[str, ...]]:
    """The key columns of each index of usage_records (the partitioned parent)."""
    rows = await conn.fetch(
        """SELECT array_agg(a.attname ORDER BY k.ordinality) FROM pg_index i
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ordinality)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = 'usage_records'::regclass GROUP BY i.indexrelid"""
    )
    return {tuple(row[0]) for row in rows}
