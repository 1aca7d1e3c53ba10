"""Money rules: ISO 4217 minor units, the one half-up rounding per line, graduated tiers.

Amounts are integer micros (1/1,000,000 of the currency unit). Rules compute with exact
`Fraction`s of micros and round once, here, when an invoice line is finished.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from types import MappingProxyType

from service.domain.model import Tier

MICROS_PER_UNIT = 1_000_000

# ISO 4217 list one, active currency and fund codes with their minor-unit digits.
# Precious metals, SDR, testing and "no currency" codes (XAU, XDR, XTS, XXX, ...) have no
# minor unit, so nobody can be billed in them and they are left out.
_TWO_DECIMALS = """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN
    BWP BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS
    KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
    MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD
    SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS
    UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG
"""
_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DECIMALS = "CLF UYW"  # unidades de fomento / unidad previsional

MINOR_UNITS: Mapping[str, int] = MappingProxyType(
    {
        **dict.fromkeys(_TWO_DECIMALS.split(), 2),
        **dict.fromkeys(_ZERO_DECIMALS.split(), 0),
        **dict.fromkeys(_THREE_DECIMALS.split(), 3),
        **dict.fromkeys(_FOUR_DECIMALS.split(), 4),
    }
)


def is_currency(code: str) -> bool:
    """True for an active ISO 4217 code, spelled in upper case as the standard does."""
    return code in MINOR_UNITS


def minor_unit_digits(currency: str) -> int:
    """Digits after the decimal point of the currency's minor unit (EUR 2, JPY 0, BHD 3)."""
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        # Accounts and plans are validated on the way in, so this is a programming error.
        raise ValueError(f"unknown currency {currency!r}") from None


def minor_unit_micros(currency: str) -> int:
    """Micros in one minor unit: 10,000 for EUR, 1,000,000 for JPY, 1,000 for BHD."""
    step: int = 10 ** (6 - minor_unit_digits(currency))
    return step


def round_half_up(value: Fraction) -> int:
    """Nearest integer, with exact halves going away from zero (commercial rounding)."""
    magnitude = int(abs(value) + Fraction(1, 2))  # int() truncates a non-negative value
    return magnitude if value >= 0 else -magnitude


def round_line(amount_micros: Fraction | int, currency: str) -> int:
    """Round an exact amount once, half-up, to the currency's minor unit; integer micros.

    Call this exactly once per invoice line: rounding intermediate values would let the
    same usage cost different amounts depending on how it was grouped.
    """
    if not isinstance(amount_micros, Fraction | int):
        # A float has already lost exactness; refuse it rather than round a wrong value.
        raise TypeError(f"amount must be a Fraction or int, got {type(amount_micros).__name__}")
    step = minor_unit_micros(currency)
    return round_half_up(Fraction(amount_micros) / step) * step


def price_through_tiers(quantity: int, unit_quantity: int, tiers: Sequence[Tier]) -> Fraction:
    """Exact price in micros of `quantity` base units priced through graduated tiers.

    Each tier prices the part of the quantity between the previous tier's bound and its own
    `up_to_quantity` (cumulative; 0 = unbounded) at `price_micros` per `unit_quantity`.
    Validated plans always end with an unbounded tier; should one not, the quantity above
    the last bound is priced at the last tier's price rather than given away. No tiers
    price nothing.
    """
    if unit_quantity < 1:
        raise ValueError(f"unit_quantity must be >= 1, got {unit_quantity}")
    return Fraction(scaled_tier_price(quantity, tiers), unit_quantity)


def scaled_tier_price(quantity: int, tiers: Sequence[Tier]) -> int:
    """`price_through_tiers` x unit_quantity: an exact integer (micros x unit_quantity).

    The rating hot path divides it once itself, without building Fractions.
    """
    if quantity < 0:
        raise ValueError(f"quantity must be >= 0, got {quantity}")
    total = 0  # micros x unit_quantity, kept integral until the single division
    lower = 0
    for tier in tiers:
        upper = quantity if tier.up_to_quantity == 0 else min(quantity, tier.up_to_quantity)
        if upper > lower:
            total += (upper - lower) * tier.price_micros
        lower = max(lower, upper)
        if lower >= quantity:
            break
    if lower < quantity and tiers:
        total += (quantity - lower) * tiers[-1].price_micros
    return total


def format_micros(micros: int, currency: str) -> str:
    """Human-readable amount with the currency's minor digits, e.g. "10.00 EUR", "1500 JPY".

    An amount finer than the minor unit is shown rounded half-up; invoice amounts already are.
    """
    digits = minor_unit_digits(currency)
    minor = round_line(Fraction(micros), currency) // minor_unit_micros(currency)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**digits)
    if digits == 0:
        return f"{sign}{whole} {currency}"
    return f"{sign}{whole}.{fraction:0{digits}d} {currency}"
