"""ICCID syntax: 19-20 ASCII digits, prefix 89, Luhn check digit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.iccid import iccid_problem, luhn_check_digit, make_iccid
from tests.support.builders import PROPERTY


def passes_luhn(number: str) -> bool:
    """The classic whole-number Luhn check, written independently of the module."""
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


def test_known_luhn_digits() -> None:
    assert luhn_check_digit("7992739871") == 3  # the textbook Luhn example
    assert luhn_check_digit("89" + "0" * 16) == 3


def test_make_iccid_builds_valid_19_digit_ids() -> None:
    assert make_iccid(0) == "8900000000000000003"
    assert make_iccid(1)[:18] == "890000000000000001"
    assert len(make_iccid(10**16 - 1)) == 19
    assert iccid_problem(make_iccid(1)) is None


def test_valid_20_digit_iccid() -> None:
    assert iccid_problem("89014103211118510720") is None  # a published carrier ICCID


@pytest.mark.parametrize(
    ("iccid", "problem"),
    [
        ("", "must be 19 or 20 digits"),
        ("894450010219830482", "must be 19 or 20 digits"),  # 18 digits
        ("894450010219830482612", "must be 19 or 20 digits"),  # 21 digits
        ("89445001021983048A6", "must be 19 or 20 digits"),
        ("8944500102198304826 ", "must be 19 or 20 digits"),
        ("٨٩44500102198304826", "must be 19 or 20 digits"),  # non-ASCII digits
        ("1944500102198304826", "must start with 89"),
        ("9801410321111851072", "must start with 89"),
    ],
)
def test_malformed_iccids(iccid: str, problem: str) -> None:
    assert iccid_problem(iccid) == problem


def test_luhn_mismatch() -> None:
    good = make_iccid(42)
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    assert iccid_problem(bad) == "Luhn check digit mismatch"


@pytest.mark.parametrize("n", [-1, 10**16])
def test_make_iccid_range(n: int) -> None:
    with pytest.raises(ValueError):
        make_iccid(n)


@given(st.integers(0, 10**16 - 1), st.integers(1, 9))
@PROPERTY
def test_every_built_iccid_is_valid_and_any_other_check_digit_is_not(n: int, delta: int) -> None:
    iccid = make_iccid(n)
    assert iccid_problem(iccid) is None
    assert passes_luhn(iccid)
    wrong = iccid[:-1] + str((int(iccid[-1]) + delta) % 10)
    assert iccid_problem(wrong) == "Luhn check digit mismatch"
