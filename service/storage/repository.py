"""All SQL of the service. Database failures become domain errors here.

`is_unavailable` is the one classification of database failures: the server cannot be
reached or cannot serve now (SQLSTATE classes 08 and 53, 57P0x, a lost or refused
connection, a timeout) -> `StorageUnavailable` (UNAVAILABLE, retrying is safe).
`is_conflict`: a serialization failure (40001) or deadlock (40P01) -> `retried` runs the
transaction again, a bounded number of times. Anything else (a violated constraint, a
data error: a bug) is not translated: it reaches the caller as INTERNAL, logged with its
traceback and counted. A unique violation the caller can cause is handled where it can
occur (ON CONFLICT), never by catching it.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import asyncpg
import structlog

from service.domain.errors import StorageUnavailable
from service.domain.limits import INT64_MAX
from service.domain.model import (
    USAGE_TYPES_BY_VALUE,
    Account,
    BillingStartReason,
    Invoice,
    Plan,
    Sim,
    SimPeriodFacts,
    SimState,
    SimUsageFacts,
)
from service.storage import invoice_codec, plan_codec

log = structlog.get_logger("repository")

T = TypeVar("T")

# SQLSTATEs of a server that cannot serve now: connection exception (class 08), insufficient
# resources (class 53: disk full, out of memory, too many connections), and 57P01..57P05
# (admin shutdown, crash shutdown, cannot connect now, database dropped, idle session
# timeout).
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53")
UNAVAILABLE_SQLSTATE_PREFIX = "57P0"
# A transaction that lost a race with another one; running it again succeeds.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
CONFLICT_ATTEMPTS = 5  # runs of one transaction in all, before its conflict is raised

_LOST_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable: ConnectionError is one
    TimeoutError,  # connecting, acquiring from the pool, a command past its timeout
    # The client's protocol state after the server vanished mid-operation: seen when the
    # pool resets a connection whose COMMIT was cut by a server shutdown.
    asyncpg.InternalClientError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True if `exc` means PostgreSQL cannot be reached or cannot serve now (retry later);
    False for any other failure, which is a bug to report (INTERNAL)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate or ""
        return sqlstate[:2] in UNAVAILABLE_SQLSTATE_CLASSES or sqlstate.startswith(
            UNAVAILABLE_SQLSTATE_PREFIX
        )
    if isinstance(exc, asyncpg.InterfaceError):
        # The client refuses to use a closed connection or a closing pool; its other
        # InterfaceErrors (DataError: an argument it cannot encode, an operation already in
        # progress) are bugs.
        return "closed" in str(exc) or "closing" in str(exc)
    return isinstance(exc, _LOST_CONNECTION_ERRORS)


def is_conflict(exc: BaseException) -> bool:
    """True for a serialization failure or a deadlock: the transaction may simply rerun."""
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in CONFLICT_SQLSTATES


@asynccontextmanager
async def storage_errors() -> AsyncIterator[None]:
    """Raise `StorageUnavailable` for the failures `is_unavailable` names; others pass."""
    try:
        yield
    except Exception as exc:
        if is_unavailable(exc):
            raise StorageUnavailable(f"database unavailable: {exc.__class__.__name__}") from exc
        raise


async def init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec(
        "timestamptz",
        encoder=encode_timestamptz,
        decoder=decode_timestamptz,
        schema="pg_catalog",
        format="binary",
    )


# timestamptz in PostgreSQL's binary format: int64 microseconds since 2000-01-01 UTC. The
# same values as asyncpg's own codec, at half its cost: the COPY of usage_records (an
# event_time per record) spent most of its time there.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_INT64 = struct.Struct(">q")
_PG_INFINITY, _PG_MINUS_INFINITY = 2**63 - 1, -(2**63)


def encode_timestamptz(value: datetime) -> bytes:
    """A naive datetime fails (TypeError): every instant of the service is aware."""
    return _INT64.pack((value - _PG_EPOCH) // _MICROSECOND)


def decode_timestamptz(data: bytes) -> datetime:
    (micros,) = _INT64.unpack(data)
    if micros == _PG_INFINITY:
        return datetime.max.replace(tzinfo=UTC)
    if micros == _PG_MINUS_INFINITY:
        return datetime.min.replace(tzinfo=UTC)
    return _PG_EPOCH + timedelta(microseconds=micros)


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One connection in one transaction, with connection failures mapped."""
    async with storage_errors(), pool.acquire() as conn, conn.transaction():
        yield conn


