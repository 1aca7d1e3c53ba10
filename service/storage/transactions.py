"""Transactions and the one classification of database failures.

`is_unavailable`: the server cannot be reached or cannot serve now (SQLSTATE classes 08
and 53, 57P0x, a lost or refused connection, a timeout) -> `StorageUnavailable`
(UNAVAILABLE, retrying is safe). `is_conflict`: a serialization failure (40001) or
deadlock (40P01) -> `retried` runs the transaction again, a bounded number of times.
Anything else (a violated constraint, a data error: a bug) is not translated: it reaches
the caller as INTERNAL, logged with its traceback and counted. A unique violation the
caller can cause is handled where it can occur (ON CONFLICT), never by catching it.

The modules beside this one hold the queries, one module per thing stored: catalog,
sims, usage_records, usage_state, invoices.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg
import structlog

from service.domain.errors import StorageUnavailable

log = structlog.get_logger("storage")

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
