"""Billing periods: local midnight of the billing day in the account's IANA time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.errors import InvalidArgument
from service.domain.model import Period
from service.domain.periods import (
    billed_days,
    local_date,
    next_period,
    period_containing,
    period_days,
    period_named,
)
from tests.support.builders import PROPERTY, utc

NEW_YORK = "America/New_York"


def test_period_across_dst_start_keeps_local_midnight() -> None:
    march = period_named("2026-03", NEW_YORK, 1)  # DST starts 2026-03-08
    assert march == Period("2026-03", utc(2026, 3, 1, 5), utc(2026, 4, 1, 4))
    assert march.start.astimezone(ZoneInfo(NEW_YORK)).utcoffset() == timedelta(hours=-5)
    assert march.end.astimezone(ZoneInfo(NEW_YORK)).utcoffset() == timedelta(hours=-4)
    assert period_days(march, NEW_YORK) == 31
    assert march.end - march.start == timedelta(days=31, hours=-1)


def test_period_across_dst_end() -> None:
    november = period_named("2026-11", NEW_YORK, 1)  # DST ends 2026-11-01 02:00 local
    assert november == Period("2026-11", utc(2026, 11, 1, 4), utc(2026, 12, 1, 5))
    assert period_days(november, NEW_YORK) == 30


def test_mid_month_billing_day_across_dst() -> None:
    period = period_containing(utc(2026, 3, 10), NEW_YORK, 15)
    assert period == Period("2026-02", utc(2026, 2, 15, 5), utc(2026, 3, 15, 4))
    assert period_days(period, NEW_YORK) == 28


def test_billing_day_28_across_february() -> None:
    january = period_named("2026-01", "UTC", 28)
    assert january == Period("2026-01", utc(2026, 1, 28), utc(2026, 2, 28))
    assert period_days(january, "UTC") == 31
    february = next_period(january, "UTC", 28)
    assert february == Period("2026-02", utc(2026, 2, 28), utc(2026, 3, 28))
    assert period_days(february, "UTC") == 28
    assert period_days(period_named("2028-02", "UTC", 28), "UTC") == 29  # leap year


def test_tokyo_period_starts_the_previous_utc_day() -> None:
    january = period_named("2026-01", "Asia/Tokyo", 1)
    assert january == Period("2026-01", utc(2025, 12, 31, 15), utc(2026, 1, 31, 15))
    assert period_containing(utc(2025, 12, 31, 15), "Asia/Tokyo", 1).name == "2026-01"
    assert period_containing(utc(2025, 12, 31, 14, 59), "Asia/Tokyo", 1).name == "2025-12"


def test_skipped_local_midnight_starts_at_first_local_instant() -> None:
    # Chile moves clocks from 24:00 to 01:00 on 2026-09-06: that date has no midnight.
    period = period_named("2026-09", "America/Santiago", 6)
    assert period.start == utc(2026, 9, 6, 4)
    assert period_containing(utc(2026, 9, 6, 3, 59), "America/Santiago", 6).name == "2026-08"


def test_repeated_local_midnight_starts_at_its_first_occurrence() -> None:
    # Cuba falls back from 01:00 to 00:00 on 2026-11-01: midnight happens twice.
    period = period_named("2026-11", "America/Havana", 1)
    assert period.start == utc(2026, 11, 1, 4)
    assert period_containing(utc(2026, 11, 1, 4, 30), "America/Havana", 1).name == "2026-11"


@pytest.mark.parametrize(
    ("instant", "billing_day", "name"),
    [
        (utc(2026, 1, 1), 1, "2026-01"),
        (utc(2025, 12, 31, 23, 59), 1, "2025-12"),
        (utc(2026, 1, 27, 23, 59), 28, "2025-12"),
        (utc(2026, 1, 28), 28, "2026-01"),
        (utc(2026, 12, 31), 5, "2026-12"),
        (utc(2027, 1, 4), 5, "2026-12"),
    ],
)
def test_period_names_are_the_local_start_month(
    instant: datetime, billing_day: int, name: str
) -> None:
    assert period_containing(instant, "UTC", billing_day).name == name


def test_next_period_across_the_year() -> None:
    december = period_named("2025-12", "Europe/Berlin", 1)
    assert next_period(december, "Europe/Berlin", 1) == period_named("2026-01", "Europe/Berlin", 1)
    assert next_period(december, "Europe/Berlin", 1).start == december.end


@pytest.mark.parametrize(
    "name", ["", "2026-13", "2026-00", "2026-1", "26-01", "2026/01", "2026-01-01", " 2026-01"]
)
def test_malformed_period_names(name: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        period_named(name, "UTC", 1)
    assert error.value.field == "period"


def test_period_beyond_supported_range() -> None:
    with pytest.raises(InvalidArgument) as error:
        period_named("9999-12", "UTC", 1)
    assert error.value.field == "period"


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_containing(datetime(2026, 1, 1), "UTC", 1)


def test_local_date() -> None:
    assert local_date(utc(2026, 1, 31, 23, 30), "Asia/Tokyo").isoformat() == "2026-02-01"
    assert local_date(utc(2026, 1, 1, 3), NEW_YORK).isoformat() == "2025-12-31"


JANUARY = Period("2026-01", utc(2026, 1, 1), utc(2026, 2, 1))


@pytest.mark.parametrize(
    ("started", "terminated", "days"),
    [
        (None, None, 0),
        (utc(2026, 1, 5, 10), None, 27),  # worked example, SIM 1: Jan 5..31
        (utc(2026, 1, 31), None, 1),  # worked example, SIM 2: grace expired Jan 31
        (utc(2025, 11, 3), None, 31),
        (utc(2026, 2, 1), None, 0),
        (utc(2026, 1, 10, 8), utc(2026, 1, 10, 17), 1),  # starts and ends the same day
        (utc(2026, 1, 10, 8), utc(2026, 1, 11, 1), 1),  # termination date not counted
        (utc(2026, 1, 10), utc(2026, 1, 20), 10),
        (utc(2025, 12, 1), utc(2026, 1, 1, 12), 0),  # terminated on the period's first date
        (utc(2025, 12, 1), utc(2026, 1, 2, 12), 1),
        (utc(2025, 12, 31, 8), utc(2025, 12, 31, 9), 0),  # its one day was in December
        (utc(2026, 1, 31, 20), utc(2026, 1, 31, 21), 1),
        (utc(2026, 1, 20), utc(2026, 1, 10), 0),  # terminated before it ever started
    ],
)
def test_billed_days(started: datetime | None, terminated: datetime | None, days: int) -> None:
    assert billed_days(JANUARY, "UTC", started, terminated) == days


def test_billed_days_use_local_dates() -> None:
    tokyo_january = period_named("2026-01", "Asia/Tokyo", 1)
    # 2026-01-31 16:00 UTC is already February 1 in Tokyo.
    assert billed_days(tokyo_january, "Asia/Tokyo", utc(2026, 1, 31, 16), None) == 0
    assert billed_days(JANUARY, "UTC", utc(2026, 1, 31, 16), None) == 1


ZONES = st.sampled_from(
    [
        "UTC",
        NEW_YORK,
        "Asia/Tokyo",
        "Europe/London",
        "Australia/Lord_Howe",  # 30-minute DST shift
        "Asia/Kathmandu",  # +05:45
        "Pacific/Apia",  # skipped 2011-12-30 entirely
        "America/Santiago",  # DST at midnight
        "America/Havana",  # repeated midnight
        "Pacific/Kiritimati",  # +14:00
    ]
)
INSTANTS = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)


@given(INSTANTS, ZONES, st.integers(1, 28))
@PROPERTY
def test_period_containing_contains_and_chains(
    instant: datetime, timezone: str, billing_day: int
) -> None:
    period = period_containing(instant, timezone, billing_day)
    assert period.start <= instant < period.end
    assert period_named(period.name, timezone, billing_day) == period
    following = next_period(period, timezone, billing_day)
    assert following.start == period.end
    assert period_containing(period.end, timezone, billing_day) == following
    assert local_date(period.start, timezone).day == billing_day
    assert 28 <= period_days(period, timezone) <= 31


@given(INSTANTS, ZONES, st.integers(1, 28), st.none() | INSTANTS, st.none() | INSTANTS)
@PROPERTY
def test_billed_days_never_exceed_period_days(
    instant: datetime,
    timezone: str,
    billing_day: int,
    started: datetime | None,
    terminated: datetime | None,
) -> None:
    period = period_containing(instant, timezone, billing_day)
    days = billed_days(period, timezone, started, terminated)
    assert 0 <= days <= period_days(period, timezone)
    if started is not None and started < period.start and terminated is None:
        assert days == period_days(period, timezone)