async def retried(
    pool: asyncpg.Pool,
    body: Callable[[asyncpg.Connection], Awaitable[T]],
    *,
    attempts: int = CONFLICT_ATTEMPTS,
) -> T:
    """`body` in one `transaction`, run again (from the start, in a new transaction) when
    it fails with a serialization failure or a deadlock, at most `attempts` times in all.
    `body` must have no effect outside the transaction until it returns."""
    for attempt in range(1, attempts + 1):
        try:
            async with transaction(pool) as conn:
                return await body(conn)
        except asyncpg.PostgresError as exc:
            if not is_conflict(exc) or attempt == attempts:
                raise
            log.warning(
                "transaction conflict; running it again",
                sqlstate=exc.sqlstate,
                error=exc.__class__.__name__,
                attempt=attempt,
            )
    raise AssertionError("unreachable")  # the last attempt returned or raised


async def copy_records(
    conn: asyncpg.Connection, table: str, records: Iterable[Any], columns: Sequence[str]
) -> None:
    """COPY `records` into `table`, failing with ConnectionDoesNotExistError as soon as the
    connection is lost.

    asyncpg's COPY waits for the socket to accept more data whenever its buffer is full; if
    the connection breaks then (the server crashed in the middle of a large COPY), nothing
    wakes it and it waits forever: a stream would never get its answer, and the task doing
    the COPY could not even be stopped. The termination listener notices the loss.
    """
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_lost(_: object) -> None:
        if not lost.done():
            lost.set_result(None)

    conn.add_termination_listener(on_lost)
    copy = asyncio.ensure_future(
        conn.copy_records_to_table(table, records=records, columns=columns)
    )
    try:
        await asyncio.wait({copy, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not copy.done():
            raise asyncpg.ConnectionDoesNotExistError(f"connection lost during COPY to {table}")
        copy.result()
    finally:
        conn.remove_termination_listener(on_lost)
        if not copy.done():
            copy.cancel()  # it stops at once; what it raises then is of no interest
            copy.add_done_callback(lambda task: task.cancelled() or task.exception())


# --- catalog -------------------------------------------------------------------------------


async def load_plans(conn: asyncpg.Connection) -> list[Plan]:
    rows = await conn.fetch("SELECT body FROM plans ORDER BY plan_id")
    return [plan_codec.plan_from_json(row["body"]) for row in rows]


async def insert_plan(conn: asyncpg.Connection, plan: Plan, now: datetime) -> Plan | None:
    """Insert a new plan; if one with its id is stored already, return that one instead."""
    inserted = await conn.fetchval(
        """INSERT INTO plans (plan_id, currency, body, created_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (plan_id) DO NOTHING RETURNING true""",
        plan.plan_id,
        plan.currency,
        plan_codec.plan_to_json(plan),
        now,
    )
    if inserted:
        return None
    body = await conn.fetchval("SELECT body FROM plans WHERE plan_id = $1", plan.plan_id)
    return plan_codec.plan_from_json(body)


async def load_accounts(conn: asyncpg.Connection) -> list[Account]:
    rows = await conn.fetch(
        "SELECT account_id, currency, timezone, billing_day, commitment_schedule"
        " FROM accounts ORDER BY account_id"
    )
    return [
        Account(
            account_id=row["account_id"],
            currency=row["currency"],
            timezone=row["timezone"],
            billing_day=row["billing_day"],
            commitment_schedule=plan_codec.schedule_from_json(row["commitment_schedule"]),
        )
        for row in rows
    ]


async def upsert_account(conn: asyncpg.Connection, account: Account, now: datetime) -> None:
    await conn.execute(
        """INSERT INTO accounts (account_id, currency, timezone, billing_day,
                                 commitment_schedule, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $6)
           ON CONFLICT (account_id) DO UPDATE SET
               currency = EXCLUDED.currency, timezone = EXCLUDED.timezone,
               billing_day = EXCLUDED.billing_day,
               commitment_schedule = EXCLUDED.commitment_schedule,
               updated_at = EXCLUDED.updated_at""",
        account.account_id,
        account.currency,
        account.timezone,
        account.billing_day,
        plan_codec.schedule_to_json(account.commitment_schedule),
        now,
    )


# --- SIMs ----------------------------------------------------------------------------------

_SIM_COLUMNS = (
    "iccid",
    "account_id",
    "plan_id",
    "provisioned_at",
    "state",
    "billing_started_at",
    "billing_start_reason",
    "suspended_at",
    "terminated_at",
)


def _sim_row(sim: Sim) -> tuple[Any, ...]:
    return (
        sim.iccid,
        sim.account_id,
        sim.plan_id,
        sim.provisioned_at,
        sim.state.value,
        sim.billing_started_at,
        sim.billing_start_reason.value if sim.billing_start_reason else None,
        sim.suspended_at,
        sim.terminated_at,
    )


def _sim_from_row(row: asyncpg.Record) -> Sim:
    reason = row["billing_start_reason"]
    return Sim(
        iccid=row["iccid"],
        account_id=row["account_id"],
        plan_id=row["plan_id"],
        provisioned_at=row["provisioned_at"],
        state=SimState(row["state"]),
        billing_started_at=row["billing_started_at"],
        billing_start_reason=BillingStartReason(reason) if reason is not None else None,
        suspended_at=row["suspended_at"],
        terminated_at=row["terminated_at"],
    )


# The start reads every SIM: its instants as int8 microseconds since the Unix epoch
# (EXTRACT is exact numeric), which decode in C, instead of timestamptz values decoded
# one by one in Python (2.3 s instead of 4.7 s for 1,000,000 rows).
_SIM_LOAD_SQL = (
    "SELECT "
    + ", ".join(
        f"(extract(epoch FROM {column}) * 1000000)::int8" if column.endswith("_at") else column
        for column in _SIM_COLUMNS
    )
    + " FROM sims"
)
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SIM_STATES = {state.value: state for state in SimState}
_START_REASONS: dict[int | None, BillingStartReason | None] = {
    reason.value: reason for reason in BillingStartReason
}
_START_REASONS[None] = None
_SHARED_VALUES = 65_536  # the bound of the loaders' memos


_LOAD_CHUNK = 50_000  # rows in memory at a time while the start reads a table


async def load_sims(conn: asyncpg.Connection) -> AsyncIterator[list[Sim]]:
    """Every SIM, in chunks (inside a transaction: a cursor). A chunk's rows are freed
    before the next is read: read at once, 1,000,000 rows took ~300 MB more at peak, and
    the SIMs built between them kept much of it from being returned (RSS)."""
    async for rows in _chunks(conn, _SIM_LOAD_SQL):
        yield sims_from_rows(rows)


async def _chunks(conn: asyncpg.Connection, sql: str, *args: Any) -> AsyncIterator[list[Any]]:
    """The rows of `sql` in chunks, the next one asked for before this one is handed out:
    PostgreSQL reads and sends it while the caller builds objects from this one."""
    cursor = await conn.cursor(sql, *args)
    ahead = asyncio.create_task(cursor.fetch(_LOAD_CHUNK))
    try:
        while rows := await ahead:
            ahead = asyncio.create_task(cursor.fetch(_LOAD_CHUNK))
            await asyncio.sleep(0)  # the task sends its request now, not at the next await
            yield rows
    finally:
        if not ahead.done():  # the caller stopped early: the connection finishes the fetch
            await asyncio.wait([ahead])


def sims_from_rows(rows: Iterable[Sequence[Any]]) -> list[Sim]:
    """The SIMs of `rows`: the columns of `_SIM_COLUMNS` in order, instants as
    microseconds since the Unix epoch (or None). The SIMs of one account or plan, or
    provisioned together, share one object of each value instead of one per row (~200
    bytes less per SIM: docs/storage.md, Memory); the memos are bounded. Built by
    unpacking, with the enums from dicts: 1,000,000 SIMs in ~3 s instead of ~8 s."""
    texts: dict[str, str] = {}
    instants: dict[int, datetime] = {}
    epoch, micros, states, reasons = _UNIX_EPOCH, _MICROSECOND, _SIM_STATES, _START_REASONS

    def text(value: str) -> str:
        if len(texts) >= _SHARED_VALUES:
            texts.clear()
        return texts.setdefault(value, value)

    def instant(value: int | None) -> datetime | None:
        if value is None:
            return None
        known = instants.get(value)
        if known is None:
            if len(instants) >= _SHARED_VALUES:
                instants.clear()
            known = instants[value] = epoch + value * micros
        return known

    return [
        Sim(
            iccid,
            text(account_id),
            text(plan_id),
            instant(provisioned_at),  # type: ignore[arg-type]
            states[state],
            instant(billing_started_at),
            reasons[reason],
            instant(suspended_at),
            instant(terminated_at),
        )
        for (
            iccid,
            account_id,
            plan_id,
            provisioned_at,
            state,
            billing_started_at,
            reason,
            suspended_at,
            terminated_at,
        ) in rows
    ]


async def fetch_sims(conn: asyncpg.Connection, iccids: Sequence[str]) -> dict[str, Sim]:
    """The stored SIMs among `iccids`, by ICCID."""
    rows = await conn.fetch(
        f"SELECT {', '.join(_SIM_COLUMNS)} FROM sims WHERE iccid = ANY($1::text[])", iccids
    )
    return {row["iccid"]: _sim_from_row(row) for row in rows}


async def insert_sims(conn: asyncpg.Connection, sims: Sequence[Sim]) -> None:
    """Bulk insert with COPY: one round trip for up to 10,000 SIMs."""
    await copy_records(conn, "sims", map(_sim_row, sims), _SIM_COLUMNS)


async def update_sims(conn: asyncpg.Connection, sims: Iterable[Sim]) -> None:
    """Write the lifecycle fields of many SIMs in one statement."""
    rows = list(sims)
    if not rows:
        return
    await conn.execute(
        """UPDATE sims SET state = u.state, billing_started_at = u.billing_started_at,
                           billing_start_reason = u.billing_start_reason,
                           suspended_at = u.suspended_at, terminated_at = u.terminated_at
           FROM unnest($1::text[], $2::int2[], $3::timestamptz[], $4::int2[],
                       $5::timestamptz[], $6::timestamptz[])
                AS u(iccid, state, billing_started_at, billing_start_reason,
                     suspended_at, terminated_at)
           WHERE sims.iccid = u.iccid""",
        [sim.iccid for sim in rows],
        [sim.state.value for sim in rows],
        [sim.billing_started_at for sim in rows],
        [sim.billing_start_reason.value if sim.billing_start_reason else None for sim in rows],
        [sim.suspended_at for sim in rows],
        [sim.terminated_at for sim in rows],
    )


# --- usage -----------------------------------------------------------------------------------


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


# --- usage state: aggregates, uncharged records, settled totals (docs/storage.md) ------------

# The seq of a settled period's aggregate rows: final, no checkpoint overwrites them.
SETTLED_SEQ = 2**63 - 1
# One SIM-period-type's counters: (period, iccid, usage_type, raw_quantity,
# charged_raw_quantity, charged_rated_quantity, records, charged_records).
AggregateRow = tuple[str, str, int, int, int, int, int, int]
# A record before billing start of a SIM on a FIRST_USE plan:
# (iccid, event_time, usage_type, quantity, rated_quantity, period).
UnchargedRow = tuple[str, datetime, int, int, int, str]
# A committed record to replay at start:
# (iccid, usage_type, quantity, rated_quantity, event_time, period, seq).
ReplayRow = tuple[str, int, int, int, datetime, str, int]

_UNCHARGED_COLUMNS = (
    "iccid",
    "event_time",
    "usage_type",
    "quantity",
    "rated_quantity",
    "period",
    "seq",
)


async def last_usage_seq(conn: asyncpg.Connection) -> int:
    """The last commit sequence number handed out: at least the seq of every record this
    transaction inserted or sees (the persister, the only writer, calls it in its group)."""
    value: int = await conn.fetchval("SELECT last_value FROM usage_records_seq")
    return value


async def insert_uncharged(
    conn: asyncpg.Connection, rows: Sequence[UnchargedRow], seq: int
) -> None:
    """Keep a group's records before billing start, with the group's seq."""
    await conn.copy_records_to_table(
        "usage_uncharged", records=[(*row, seq) for row in rows], columns=_UNCHARGED_COLUMNS
    )


COPY_CHUNK = 1_000  # rows per COPY of write_aggregates


async def write_aggregates(
    conn: asyncpg.Connection, rows: Sequence[AggregateRow], seq: int
) -> None:
    """Store `rows` (their values, not deltas) as exact at `seq`, except over a row stored at
    a higher seq (a settled period's, or a later checkpoint's). COPYs of COPY_CHUNK rows
    into a temporary table, then one upsert from it.

    Each COPY's rows are encoded in the event loop in one go: in chunks, a checkpoint of
    every SIM (hundreds of thousands of rows) lets calls be served between two of them.
    The quantities go as int8 when they fit, as numeric otherwise: asyncpg encodes a
    Python int as numeric ~10x slower (1,000,000 rows: 12.9 s of COPY as numeric, 1.3 s
    as int8). One table name per type: asyncpg caches a COPY's column types by table name."""
    if not rows:
        return
    fits = max(max(row[3], row[4], row[5]) for row in rows) <= INT64_MAX
    kind = "int8" if fits else "numeric"
    table = f"aggregate_rows_{kind}"
    await conn.execute(
        f"""CREATE TEMPORARY TABLE {table} (
               period text, iccid text, usage_type int2, raw_quantity {kind},
               charged_raw_quantity {kind}, charged_rated_quantity {kind}, records int8,
               charged_records int8) ON COMMIT DROP"""
    )
    for first in range(0, len(rows), COPY_CHUNK):
        await conn.copy_records_to_table(table, records=rows[first : first + COPY_CHUNK])
    await conn.execute(
        f"""INSERT INTO usage_aggregates AS a
           SELECT r.*, $1::int8 FROM {table} r
           ON CONFLICT (period, iccid, usage_type) DO UPDATE SET
               raw_quantity = EXCLUDED.raw_quantity,
               charged_raw_quantity = EXCLUDED.charged_raw_quantity,
               charged_rated_quantity = EXCLUDED.charged_rated_quantity,
               records = EXCLUDED.records,
               charged_records = EXCLUDED.charged_records,
               seq = EXCLUDED.seq
           WHERE a.seq <= EXCLUDED.seq""",
        seq,
    )


async def write_checkpoint(
    conn: asyncpg.Connection,
    rows: Sequence[AggregateRow],
    starts: Sequence[tuple[str, datetime]],
    watermark: int,
) -> None:
    """One checkpoint, in the caller's transaction: the changed counters exact at
    `watermark`; the stored uncharged records up to it that the billing starts (iccid,
    start) installed since the last checkpoint charge; the watermark."""
    await write_aggregates(conn, rows, watermark)
    if starts:
        await conn.execute(
            """DELETE FROM usage_uncharged u
               USING unnest($1::text[], $2::timestamptz[]) AS s(iccid, started_at)
               WHERE u.iccid = s.iccid AND u.event_time >= s.started_at AND u.seq <= $3""",
            [iccid for iccid, _ in starts],
            [start for _, start in starts],
            watermark,
        )
    await conn.execute("UPDATE usage_checkpoint SET watermark = greatest(watermark, $1)", watermark)


async def end_server_processes(conn: asyncpg.Connection, pids: Iterable[int]) -> None:
    """Terminate the server processes `pids` of this database, if still there, and wait
    (up to 10 s) until they are gone: the transaction each was in, a COMMIT included, has
    then ended one way or the other. StorageUnavailable if one is still there."""
    alive = await conn.fetch(
        """SELECT pid, pg_terminate_backend(pid, 10000) AS gone FROM pg_stat_activity
           WHERE pid = ANY($1::int[]) AND datname = current_database()
                 AND pid <> pg_backend_pid()""",
        list(pids),
    )
    if not all(row["gone"] for row in alive):
        raise StorageUnavailable(
            "a server process whose COMMIT outcome is unknown is still running"
        )


async def checkpoint_watermark(conn: asyncpg.Connection) -> int:
    value: int = await conn.fetchval("SELECT watermark FROM usage_checkpoint")
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


@asynccontextmanager
async def index_plans(conn: asyncpg.Connection, *settings: str) -> AsyncIterator[None]:
    """Inside a transaction: the planner `settings` (`enable_seqscan`, ...) off. The start
    and settlement read a small part of large tables (the records after the watermark,
    one account's rows) through indexes; PostgreSQL plans by its statistics, and a table
    filled since its last ANALYZE (autovacuum off, or not run yet) has none: it then
    scanned and sorted every partition (restart 14 s -> 33 s with 2M stored records)."""
    await conn.execute("; ".join(f"SET LOCAL {name} = off" for name in settings))
    try:
        yield
    finally:
        await conn.execute("; ".join(f"SET LOCAL {name} = on" for name in settings))


async def fold_settled_usage(conn: asyncpg.Connection, account_id: str, period: str) -> None:
    """Add the raw quantities of the account's settled `period` to sim_settled_usage; in the
    transaction that stores its invoice."""
    await conn.execute(
        """INSERT INTO sim_settled_usage AS t (iccid, usage_type, raw_quantity)
           SELECT a.iccid, a.usage_type, a.raw_quantity
           FROM usage_aggregates a JOIN sims s ON s.iccid = a.iccid
           WHERE a.period = $2 AND s.account_id = $1
           ON CONFLICT (iccid, usage_type) DO UPDATE SET
               raw_quantity = t.raw_quantity + EXCLUDED.raw_quantity""",
        account_id,
        period,
    )


# The facts of one account-period from the stored state alone, in ONE statement (one
# snapshot: a checkpoint committing meanwhile cannot be seen in part). Per SIM of the
# account and usage type, the sum of three parts:
#   a: its usage_aggregates row, exact as of the row's seq;
#   r: the records the row does not hold (seq after the watermark and after the row's seq;
#      no row: after the watermark, every earlier record is in a row), charged when
#      event_time >= the SIM's billing start;
#   u: records the row holds as uncharged (usage_uncharged, seq <= the row's) that the
#      SIM's billing start, moved earlier since the row was written, now charges.
# A settled row (seq SETTLED_SEQ) is final: nothing is added to it. SIMs without usage come
# out as one row with a NULL usage type. Ordered by ICCID, so it is read as a stream.
_PERIOD_FACTS_SQL = """
WITH s AS MATERIALIZED (
    SELECT iccid, plan_id, billing_started_at, terminated_at FROM sims WHERE account_id = $1
), a AS MATERIALIZED (
    SELECT a.iccid, a.usage_type, a.raw_quantity, a.charged_raw_quantity,
           a.charged_rated_quantity, a.records, a.charged_records, a.seq
    FROM usage_aggregates a
    -- One primary-key probe per SIM of the account (a join would scan the period's rows of
    -- every account: 2.7 s instead of 0.07 s for 10,000 of 1,000,000 SIMs).
    WHERE a.period = $2 AND a.iccid = ANY(ARRAY(SELECT iccid FROM s))
), parts AS (
    SELECT iccid, usage_type, raw_quantity AS raw, charged_raw_quantity AS charged_raw,
           charged_rated_quantity AS charged_rated, records, charged_records
    FROM a
    UNION ALL
    SELECT r.iccid, r.usage_type, r.quantity,
           CASE WHEN r.event_time >= s.billing_started_at THEN r.quantity ELSE 0 END,
           CASE WHEN r.event_time >= s.billing_started_at THEN r.rated_quantity ELSE 0 END,
           1,
           CASE WHEN r.event_time >= s.billing_started_at THEN 1 ELSE 0 END
    FROM usage_records r JOIN s USING (iccid)
         LEFT JOIN a ON a.iccid = r.iccid AND a.usage_type = r.usage_type
    WHERE r.period = $2 AND r.seq > (SELECT watermark FROM usage_checkpoint)
          AND r.seq > coalesce(a.seq, 0)
    UNION ALL
    SELECT u.iccid, u.usage_type, 0, u.quantity, u.rated_quantity, 0, 1
    FROM usage_uncharged u JOIN s USING (iccid)
         JOIN a ON a.iccid = u.iccid AND a.usage_type = u.usage_type
    WHERE u.period = $2 AND u.seq <= a.seq AND a.seq < $3
          AND u.event_time >= s.billing_started_at
)
SELECT s.iccid, s.plan_id, s.billing_started_at, s.terminated_at, p.usage_type,
       sum(p.raw), sum(p.charged_raw), sum(p.charged_rated), sum(p.records),
       sum(p.charged_records)
FROM s LEFT JOIN parts p USING (iccid)
GROUP BY s.iccid, s.plan_id, s.billing_started_at, s.terminated_at, p.usage_type
ORDER BY s.iccid, p.usage_type
"""


async def period_facts(
    conn: asyncpg.Connection, account_id: str, period: str, prefetch: int = 50_000
) -> list[SimPeriodFacts]:
    """What settlement needs of every SIM of the account for `period`, from PostgreSQL
    alone: the SIM rows, their usage_aggregates rows of the period, and the records and
    billing starts committed since (see _PERIOD_FACTS_SQL). Exact between checkpoints:
    the same facts `StateCache.period_facts` holds once every committed record is
    counted. One statement, streamed."""
    kinds = USAGE_TYPES_BY_VALUE
    facts: list[SimPeriodFacts] = []
    current: SimPeriodFacts | None = None
    # A cursor needs a transaction (a savepoint inside the caller's).
    async with conn.transaction(), index_plans(conn, "enable_seqscan"):
        async for row in conn.cursor(
            _PERIOD_FACTS_SQL, account_id, period, SETTLED_SEQ, prefetch=prefetch
        ):
            iccid = row[0]
            if current is None or current.iccid != iccid:
                current = SimPeriodFacts(
                    iccid=iccid, plan_id=row[1], billing_started_at=row[2], terminated_at=row[3]
                )
                facts.append(current)
            if row[4] is not None:
                current.usage[kinds[row[4]]] = SimUsageFacts(
                    raw_quantity=int(row[5]),
                    charged_raw_quantity=int(row[6]),
                    charged_rated_quantity=int(row[7]),
                    records=int(row[8]),
                    charged_records=int(row[9]),
                )
    return facts


def facts_rows(period: str, facts: Iterable[SimPeriodFacts]) -> list[AggregateRow]:
    """The usage_aggregates rows of `period` that hold `facts`."""
    return [
        (
            period,
            sim.iccid,
            usage_type.value,
            u.raw_quantity,
            u.charged_raw_quantity,
            u.charged_rated_quantity,
            u.records,
            u.charged_records,
        )
        for sim in facts
        for usage_type, u in sim.usage.items()
    ]


async def aggregate_periods(conn: asyncpg.Connection) -> list[str]:
    """The distinct periods of usage_aggregates: a walk down its primary key (one index
    probe per period), not a scan of its rows."""
    rows = await conn.fetch(
        """WITH RECURSIVE p AS (
               (SELECT period FROM usage_aggregates ORDER BY period LIMIT 1)
               UNION ALL
               SELECT (SELECT a.period FROM usage_aggregates a WHERE a.period > p.period
                       ORDER BY a.period LIMIT 1)
               FROM p WHERE p.period IS NOT NULL)
           SELECT period FROM p WHERE period IS NOT NULL"""
    )
    return [row[0] for row in rows]


async def period_aggregates(
    conn: asyncpg.Connection, period: str, account_ids: Sequence[str] | None
) -> AsyncIterator[list[tuple[str, int, int, int, int, int, int]]]:
    """(iccid, usage_type, raw, charged raw, charged rated, records, charged records) of the
    SIMs of `account_ids` in `period`, of every SIM when None (no join with sims); in
    chunks (inside a transaction)."""
    columns = """a.iccid, a.usage_type, a.raw_quantity{cast}, a.charged_raw_quantity{cast},
                 a.charged_rated_quantity{cast}, a.records, a.charged_records"""
    if account_ids is None:
        sql = f"SELECT {columns} FROM usage_aggregates a WHERE a.period = $1"
        args: list[Any] = [period]
    else:
        sql = f"""SELECT {columns} FROM usage_aggregates a JOIN sims s ON s.iccid = a.iccid
                  WHERE a.period = $1 AND s.account_id = ANY($2::text[])"""
        args = [period, account_ids]
    exact = await conn.fetchval(
        "SELECT NOT EXISTS (SELECT FROM usage_aggregates WHERE period = $1 AND"
        f" greatest(raw_quantity, charged_raw_quantity, charged_rated_quantity) > {INT64_MAX})",
        period,
    )
    async for rows in _chunks(conn, sql.format(cast="::int8" if exact else "::text"), *args):
        if exact:  # as ints, decoded in C: 2-3x faster than numeric's Decimals
            yield rows
        else:  # a total beyond int8 (numeric is unbounded): exact, through text
            yield [(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), r[5], r[6]) for r in rows]


async def uncharged_rows(conn: asyncpg.Connection) -> list[tuple[UnchargedRow, int]]:
    """Every stored uncharged record, with its seq."""
    rows = await conn.fetch(
        "SELECT iccid, event_time, usage_type, quantity, rated_quantity, period, seq"
        " FROM usage_uncharged ORDER BY iccid, event_time"
    )
    return [(tuple(row[:6]), row[6]) for row in rows]  # type: ignore[misc]


async def settled_usage(
    conn: asyncpg.Connection, plan_ids: Sequence[str]
) -> AsyncIterator[list[tuple[str, int, int]]]:
    """(iccid, usage_type, raw quantity of its settled periods) of the SIMs on `plan_ids`,
    in chunks (inside a transaction)."""
    if not plan_ids:
        return
    exact = await conn.fetchval(
        f"SELECT NOT EXISTS (SELECT FROM sim_settled_usage WHERE raw_quantity > {INT64_MAX})"
    )
    sql = """SELECT u.iccid, u.usage_type, u.raw_quantity{cast}
             FROM sim_settled_usage u JOIN sims s USING (iccid)
             WHERE s.plan_id = ANY($1::text[])"""
    async for rows in _chunks(conn, sql.format(cast="::int8" if exact else "::text"), plan_ids):
        yield rows if exact else [(r[0], r[1], int(r[2])) for r in rows]


async def settled_periods(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await conn.fetch("SELECT account_id, period FROM invoices")
    return [(row["account_id"], row["period"]) for row in rows]


# --- invoices --------------------------------------------------------------------------------


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
