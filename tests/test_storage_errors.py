"""Database errors: an outage is UNAVAILABLE, a transaction conflict is run again, anything
else is a bug answered INTERNAL (never UNAVAILABLE, which callers retry forever), logged
and counted.

The classification is checked over SQLSTATEs; then, through real gRPC and the real
PostgreSQL, a trigger added to the test database with plain SQL raises a given SQLSTATE
on insert: a CHECK violation (23514) reaches the caller as INTERNAL and is counted, and
the persister goes on with the next group; a serialization failure (40001) raised once is
retried inside and the record is RATED.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.storage.transactions import is_conflict, is_unavailable
from tests.conftest import AppFactory
from tests.support.billing import failure, settle, worked_example
from tests.support.usage import account_with_sims, rate, record


def postgres_error(sqlstate: str) -> asyncpg.PostgresError:
    """The exception asyncpg raises for an error message with this SQLSTATE."""
    error: asyncpg.PostgresError = asyncpg.PostgresError.new({"C": sqlstate, "M": "test"})
    return error


@pytest.mark.parametrize(
    "sqlstate",
    [
        "08000",  # connection exception
        "08003",  # connection does not exist
        "08006",  # connection failure
        "08P01",  # protocol violation
        "53000",  # insufficient resources
        "53100",  # disk full
        "53200",  # out of memory
        "53300",  # too many connections
        "57P01",  # admin shutdown
        "57P02",  # crash shutdown
        "57P03",  # cannot connect now
        "57P04",  # database dropped
        "57P05",  # idle session timeout
    ],
)
def test_outage_sqlstates_are_unavailable(sqlstate: str) -> None:
    assert is_unavailable(postgres_error(sqlstate))
    assert not is_conflict(postgres_error(sqlstate))


@pytest.mark.parametrize(
    "sqlstate",
    [
        "23505",  # unique violation
        "23514",  # check violation
        "23503",  # foreign key violation
        "23502",  # not null violation
        "22003",  # numeric value out of range
        "22P02",  # invalid text representation
        "42P01",  # undefined table
        "42703",  # undefined column
        "40001",  # serialization failure: retried, not an outage
        "40P01",  # deadlock: retried, not an outage
        "57014",  # query canceled
        "P0001",  # raise exception
        "XX000",  # internal error
    ],
)
def test_other_sqlstates_are_not_unavailable(sqlstate: str) -> None:
    assert not is_unavailable(postgres_error(sqlstate))


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_serialization_failure_and_deadlock_are_conflicts(sqlstate: str) -> None:
    assert is_conflict(postgres_error(sqlstate))


@pytest.mark.parametrize("sqlstate", ["23505", "23514", "08006", "57P01", "40002"])
def test_other_errors_are_not_conflicts(sqlstate: str) -> None:
    assert not is_conflict(postgres_error(sqlstate))


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        OSError(113, "no route to host"),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InterfaceError("pool is closing"),
    ],
)
def test_lost_connections_are_unavailable(exc: BaseException) -> None:
    assert is_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        ValueError("a bug"),
        KeyError("a bug"),
        AssertionError(),
    ],
)
def test_client_misuse_and_bugs_are_not_unavailable(exc: BaseException) -> None:
    assert not is_unavailable(exc)


# --- through gRPC and PostgreSQL -----------------------------------------------------------------

# Refuses (SQLSTATE 23514, from the server itself) every record whose id starts with "bad".
CHECK_TRIGGER = """
CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.record_id LIKE 'bad%' THEN
        RAISE EXCEPTION 'record % refused', NEW.record_id USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_bad BEFORE INSERT ON usage_records
    FOR EACH ROW EXECUTE FUNCTION refuse_bad();
"""

# Fails the first insert with a serialization failure (40001); counts every attempt.
ONCE_TRIGGER = """
CREATE SEQUENCE insert_attempt_seq;
CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    attempts integer;
BEGIN
    -- Counted outside the failing transaction's fate: a sequence is never rolled back.
    attempts := nextval('insert_attempt_seq');
    IF attempts = 1 THEN
        RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_once BEFORE INSERT ON usage_records
    FOR EACH ROW EXECUTE FUNCTION fail_once();
