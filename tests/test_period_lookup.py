"""PeriodLookup: the periods ingestion and the session-start reads find for an account,
remembered across calls, with their bounds in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from service.domain.periods import period_containing
from service.state.periods import PeriodLookup
from tests.support.builders import PROPERTY, account_a, utc

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Chatham")

instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


@PROPERTY
@given(
    zone=st.sampled_from(ZONES),
    billing_day=st.integers(1, 28),
    asked=st.lists(instants, min_size=1, max_size=30),
)
def test_the_period_found_is_the_accounts_period_with_its_bounds_in_utc(
    zone: str, billing_day: int, asked: list[datetime]
) -> None:
    account = account_a(timezone=zone, billing_day=billing_day)
    lookup = PeriodLookup()  # one for all the instants: later ones reuse remembered periods
    for instant in asked:
        expected = period_containing(instant, zone, billing_day)
        start, end, name = lookup.find(account, instant)
        assert (start, end, name) == (expected.start, expected.end, expected.name)
        assert start.tzinfo is UTC and end.tzinfo is UTC
        assert lookup.name(account, instant) == expected.name


def test_an_instant_either_side_of_local_midnight_finds_its_own_period() -> None:
    # Berlin's March period starts 2026-03-01 00:00 local, 2026-02-28 23:00 UTC.
    account = account_a(timezone="Europe/Berlin", billing_day=1)
    lookup = PeriodLookup()
    boundary = utc(2026, 2, 28, 23)
    assert lookup.name(account, boundary - timedelta(microseconds=1)) == "2026-02"
    assert lookup.name(account, boundary) == "2026-03"
    assert lookup.name(account, boundary - timedelta(microseconds=1)) == "2026-02"
