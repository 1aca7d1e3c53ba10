"""The partitions of usage_records: one per period name, created on demand.

usage_records is partitioned by LIST (period), one partition per period name "YYYY-MM",
called usage_records_pYYYY_MM (docs/storage.md). There is no DEFAULT partition: a row in it
would stop the creation of its period's partition, and it would forbid the
`DETACH PARTITION ... CONCURRENTLY` the archive uses. Instead the persister calls
`UsagePartitions.ensure` with each group before the group's transaction, so no record
meets a missing partition.

A partition is created standalone and then attached: ATTACH takes only a SHARE UPDATE
EXCLUSIVE lock on usage_records, so neither the group commits nor readers wait for it
(CREATE TABLE ... PARTITION OF would take an ACCESS EXCLUSIVE one).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from operator import attrgetter
from typing import Protocol

import asyncpg

from service.domain.errors import StorageUnavailable
from service.domain.periods import is_period_name
from service.storage.transactions import storage_errors

PARENT = "usage_records"
_PREFIX = "usage_records_p"
_PARTITION_NAME = re.compile(r"^usage_records_p(\d{4})_(\d{2})$")
_CREATE_LOCK_KEY = 0x51A7_0002  # advisory lock id: one creator of partitions at a time
# How long a known partition is trusted without looking at the catalog again: the archive
# command may drop one behind the service's back (see UsagePartitions).
_REFRESH_S = 60.0
_LOCK_TIMEOUT = "10s"  # a creation waits no longer for a lock; the group then fails, retried


def partition_name(period: str) -> str:
    """usage_records_p2026_01 for "2026-01"; ValueError for anything but a period name."""
    if not is_period_name(period):
        raise ValueError(f"not a period name: {period!r}")
    return _PREFIX + period.replace("-", "_")


def period_of(table: str) -> str | None:
    """The period name of a partition's table name; None for another table."""
    match = _PARTITION_NAME.match(table)
    return f"{match.group(1)}-{match.group(2)}" if match else None


async def attached_periods(conn: asyncpg.Connection) -> set[str]:
    """The periods whose partition is attached to usage_records."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass AND NOT i.inhdetachpending""",
        PARENT,
    )
    return {period for row in rows if (period := period_of(row[0])) is not None}


async def create_partitions(conn: asyncpg.Connection, periods: Iterable[str]) -> set[str]:
    """Create and attach the partitions of `periods` that are not attached; return every
    attached period. Its own transaction, serialized by an advisory lock."""
    names = {period: partition_name(period) for period in periods}
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _CREATE_LOCK_KEY)
        attached = await attached_periods(conn)
        for period in sorted(names.keys() - attached):
            # IF NOT EXISTS: a table the archive detached (and has not dropped yet) goes
            # back with its rows; ATTACH checks they belong to the period.
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {names[period]}"
                f" (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            )
            await conn.execute(
                f"ALTER TABLE {PARENT} ATTACH PARTITION {names[period]} FOR VALUES IN ('{period}')"
            )
            attached.add(period)
    return attached


class HasPeriod(Protocol):
    @property
    def period(self) -> str: ...


class UsagePartitions:
    """The persister's view of the attached partitions: a set looked up in memory, so a
    group of known periods costs nothing; a new period costs one short transaction.

    The set is read again from the catalog after `_REFRESH_S`: the archive drops only
    partitions of periods settled for every account, whose records the engine refuses,
    but a SIM provisioned back-dated into such a period later reopens it for its account.
    A group of that period fails (callers retry) until the set is refreshed.
    """

    def __init__(self) -> None:
        self._known: set[str] = set()
        self._read_at = float("-inf")

    async def ensure(self, pool: asyncpg.Pool, rows: Iterable[HasPeriod]) -> None:
        """Make sure the partitions of the rows' periods exist; StorageUnavailable if the
        database cannot create them now."""
        periods = set(map(attrgetter("period"), rows))
        stale = time.monotonic() - self._read_at > _REFRESH_S
        if not stale and periods <= self._known:
            return
        try:
            async with storage_errors(), pool.acquire() as conn:
                self._known = await create_partitions(conn, periods)
        except asyncpg.LockNotAvailableError as exc:  # lock_timeout: busy now, not broken
            raise StorageUnavailable(
                f"cannot create usage partitions now: {exc.__class__.__name__}"
            ) from exc
        self._read_at = time.monotonic()


async def partition_tables(conn: asyncpg.Connection) -> dict[str, str]:
    """Every partition table by period: "attached", "detaching" (a DETACH ... CONCURRENTLY
    that did not finish) or "detached" (left by an archive run that stopped before DROP)."""
    rows = await conn.fetch(
        """SELECT c.relname, i.inhdetachpending
           FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
           WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
             AND c.relname LIKE 'usage\\_records\\_p%'"""
    )
    tables: dict[str, str] = {}
    for name, pending in rows:
        period = period_of(name)
        if period is not None:
            state = "detached" if pending is None else "detaching" if pending else "attached"
            tables[period] = state
    return tables


async def detach_partition(conn: asyncpg.Connection, period: str, state: str) -> None:
    """Detach a period's partition without blocking the group commits (CONCURRENTLY takes
    a SHARE UPDATE EXCLUSIVE lock only); finish one whose detach was interrupted. Outside
    any transaction, as CONCURRENTLY requires."""
    name = partition_name(period)
    if state == "attached":
        await conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {name} CONCURRENTLY")
    elif state == "detaching":
        await conn.execute(f"ALTER TABLE {PARENT} DETACH PARTITION {name} FINALIZE")


async def attach_partition(conn: asyncpg.Connection, period: str) -> None:
    name = partition_name(period)
    await conn.execute(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES IN ('{period}')")


async def drop_detached(conn: asyncpg.Connection, period: str) -> None:
    await conn.execute(f"DROP TABLE IF EXISTS {partition_name(period)}")
