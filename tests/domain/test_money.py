"""Money: ISO 4217 minor units, one half-up rounding per line, graduated tier pricing."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.model import Tier
from service.domain.money import (
    MINOR_UNITS,
    format_micros,
    is_currency,
    minor_unit_micros,
    price_through_tiers,
    round_line,
)
from tests.support.builders import MIB, PROPERTY


@pytest.mark.parametrize(
    ("code", "digits"),
    [
        *[("EUR", 2), ("USD", 2), ("GBP", 2), ("CHF", 2)],
        *[("JPY", 0), ("KRW", 0), ("CLP", 0), ("ISK", 0), ("VND", 0), ("XAF", 0), ("XOF", 0)],
        *[("UGX", 0), ("PYG", 0)],
        *[("BHD", 3), ("JOD", 3), ("KWD", 3), ("OMR", 3), ("TND", 3), ("IQD", 3), ("LYD", 3)],
        ("CLF", 4),
    ],
)
def test_minor_units_follow_iso_4217(code: str, digits: int) -> None:
    assert MINOR_UNITS[code] == digits


@pytest.mark.parametrize("code", ["eur", "EURO", "", "XAU", "XTS", "XXX", "HRK", "ABC"])
def test_non_currencies_are_rejected(code: str) -> None:
    assert not is_currency(code)


def test_worked_example_subscription_rounds_once() -> None:
    exact = 2_000_000 * Fraction(27, 31) + 2_000_000 * Fraction(1, 31)  # 1.806451... EUR
    assert round_line(exact, "EUR") == 1_810_000


@pytest.mark.parametrize(
    ("micros", "currency", "rounded"),
    [
        (Fraction(5_000), "EUR", 10_000),  # 0.005 EUR: exactly half a cent goes up
        (Fraction(4_999), "EUR", 0),
        (Fraction(14_999), "EUR", 10_000),
        (Fraction(1_500_000), "JPY", 2_000_000),  # 1.5 JPY: half a yen goes up
        (Fraction(2_499_999), "JPY", 2_000_000),
        (Fraction(2_500_000), "JPY", 3_000_000),
        (Fraction(500), "BHD", 1_000),  # 0.0005 BHD: half a fils goes up
        (Fraction(1_234_499), "BHD", 1_234_000),
        (Fraction(1_234_500), "BHD", 1_235_000),
        (Fraction(1, 3), "EUR", 0),
        (Fraction(-5_000), "EUR", -10_000),  # half away from zero for credits
    ],
)
def test_round_line_half_up_to_minor_unit(micros: Fraction, currency: str, rounded: int) -> None:
    assert round_line(micros, currency) == rounded


def test_round_line_refuses_floats() -> None:
    with pytest.raises(TypeError):
        round_line(0.1, "EUR")  # type: ignore[arg-type]


def test_round_line_rejects_unknown_currency() -> None:
    with pytest.raises(ValueError, match="XYZ"):
        round_line(Fraction(1), "XYZ")


@given(
    st.fractions(min_value=-(10**12), max_value=10**12),
    st.sampled_from(sorted(MINOR_UNITS)),
)
@PROPERTY
def test_round_line_is_nearest_multiple_of_minor_unit(amount: Fraction, currency: str) -> None:
    step = minor_unit_micros(currency)
    rounded = round_line(amount, currency)
    assert rounded % step == 0
    assert abs(rounded - amount) <= Fraction(step, 2)
    if abs(rounded - amount) == Fraction(step, 2):
        assert abs(rounded) > abs(amount)  # an exact half goes away from zero


THREE_TIERS = (
    Tier(up_to_quantity=100, price_micros=1_000),
    Tier(up_to_quantity=300, price_micros=600),
    Tier(up_to_quantity=0, price_micros=250),
)


@pytest.mark.parametrize(
    ("quantity", "micros"),
    [
        (0, 0),
        (50, 50 * 1_000),
        (100, 100 * 1_000),
        (101, 100 * 1_000 + 600),
        (300, 100 * 1_000 + 200 * 600),
        (1_000, 100 * 1_000 + 200 * 600 + 700 * 250),  # crosses all three tiers
    ],
)
def test_three_tiers_are_graduated(quantity: int, micros: int) -> None:
    assert price_through_tiers(quantity, 1, THREE_TIERS) == micros


def test_price_is_per_unit_quantity_and_exact() -> None:
    tiers = (Tier(up_to_quantity=0, price_micros=100_000),)
    price = price_through_tiers(11_085_824, MIB, tiers)
    assert price == Fraction(11_085_824 * 100_000, MIB)  # 10.572... MiB x 0.10 EUR
    assert round_line(price, "EUR") == 1_060_000


def test_unbounded_last_tier_prices_any_quantity() -> None:
    tiers = (Tier(up_to_quantity=10, price_micros=5), Tier(up_to_quantity=0, price_micros=1))
    assert price_through_tiers(10**15, 1, tiers) == 10 * 5 + (10**15 - 10)


def test_quantity_beyond_last_bounded_tier_priced_at_last_tier() -> None:
    tiers = (Tier(up_to_quantity=10, price_micros=5), Tier(up_to_quantity=20, price_micros=3))
    assert price_through_tiers(25, 1, tiers) == 10 * 5 + 15 * 3


def test_no_tiers_price_nothing() -> None:
    assert price_through_tiers(1_000, 1, ()) == 0


tier_lists = st.lists(
    st.tuples(st.integers(1, 10_000), st.integers(0, 10**6)), min_size=0, max_size=4
).map(
    lambda steps: tuple(
        Tier(up_to_quantity=sum(width for width, _ in steps[: i + 1]), price_micros=price)
        for i, (_, price) in enumerate(steps)
    )
)
last_tier = st.integers(0, 10**6).map(lambda price: Tier(up_to_quantity=0, price_micros=price))


@given(
    tier_lists,
    last_tier,
    st.integers(1, MIB),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
)
@PROPERTY
def test_tier_pricing_is_monotonic_and_additive(
    bounded: tuple[Tier, ...], last: Tier, unit: int, a: int, b: int
) -> None:
    tiers = (*bounded, last)
    prices = [tier.price_micros for tier in tiers]
    before, after = price_through_tiers(a, unit, tiers), price_through_tiers(a + b, unit, tiers)
    assert after >= before >= 0
    # The extra b units are priced somewhere between the cheapest and dearest tier.
    assert Fraction(b * min(prices), unit) <= after - before <= Fraction(b * max(prices), unit)


@pytest.mark.parametrize(
    ("micros", "currency", "text"),
    [
        (10_000_000, "EUR", "10.00 EUR"),
        (1_810_000, "EUR", "1.81 EUR"),
        (0, "USD", "0.00 USD"),
        (1_500_000_000, "JPY", "1500 JPY"),
        (1_234_000, "BHD", "1.234 BHD"),
        (-50_000, "EUR", "-0.05 EUR"),
        (1_806_452, "EUR", "1.81 EUR"),
    ],
)
def test_format_micros(micros: int, currency: str, text: str) -> None:
    assert format_micros(micros, currency) == text
