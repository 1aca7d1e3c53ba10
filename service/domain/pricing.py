"""Pricing of single records: rated quantity, allowance, marginal price and the estimated charge.

Estimates answer "what would this cost now" for AuthorizeSession and RecordResult; they are
informative only. The invoice is computed by `settlement`, which prices the period's whole
chargeable quantity at once, so per-record estimates need not add up to it exactly.
"""

from __future__ import annotations

from service.domain.limits import INT64_MAX
from service.domain.model import UsageRate
from service.domain.money import scaled_tier_price

# Estimates travel in int64 fields; an absurd quantity (2**62 SMS) must not make one
# unrepresentable, so they saturate here. Invoices never use estimates.
MAX_ESTIMATE_MICROS = INT64_MAX


def allowance(rate: UsageRate, billed_sims_on_plan: int) -> int:
    """The included quantity a period's usage is priced against: the SIM's own
    `included_quantity`, or for a pooled rate the account's pool, included x the SIMs
    currently billed on the plan."""
    return rate.included_quantity * billed_sims_on_plan if rate.pooled else rate.included_quantity


def rated_quantity(quantity: int, rate: UsageRate | None) -> int:
    """`quantity` rounded up to a multiple of the rate's rounding increment.

    A usage type the plan does not price keeps its raw quantity: it is rated at zero price
    but still counts as usage.
    """
    if quantity < 0:
        raise ValueError(f"quantity must be >= 0, got {quantity}")
    if rate is None:
        return quantity
    increment = rate.rounding_increment
    return -(-quantity // increment) * increment


def estimate_charge(rate: UsageRate | None, used_before: int, quantity: int, included: int) -> int:
    """Estimated micros (half-up to whole micros) of `quantity` more rated units, at most
    MAX_ESTIMATE_MICROS.

    `used_before` is the rated quantity already counted against `included`, the allowance
    available; only the part above the allowance is charged, priced through the tiers at
    the position the chargeable quantity has reached:
    price(max(0, used_before + quantity - included)) - price(max(0, used_before - included)).
    """
    if rate is None or quantity <= 0:
        return 0
    after = used_before + quantity - included
    if after <= 0:
        return 0  # all inside the allowance
    before = used_before - included
    if before < 0:  # (not max(): a builtin call is slow on the ingestion hot path)
        before = 0
    tiers = rate.tiers
    if len(tiers) == 1:  # one flat price (the common plan): no walk through tiers
        scaled = (after - before) * tiers[0].price_micros
    else:
        scaled = scaled_tier_price(after, tiers) - scaled_tier_price(before, tiers)
    # Half-up division of a non-negative integer: (2x + d) // 2d, no Fractions on the hot path.
    unit = rate.unit_quantity
    estimate = (2 * scaled + unit) // (2 * unit)
    return estimate if estimate < MAX_ESTIMATE_MICROS else MAX_ESTIMATE_MICROS


def marginal_price(rate: UsageRate | None, chargeable_so_far: int) -> int:
    """price_micros (per unit_quantity) of the tier that will price the next chargeable unit."""
    if rate is None or not rate.tiers:
        return 0
    for tier in rate.tiers:
        if tier.up_to_quantity == 0 or chargeable_so_far < tier.up_to_quantity:
            return tier.price_micros
    # Past the last bound of a plan without an unbounded tier: priced as the last tier,
    # matching money.price_through_tiers.
    return rate.tiers[-1].price_micros
