"""The two record converters agree, and a candidate is its usage_records row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import example, given
from hypothesis import strategies as st

from rating.v1 import types_pb2 as t
from service.api.convert import record_from_proto, records_from_proto, time_to_proto
from service.domain.limits import MAX_ID_LENGTH, MAX_RECORD_QUANTITY
from service.ingestion.records import Candidate
from service.storage.usage_records import USAGE_COLUMNS
from tests.support.builders import PROPERTY

_IDS = st.one_of(
    st.sampled_from(["", "x", "a" * MAX_ID_LENGTH, "a" * (MAX_ID_LENGTH + 1), "a\nb", "é"]),
    st.text(max_size=MAX_ID_LENGTH + 2),
)
_QUANTITIES = st.one_of(
    st.sampled_from([-1, 0, 1, MAX_RECORD_QUANTITY, MAX_RECORD_QUANTITY + 1, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
# Timestamp's valid range is 0001-01-01 to 9999-12-31; 0 is also what a missing one reads.
_SECONDS = st.one_of(
    st.sampled_from([0, 1, -1, -62135596800, -62135596801, 253402300799, 253402300800]),
    st.integers(-(2**63), 2**63 - 1),
)
_NANOS = st.sampled_from([0, 1, 999_999_999, 1_000_000_000, -1])


@st.composite
def proto_records(draw: st.DrawFn) -> t.UsageRecord:
    record = t.UsageRecord(
        record_id=draw(_IDS),
        iccid=draw(_IDS),
        session_id=draw(_IDS),
        usage_type=draw(st.integers(0, 5)),  # type: ignore[arg-type]
        quantity=draw(_QUANTITIES),
    )
    if draw(st.booleans()):
        record.event_time.seconds = draw(_SECONDS)
        record.event_time.nanos = draw(_NANOS)
    return record


@PROPERTY
@given(st.lists(proto_records(), max_size=8))
@example([t.UsageRecord(record_id="r", iccid="i", usage_type=t.USAGE_TYPE_DATA, quantity=1)])
def test_the_batch_converter_agrees_with_the_one_by_one_converter(
    records: list[t.UsageRecord],
) -> None:
    assert records_from_proto(records) == [record_from_proto(r) for r in records]


async def test_a_candidate_is_a_usage_records_row(database_url: str) -> None:
    assert Candidate._fields == USAGE_COLUMNS
    conn = await asyncpg.connect(database_url)
    try:
        columns = await conn.fetch(
            "SELECT column_name, column_default FROM information_schema.columns"
            " WHERE table_name = 'usage_records' ORDER BY ordinal_position"
        )
    finally:
        await conn.close()
    # COPY names its columns: each must exist, and each the database cannot fill in itself
    # must be among them.
    assert set(USAGE_COLUMNS) <= {c["column_name"] for c in columns}
    assert {c["column_name"] for c in columns if c["column_default"] is None} <= set(USAGE_COLUMNS)


_OFFSETS = [UTC, timezone(timedelta(hours=-11)), timezone(timedelta(hours=5, minutes=30))]


@PROPERTY
@given(
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
    ),
    st.sampled_from([None, *_OFFSETS]),
)
@example(datetime(1969, 12, 31, 23, 59, 59, 999_999), UTC)  # just before the epoch
def test_time_to_proto_is_timestamp_from_datetime(local: datetime, zone: timezone | None) -> None:
    """The service's Timestamp conversion gives what protobuf's FromDatetime gives, for
    aware datetimes in any offset (and naive ones, taken as UTC)."""
    when = local if zone is None else local.replace(tzinfo=zone)
    ours, theirs = Timestamp(), Timestamp()
    time_to_proto(when, ours)
    theirs.FromDatetime(when)
    assert (ours.seconds, ours.nanos) == (theirs.seconds, theirs.nanos)
