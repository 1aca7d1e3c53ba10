"""Bounds every input is held to, wherever it arrives (gRPC, catalog, provisioning, usage)."""

from __future__ import annotations

from datetime import timedelta

# Ids (plan, account, ICCID, record, session): printable, at most this many characters.
MAX_ID_LENGTH = 128
# Amounts and quantities are stored as PostgreSQL bigint.
INT64_MAX = 2**63 - 1
# How far ahead of the service's clock an event or provisioning time may be: callers'
# clocks are allowed this much skew.
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)
# One record is one session's usage: 10**12 bytes, seconds (31,000 years) or messages is far
# beyond any real one. Without a bound, a few int64-sized records overflow the int64 period
# totals and invoice lines.
MAX_RECORD_QUANTITY = 10**12


def id_problem(value: str, *, required: bool) -> str | None:
    """What is wrong with an id, or None: empty (when required), too long, not printable."""
    if not value:
        return "is required" if required else None
    if len(value) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    if not value.isprintable():
        return "contains control characters"
    return None
