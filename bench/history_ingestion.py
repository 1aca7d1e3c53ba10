"""History benchmark, storage part: ingestion into a database that already holds a long
history of usage records, against an empty one, in the same run.

Two fresh databases, the same service set-up, SIMs and workload as `ingestion`. In the
second, before the timed stream and after the SIMs are provisioned, `history_records`
records of the three periods before the workload's (2025-10 .. 2025-12) are written with
SQL (`INSERT ... SELECT generate_series`, ids `hist-N`, the workload's SIMs): the storage
shape a long-running service has (indexes of every stored period), without the hours it
would take through the API. The service's cache does not count them (they are written
after its start): the figure measures storage, the idempotency look-up and the insert.
The ratio (`vs_empty` in the details) is what docs/storage.md reports (acceptance: >= 0.9).

Not run by default (building 20M records takes minutes): `make bench BENCH_ARGS="--only
history_ingestion"`. The restart and memory parts of the history benchmark are separate.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from bench.client import ClientResult, StreamClient
from bench.context import BenchContext
from bench.ingestion import commit_figures, provision, verify
from bench.registry import Figure, benchmark
from bench.workload import Workload, service_settings
from service.app import Application
from service.ops.metrics import Metrics

# BENCH_HISTORY_RECORDS overrides it for a quick run.
HISTORY_RECORDS = int(os.environ.get("BENCH_HISTORY_RECORDS", "20000000"))
HISTORY_PERIODS = ("2025-10", "2025-11", "2025-12")
_CHUNK = 1_000_000  # rows per INSERT: one progress line each


async def fill_history(conn: asyncpg.Connection, records: int, progress_line: object) -> None:
    """`records` rows spread over HISTORY_PERIODS and the provisioned SIMs."""
    partitioned = await conn.fetchval(
        "SELECT relkind = 'p' FROM pg_class WHERE relname = 'usage_records'"
    )
    if partitioned:
        from service.storage.partitions import create_partitions

        await create_partitions(conn, HISTORY_PERIODS)
    await conn.execute(
        "CREATE TEMP TABLE hist_sims AS"
        " SELECT (row_number() OVER (ORDER BY iccid)) - 1 AS k, iccid FROM sims"
    )
    sims = await conn.fetchval("SELECT count(*) FROM hist_sims")
    per_period = -(-records // len(HISTORY_PERIODS))
    done = 0
    for index, period in enumerate(HISTORY_PERIODS):
        for start in range(0, per_period, _CHUNK):
            end = min(start + _CHUNK, per_period, records - done + start)
            if end <= start:
                break
            await conn.execute(
                """INSERT INTO usage_records (record_id, iccid, usage_type, quantity,
                                              rated_quantity, event_time, session_id, period)
                   SELECT 'hist-' || ($1::bigint * $2 + g), s.iccid, 1, 1000 + g % 4000000,
                          1024 * (1 + (1000 + g % 4000000) / 1024),
                          ($3 || '-01T00:00:00Z')::timestamptz + (g % 2400000) * interval '1s',
                          'hist-session', $3
                   FROM generate_series($4::bigint, $5::bigint - 1) g
                   JOIN hist_sims s ON s.k = g % $6""",
                index,
                per_period,
                period,
                start,
                end,
                sims,
            )
            done += end - start
            progress_line(f"history: {done:,} of {records:,} records")  # type: ignore[operator]
    await conn.execute("ANALYZE usage_records")


async def _ingest(
    ctx: BenchContext, workload: Workload, history: int
) -> tuple[ClientResult, dict[str, Any]]:
    client = StreamClient(workload)
    progress = ctx.progress
    name = "history" if history else "empty"
    try:
        async with ctx.fresh_database() as url:
            metrics = Metrics()
            app = Application(service_settings(url), metrics)
            await app.start()
            try:
                address = f"127.0.0.1:{app.port}"
                await provision(address, workload)
                if history:
                    conn = await asyncpg.connect(url)
                    try:
                        with progress.phase(f"{name}: write {history:,} history records"):
                            await fill_history(conn, history, progress.line)
                        size = await conn.fetchval(
                            "SELECT sum(pg_total_relation_size(inhrelid))"
                            " FROM pg_inherits WHERE inhparent = 'usage_records'::regclass"
                        ) or await conn.fetchval("SELECT pg_total_relation_size('usage_records')")
                    finally:
                        await conn.close()
                else:
                    size = 0
                await client.ready()
                await ctx.checkpoint(url)
                with progress.phase(f"{name}: stream {workload.records:,} records"):
                    result = await client.run(address)
            finally:
                await app.stop()
            conn = await asyncpg.connect(url)
            try:
                stored = await conn.fetchval(
                    "SELECT count(*) FROM usage_records WHERE record_id NOT LIKE 'hist-%'"
                )
            finally:
                await conn.close()
            verify(result, stored, workload)
    finally:
        client.close()
    progress.line(f"{name}: {result.records_per_second:,.0f} records/s")
    return result, {"history_bytes": int(size), **commit_figures(metrics)}


@benchmark(
    "history_ingestion",
    f"ingestion with {HISTORY_RECORDS:,} stored records vs an empty database",
    default=False,
)
async def history_ingestion(ctx: BenchContext) -> list[Figure]:
    empty, empty_details = await _ingest(ctx, ctx.workload, 0)
    full, full_details = await _ingest(ctx, ctx.workload, HISTORY_RECORDS)
    ratio = full.records_per_second / empty.records_per_second
    ctx.progress.line(f"history_ingestion: {ratio:.2f} x the empty database")
    return [
        Figure(
            "history_ingestion_empty",
            "ingestion, empty database",
            empty.records_per_second,
            "records/s",
            empty_details,
        ),
        Figure(
            "history_ingestion_full",
            f"ingestion, {HISTORY_RECORDS:,} records stored",
            full.records_per_second,
            "records/s",
            {"vs_empty": round(ratio, 3), **full_details},
        ),
    ]
