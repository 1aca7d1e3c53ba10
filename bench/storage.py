"""Baseline B, the storage limit: asyncpg COPY of the same rows, no service in between.

A fresh database migrated like the service's; the rows go into its usage_records, the
table the service writes: partitioned by period, the partitions of the workload's periods
created before the timer (as the persister does before its first group of a period),
primary key (record_id, period) and the (iccid, event_time) index. The rows are exactly
those the service writes for the workload (rated_quantity and period included; received_at is the
table's default, as for the service), built before the timer. Timed:
`copy_records_to_table` in chunks of `--copy-batch` rows (default 20,000, the persister's
largest group commit), one COPY per transaction, one connection, one after the other --
like the persister's sequential group commits. With `--copy-batch 0` it is one COPY of
every row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg

from bench.context import BenchContext
from bench.registry import THROUGHPUT_UNIT, Figure, VerificationFailed, benchmark, option
from bench.workload import UsageRow, usage_rows
from service.storage import database
from service.storage.partitions import create_partitions
from service.storage.usage_records import USAGE_COLUMNS

TABLE = "usage_records"


@dataclass(frozen=True, slots=True)
class CopyOptions:
    # The persister's largest group commit; the history benchmark's COPY uses it too.
    batch: int = field(
        default=20_000,
        metadata=option("--copy-batch", "rows per COPY (0: one COPY of everything)", minimum=0),
    )


async def timed_copy(
    ctx: BenchContext, name: str, chunks: list[list[UsageRow]]
) -> tuple[float, int, dict[str, float]]:
    """COPY `chunks` (one COPY and transaction each) into the service's own `usage_records`
    (partitioned by period, the partitions created first) of a fresh database; (seconds,
    rows stored, CPU figures)."""
    async with ctx.fresh_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await database.migrate(conn)
            await create_partitions(conn, {row[-1] for rows in chunks for row in rows})
            await ctx.checkpoint(url)
            size = max(len(rows) for rows in chunks)
            with (
                ctx.progress.phase(f"{name}: {len(chunks)} COPYs of up to {size:,} rows"),
                ctx.profiled(name),
                ctx.cpu_meter() as cpu,
            ):
                started = time.perf_counter()
                for rows in chunks:
                    await conn.copy_records_to_table(TABLE, records=rows, columns=USAGE_COLUMNS)
                seconds = time.perf_counter() - started
            stored: int = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
        finally:
            await conn.close()
    return seconds, stored, cpu


@benchmark(
    "copy",
    "baseline B: asyncpg COPY of the same rows into the service's usage_records",
    options=CopyOptions,
)
async def copy(ctx: BenchContext) -> list[Figure]:
    workload = ctx.workload
    progress = ctx.progress
    chunk = ctx.options_of(CopyOptions).batch or workload.records
    with progress.phase(f"copy: build {workload.records:,} rows"):
        chunks = usage_rows(workload, chunk)
    seconds, stored, cpu = await timed_copy(ctx, "copy", chunks)
    if stored != workload.records:
        raise VerificationFailed(f"copy: {TABLE} holds {stored} rows, expected {workload.records}")
    value = workload.records / seconds
    progress.line(f"copy: {value:,.0f} records/s")
    return [
        Figure(
            name="copy",
            label="baseline B: asyncpg COPY (storage limit)",
            value=value,
            unit=THROUGHPUT_UNIT,
            details={
                "seconds": round(seconds, 3),
                "records": workload.records,
                "rows_per_copy": chunk,
                "copies": len(chunks),
                "transaction": "one per COPY (autocommit), one connection, sequential",
                **cpu,
            },
        )
    ]
