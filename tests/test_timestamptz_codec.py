"""The service's timestamptz codec (service.storage.timestamptz_codec) against asyncpg's own,
through a real PostgreSQL: the same instants go in and come out, to the microsecond."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from service.storage.database import init_connection
from service.storage.timestamptz_codec import decode_timestamptz, encode_timestamptz

ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), ZoneInfo("America/New_York")]


def instants() -> list[datetime]:
    """Edges (years 1 and 9999, PostgreSQL's epoch, DST changes, microseconds) and a seeded
    random spread."""
    edges = [
        datetime(1, 1, 2, tzinfo=UTC),
        datetime(9999, 12, 30, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 3, 8, 1, 59, 59, 999_999, tzinfo=ZoneInfo("America/New_York")),
        datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
        datetime(2026, 1, 31, 23, 0, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ]
    rng = random.Random(2026)
    spread = [
        datetime(1, 1, 2, tzinfo=UTC)
        + timedelta(microseconds=rng.randrange(315_000_000_000_000_000))
        for _ in range(200)
    ]
    return edges + [x.astimezone(rng.choice(ZONES)) for x in spread]


async def test_the_service_codec_reads_and_writes_what_asyncpg_does(server_url: str) -> None:
    ours = await asyncpg.connect(server_url)
    builtin = await asyncpg.connect(server_url)
    try:
        await init_connection(ours)
        for instant in instants():
            # Written by each: PostgreSQL renders the same value.
            query = "SELECT ($1::timestamptz)::text"
            assert await ours.fetchval(query, instant) == await builtin.fetchval(query, instant)
            # Read by each: the same instant, in UTC.
            text = await builtin.fetchval(query, instant)
            query = "SELECT $1::text::timestamptz"
            read = await ours.fetchval(query, text)
            # (in UTC: an ambiguous local time never compares equal across zones, PEP 495)
            assert read == await builtin.fetchval(query, text) == instant.astimezone(UTC)
            assert read.utcoffset() == timedelta(0)
    finally:
        await ours.close()
        await builtin.close()


@given(st.datetimes(timezones=st.sampled_from(ZONES)))
def test_encoding_round_trips_every_aware_instant(instant: datetime) -> None:
    assert decode_timestamptz(encode_timestamptz(instant)) == instant.astimezone(UTC)
