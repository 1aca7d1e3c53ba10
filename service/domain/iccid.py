"""ICCID syntax: 19 or 20 ASCII digits, issuer prefix "89" (telecom), Luhn check digit."""

from __future__ import annotations

_DIGITS = frozenset("0123456789")
_PAYLOAD_DIGITS = 16  # make_iccid: "89" + 16 digits + check digit = 19 digits


def luhn_check_digit(payload: str) -> int:
    """The Luhn digit that makes `payload + digit` pass the check."""
    if not payload or not set(payload) <= _DIGITS:
        raise ValueError(f"payload must be ASCII digits, got {payload!r}")
    total = 0
    # The check digit will sit right of the payload, so the payload's last digit is doubled.
    for position, char in enumerate(reversed(payload)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10


def iccid_problem(iccid: str) -> str | None:
    """None for a valid ICCID, else a short reason fit for an INVALID_ICCID result."""
    # str.isdigit() would accept non-ASCII digits such as "٨٩", hence the explicit set.
    if len(iccid) not in (19, 20) or not set(iccid) <= _DIGITS:
        return "must be 19 or 20 digits"
    if not iccid.startswith("89"):
        return "must start with 89"
    if luhn_check_digit(iccid[:-1]) != int(iccid[-1]):
        return "Luhn check digit mismatch"
    return None


def make_iccid(n: int) -> str:
    """The valid 19-digit ICCID "89" + n zero-padded to 16 digits + check digit."""
    if not 0 <= n < 10**_PAYLOAD_DIGITS:
        raise ValueError(f"n must be in [0, 10**{_PAYLOAD_DIGITS}), got {n}")
    payload = f"89{n:0{_PAYLOAD_DIGITS}d}"
    return payload + str(luhn_check_digit(payload))
