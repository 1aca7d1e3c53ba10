"""RFC 3339 times -> protobuf Timestamps, cheaply (the CDR reader calls this per record)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def seconds_nanos(text: str) -> tuple[int, int]:
    """`2026-01-05T10:00:00Z` (or with an offset, fractions up to 9 digits) -> Unix seconds and
    nanoseconds. ValueError for anything else, a time without offset included."""
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (RFC 3339 needs Z or +hh:mm)")
    delta = when - _EPOCH
    return delta.days * 86_400 + delta.seconds, delta.microseconds * 1000


def parse_rfc3339(text: str) -> Timestamp:
    try:
        seconds, nanos = seconds_nanos(text)
    except ValueError:
        raise ValueError(f"not an RFC 3339 time: {text!r}") from None
    return Timestamp(seconds=seconds, nanos=nanos)
