"""Billing periods in the account's time zone, and the billed days of a SIM within one.

A period runs from local midnight of the account's billing day (1-28, so it exists in
every month) to local midnight of the billing day one month later, and is named by the
`YYYY-MM` of its local start date. Bounds are aware UTC datetimes; zoneinfo handles DST.
Where a DST change skips local midnight, the period starts at the first local instant of
that date (fold=0 resolves a skipped or repeated midnight to the earliest instant).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from service.domain.errors import InvalidArgument
from service.domain.model import Period

_PERIOD_NAME = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


def _aware(instant: datetime) -> datetime:
    # A naive datetime would silently be read as the host's local time.
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"instant must be timezone-aware, got {instant!r}")
    return instant


def _check_billing_day(billing_day: int) -> None:
    if not 1 <= billing_day <= 28:
        raise ValueError(f"billing_day must be 1..28, got {billing_day}")


def _month_after(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _month_before(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def _start_of_local_date(day: date, timezone: str) -> datetime:
    local = datetime.combine(day, time(), tzinfo=ZoneInfo(timezone))
    return local.astimezone(UTC)


def _period_from(year: int, month: int, timezone: str, billing_day: int) -> Period:
    end_year, end_month = _month_after(year, month)
    return Period(
        name=f"{year:04d}-{month:02d}",
        start=_start_of_local_date(date(year, month, billing_day), timezone),
        end=_start_of_local_date(date(end_year, end_month, billing_day), timezone),
    )


def is_period_name(name: str) -> bool:
    """A `YYYY-MM` period name: year 0001 or later, month 01-12."""
    match = _PERIOD_NAME.fullmatch(name)
    return match is not None and int(match.group(1)) >= 1


def parse_period_name(name: str) -> tuple[int, int]:
    """(year, month) of a `YYYY-MM` period name; InvalidArgument("period") otherwise."""
    if not is_period_name(name):
        raise InvalidArgument("period", f"must be YYYY-MM with month 01-12, got {name!r}")
    return int(name[:4]), int(name[5:])


def local_date(instant: datetime, timezone: str) -> date:
    """The calendar date of an instant on the wall clocks of `timezone`."""
    return _aware(instant).astimezone(ZoneInfo(timezone)).date()


def period_containing(instant: datetime, timezone: str, billing_day: int) -> Period:
    """The period whose [start, end) contains `instant`."""
    _check_billing_day(billing_day)
    today = local_date(instant, timezone)
    year, month = today.year, today.month
    if today.day < billing_day:
        year, month = _month_before(year, month)
    return _period_from(year, month, timezone, billing_day)


def period_named(name: str, timezone: str, billing_day: int) -> Period:
    """The period called `name` ("YYYY-MM"); InvalidArgument("period") for a bad name."""
    _check_billing_day(billing_day)
    year, month = parse_period_name(name)
    try:
        return _period_from(year, month, timezone, billing_day)
    except (OverflowError, ValueError):
        # 9999-12 ends in year 10000; 0001-01 east of UTC starts before year 1.
        raise InvalidArgument("period", f"{name!r} is out of the supported range") from None


def next_period(p: Period, timezone: str, billing_day: int) -> Period:
    """The period that starts where `p` ends."""
    year, month = _month_after(*parse_period_name(p.name))
    return period_named(f"{year:04d}-{month:02d}", timezone, billing_day)


def period_days(p: Period, timezone: str) -> int:
    """Number of local calendar dates in the period (28..31)."""
    return (local_date(p.end, timezone) - local_date(p.start, timezone)).days


def billed_days(
    p: Period,
    timezone: str,
    billing_started_at: datetime | None,
    terminated_at: datetime | None,
) -> int:
    """Local dates of the period on which the SIM owes subscription.

    From the billing-start date (counted) to the termination date (not counted), clipped to
    the period; a SIM whose billing starts and ends on the same local date is billed that
    one day, since it was live on it. No billing start: no billed days.
    """
    if billing_started_at is None:
        return 0
    first = local_date(billing_started_at, timezone)
    if terminated_at is None:
        after_last = date.max
    else:
        after_last = local_date(terminated_at, timezone)
        if after_last == first:
            after_last = first + timedelta(days=1)
    period_first = local_date(p.start, timezone)
    period_after_last = local_date(p.end, timezone)
    return max(0, (min(after_last, period_after_last) - max(first, period_first)).days)
