"""Moving many rows: COPY in (noticing a lost connection), cursors read out in chunks
ahead of the caller, and plans through indexes for reads of a small part of a large
table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg


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


LOAD_CHUNK = 50_000  # rows in memory at a time while the start reads a table


async def read_chunks(conn: asyncpg.Connection, sql: str, *args: Any) -> AsyncIterator[list[Any]]:
    """The rows of `sql` in chunks, the next one asked for before this one is handed out:
    PostgreSQL reads and sends it while the caller builds objects from this one."""
    cursor = await conn.cursor(sql, *args)
    ahead = asyncio.create_task(cursor.fetch(LOAD_CHUNK))
    try:
        while rows := await ahead:
            ahead = asyncio.create_task(cursor.fetch(LOAD_CHUNK))
            await asyncio.sleep(0)  # the task sends its request now, not at the next await
            yield rows
    finally:
        if not ahead.done():  # the caller stopped early: the connection finishes the fetch
            await asyncio.wait([ahead])


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