"""


async def execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_constraint_violation_is_internal_counted_and_the_persister_goes_on(
    start_app: AppFactory, database_url: str
) -> None:
    app, stubs = await start_app()
    sims = await account_with_sims(stubs, 1)
    await execute(database_url, CHECK_TRIGGER)
    internal = app.metrics.registry.get_sample_value

    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await rate(stubs, record("bad-1", sims[0]))
    assert unary.value.code() == grpc.StatusCode.INTERNAL

    async def requests() -> AsyncIterator[r.StreamUsageRequest]:
        yield r.StreamUsageRequest(batch_id="b1", records=[record("bad-2", sims[0])])

    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in stubs.rating.StreamUsage(requests()):
            pass
    assert streamed.value.code() == grpc.StatusCode.INTERNAL

    assert internal("rating_internal_errors_total", {"operation": "RateUsage"}) == 1
    assert internal("rating_internal_errors_total", {"operation": "StreamUsage"}) == 1
    assert internal("rating_internal_errors_total", {"operation": "persister"}) == 2
    assert (
        internal(
            "grpc_server_handled_total",
            {
                "grpc_type": "unary",
                "grpc_service": "rating.v1.RatingService",
                "grpc_method": "RateUsage",
                "grpc_code": "INTERNAL",
            },
        )
        == 1
    )
    assert await fetchval(database_url, "SELECT count(*) FROM usage_records") == 0

    # The persister went on: the next group is stored and counted; the failed records were
    # not counted, and are not "seen before" either.
    [good] = await rate(stubs, record("good-1", sims[0], 700))
    assert good.status == t.RECORD_STATUS_RATED
    await execute(database_url, "DROP TRIGGER refuse_bad ON usage_records")
    [retried] = await rate(stubs, record("bad-1", sims[0], 300))
    assert retried.status == t.RECORD_STATUS_RATED
    assert await fetchval(database_url, "SELECT count(*) FROM usage_records") == 2
    status = await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=sims[0]))
    assert {u.usage_type: u.quantity for u in status.status.period_usage} == {
        t.USAGE_TYPE_DATA: 1_000
    }


async def test_serialization_failure_is_retried_then_rated(
    start_app: AppFactory, database_url: str
) -> None:
    app, stubs = await start_app()
    sims = await account_with_sims(stubs, 1)
    await execute(database_url, ONCE_TRIGGER)

    [result] = await rate(stubs, record("r-1", sims[0], 500))
    assert result.status == t.RECORD_STATUS_RATED
    # The insert ran twice: the first attempt failed with 40001, the rerun committed.
    assert await fetchval(database_url, "SELECT last_value FROM insert_attempt_seq") == 2
    assert await fetchval(database_url, "SELECT count(*) FROM usage_records") == 1
    value = app.metrics.registry.get_sample_value
    assert value("rating_internal_errors_total", {"operation": "persister"}) is None
    assert value("rating_internal_errors_total", {"operation": "RateUsage"}) is None


async def test_settlement_refused_by_the_database_is_internal(
    start_app: AppFactory, database_url: str
) -> None:
    app, stubs = await start_app()
    await worked_example(stubs)
    await execute(
        database_url,
        """CREATE FUNCTION refuse_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'invoice refused' USING ERRCODE = '23514'; END $$;
           CREATE TRIGGER refuse_invoice BEFORE INSERT ON invoices
               FOR EACH ROW EXECUTE FUNCTION refuse_invoice();""",
    )
    code, _ = await failure(settle(stubs, "2026-01"))
    assert code == grpc.StatusCode.INTERNAL
    sample = app.metrics.registry.get_sample_value
    assert sample("rating_internal_errors_total", {"operation": "SettlePeriod"}) == 1
    assert sample("rating_settlements_total", {"result": "failed"}) == 1
    assert await fetchval(database_url, "SELECT count(*) FROM invoices") == 0

    await execute(database_url, "DROP TRIGGER refuse_invoice ON invoices")
    assert (await settle(stubs, "2026-01")).final
