"""Rating of single records: rounding up to the increment, marginal price, estimates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.model import Tier
from service.domain.money import price_through_tiers, round_half_up
from service.domain.pricing import estimate_charge, marginal_price, rated_quantity
from tests.support.builders import MIB, PROPERTY, data_rate


def test_worked_example_rated_quantities() -> None:
    rate = data_rate(rounding_increment=1024)
    assert rated_quantity(600_000, rate) == 600_064
    assert rated_quantity(20_971_520, rate) == 20_971_520
    assert rated_quantity(500_000, rate) == 500_736


def test_zero_stays_zero_and_no_rate_keeps_quantity() -> None:
    assert rated_quantity(0, data_rate()) == 0
    assert rated_quantity(1, data_rate()) == 1024
    assert rated_quantity(12_345, None) == 12_345


def test_negative_quantity_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        rated_quantity(-1, data_rate())


@given(st.integers(0, 10**15), st.integers(1, 10**7))
@PROPERTY
def test_rated_quantity_is_the_next_multiple(quantity: int, increment: int) -> None:
    rated = rated_quantity(quantity, data_rate(rounding_increment=increment))
    assert quantity <= rated < quantity + increment
    assert rated % increment == 0


TIERED = data_rate(
    unit_quantity=1,
    tiers=(
        Tier(up_to_quantity=100, price_micros=10),
        Tier(up_to_quantity=200, price_micros=5),
        Tier(up_to_quantity=0, price_micros=1),
    ),
)


@pytest.mark.parametrize(
    ("used_before", "quantity", "included", "estimate"),
    [
        (0, 50, 100, 0),  # inside the allowance
        (80, 50, 100, 30 * 10),  # straddles the end of the allowance
        (100, 10, 0, 10 * 5),  # first tier already used up
        (190, 20, 0, 10 * 5 + 10 * 1),  # crosses into the last tier
        (10, 0, 0, 0),
    ],
)
def test_estimate_charge(used_before: int, quantity: int, included: int, estimate: int) -> None:
    assert estimate_charge(TIERED, used_before, quantity, included) == estimate


def test_estimate_rounds_half_up_to_whole_micros() -> None:
    rate = data_rate(unit_quantity=2, tiers=(Tier(up_to_quantity=0, price_micros=1),))
    assert estimate_charge(rate, 0, 1, 0) == 1  # half a micro
    assert estimate_charge(rate, 0, 2, 0) == 1


def test_worked_example_estimate() -> None:
    # SIM 1's last record: 20,971,520 bytes after 600,064, with 10 MiB included.
    estimate = estimate_charge(data_rate(), 600_064, 20_971_520, 10 * MIB)
    assert estimate == round_half_up(price_through_tiers(11_085_824, MIB, data_rate().tiers))
    assert estimate == 1_057_227  # 10.5722656... MiB x 100,000 micros


def test_unpriced_usage_is_free() -> None:
    assert estimate_charge(None, 0, 10**9, 0) == 0
    assert marginal_price(None, 0) == 0


@pytest.mark.parametrize(
    ("chargeable_so_far", "price"), [(0, 10), (99, 10), (100, 5), (199, 5), (200, 1), (10**12, 1)]
)
def test_marginal_price_is_the_tier_of_the_next_unit(chargeable_so_far: int, price: int) -> None:
    assert marginal_price(TIERED, chargeable_so_far) == price


def test_marginal_price_past_last_bounded_tier() -> None:
    rate = data_rate(tiers=(Tier(up_to_quantity=10, price_micros=7),))
    assert marginal_price(rate, 50) == 7


@given(
    st.lists(st.integers(0, 500), max_size=20),
    st.integers(0, 300),
)
@PROPERTY
def test_successive_estimates_add_up_to_the_period_price(
    quantities: list[int], included: int
) -> None:
    used = 0
    estimates = 0
    for quantity in quantities:
        estimates += estimate_charge(TIERED, used, quantity, included)
        used += quantity
    whole = price_through_tiers(max(0, used - included), 1, TIERED.tiers)
    assert estimates == whole  # integer unit prices: no rounding drift


@PROPERTY
@given(
    st.lists(st.integers(1, 10**9), min_size=0, max_size=3, unique=True),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
    st.integers(1, 10**7),
    st.integers(0, 10**10),
    st.integers(0, 10**10),
    st.integers(0, 10**10),
)
def test_estimate_is_the_half_up_difference_of_exact_tier_prices(
    bounds: list[int], prices: list[int], unit: int, used: int, quantity: int, included: int
) -> None:
    """The integer fast paths (one flat tier, scaled prices) equal the Fraction reference."""
    tiers = tuple(Tier(b, p) for b, p in zip(sorted(bounds), prices, strict=False))
    tiers = (*tiers, Tier(0, prices[-1]))[: max(1, min(len(prices), len(bounds) + 1))]
    rate = data_rate(unit_quantity=unit, tiers=tiers)
    after, before = max(0, used + quantity - included), max(0, used - included)
    reference = round_half_up(
        price_through_tiers(after, unit, tiers) - price_through_tiers(before, unit, tiers)
    )
    assert estimate_charge(rate, used, quantity, included) == (reference if quantity else 0)
