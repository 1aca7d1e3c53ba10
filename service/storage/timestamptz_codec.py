"""timestamptz in PostgreSQL's binary format, for the pool's connections
(`database.init_connection`)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

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
