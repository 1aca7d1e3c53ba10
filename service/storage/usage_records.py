"""usage_records: the committed usage records, one row each, in commit order (`seq`);
the idempotency look-up of record ids; the records after a checkpoint's watermark."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import asyncpg

from service.storage.bulk import copy_records, index_plans

# The columns a usage row is COPYed with, in order. The ingestion's candidate records are
# NamedTuples with exactly these fields (tested), so they are COPYed as they are.
USAGE_COLUMNS = (
    "record_id",
    "iccid",
    "usage_type",
    "quantity",
    "rated_quantity",
    "event_time",
    "session_id",
    "period",
)


class UsageRow(Protocol):
    """What insert_usage needs of a row: a tuple in USAGE_COLUMNS order, with its id."""

    @property
    def record_id(self) -> str: ...

    @property
    def period(self) -> str: ...

    def __iter__(self) -> Iterator[Any]: ...


Row = TypeVar("Row", bound=UsageRow)


async def insert_usage(conn: asyncpg.Connection, candidates: list[Row]) -> list[Row]:
    """Insert the rows whose id is new in their period and return them, in order.

    `candidates` have distinct (id, period) keys. The keys already stored are looked up
    first and the rest go in with one COPY: cheaper than INSERT ... ON CONFLICT for the
    large groups the persister commits. The persister is the only writer of usage_records,
    so nothing can slip in between; if something did, the COPY's unique violation fails the
    whole transaction. The partitions of the rows' periods must exist (UsagePartitions.ensure).
    """
    seen = await stored_keys(conn, [(c.record_id, c.period) for c in candidates])
    rows = [c for c in candidates if (c.record_id, c.period) not in seen] if seen else candidates
    if rows:
        await copy_records(conn, "usage_records", rows, USAGE_COLUMNS)
    return rows


async def stored_keys(
    conn: asyncpg.Connection, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """The (record id, period) keys of `keys` that are stored: the idempotency key of a
    record is its id within its period (docs/storage.md). One query per period, each pruned
    to that period's partition, so the look-up never touches the indexes of other periods.

    The ids travel as one text, newline-separated, split by the server: record ids are
    printable (a newline never occurs in one), and one text is far cheaper to encode than
    an array of tens of thousands of elements.
    """
    periods = {period for _, period in keys}
    by_period: dict[str, list[str]]
    if len(periods) == 1:  # the usual group: one look-up, no grouping
        by_period = {periods.pop(): [record_id for record_id, _ in keys]}
    else:
        by_period = {period: [] for period in periods}
        for record_id, period in keys:
            by_period[period].append(record_id)
    seen: set[tuple[str, str]] = set()
    for period, record_ids in by_period.items():
        found = await conn.fetch(
            "SELECT record_id FROM usage_records WHERE period = $1"
            " AND record_id = ANY(string_to_array($2::text, E'\\n'))",
            period,
            "\n".join(record_ids),
        )
        seen.update((row[0], period) for row in found)
    return seen


# A committed record to replay at start:
# (iccid, usage_type, quantity, rated_quantity, event_time, period, seq).
ReplayRow = tuple[str, int, int, int, datetime, str, int]


async def last_usage_seq(conn: asyncpg.Connection) -> int:
    """The last commit sequence number handed out: at least the seq of every record this
    transaction inserted or sees (the persister, the only writer, calls it in its group)."""
    value: int = await conn.fetchval("SELECT last_value FROM usage_records_seq")
    return value


async def records_after(
    conn: asyncpg.Connection, seq: int, prefetch: int = 50_000
) -> AsyncIterator[ReplayRow]:
    """The records committed after `seq`, in commit order, streamed: through each
    partition's seq index, however many records the partitions hold."""
    async with conn.transaction(), index_plans(conn, "enable_seqscan", "enable_sort"):
        async for row in conn.cursor(
            "SELECT iccid, usage_type, quantity, rated_quantity, event_time, period, seq"
            " FROM usage_records WHERE seq > $1 ORDER BY seq",
            seq,
            prefetch=prefetch,
        ):
            yield tuple(row)  # type: ignore[misc]
