"""AuthorizeSession: may this SIM start a session, and at what price? From memory only."""

from __future__ import annotations

import enum
from typing import NamedTuple

from service.domain.errors import InvalidArgument
from service.domain.model import ActivationMode, SimState, UsageType
from service.domain.pricing import estimate_charge, marginal_price, rated_quantity
from service.ops.clock import Clock
from service.ops.hotpath import positional
from service.state.cache import StateCache
from service.state.periods import PeriodLookup


class DenyReason(enum.Enum):
    UNKNOWN_SIM = 1
    SUSPENDED = 2
    TERMINATED = 3


class Authorization(NamedTuple):
    # A NamedTuple, not a frozen dataclass: built at every call, and a frozen dataclass of
    # nine fields takes ~2.5 us to build (one object.__setattr__ per field), this ~0.5 us.
    allowed: bool
    deny_reason: DenyReason | None = None
    state: SimState | None = None
    billing_started: bool = False
    would_start_billing: bool = False
    price_micros: int = 0
    unit_quantity: int = 0
    remaining_included_quantity: int = 0
    estimated_charge_micros: int = 0


# By SimState number (an int key: a dict keyed by Enum members calls Enum's __hash__ in
# Python at every look-up).
_DENIED_STATES = {
    SimState.SUSPENDED._value_: DenyReason.SUSPENDED,
    SimState.TERMINATED._value_: DenyReason.TERMINATED,
}


def authorize(
    cache: StateCache,
    clock: Clock,
    periods: PeriodLookup,
    iccid: str,
    usage_type: UsageType,
    requested_quantity: int,
) -> Authorization:
    """Answered from the cache alone, thousands of times a second: each object built here
    costs ~0.5 us in the running server (docs/performance.md, "Fifth round")."""
    if not iccid:
        raise InvalidArgument("iccid", "is required")
    if requested_quantity < 0:
        raise InvalidArgument("requested_quantity", "must be >= 0")
    sim, usage = cache.sim_and_usage(iccid)
    if sim is None:
        return Authorization(allowed=False, deny_reason=DenyReason.UNKNOWN_SIM)
    plan = cache.plans[sim.plan_id]
    billing_started = sim.billing_started_at is not None
    would_start = (
        plan.activation_mode is ActivationMode.FIRST_USE
        and not billing_started
        and any(
            t.usage_type is usage_type
            and usage.lifetime_raw.get(usage_type, 0) + requested_quantity >= t.quantity
            for t in plan.thresholds
        )
    )
    rate = plan.rate_for(usage_type)
    price = unit = remaining = estimate = 0
    if rate is not None:
        period = periods.name(cache.accounts[sim.account_id], clock.now())
        used, included = cache.allowance_position(sim, rate, period, usage)
        price = marginal_price(rate, max(0, used - included))
        unit = rate.unit_quantity
        remaining = max(0, included - used)
        if billing_started or would_start:
            estimate = estimate_charge(
                rate, used, rated_quantity(requested_quantity, rate), included
            )
    deny = _DENIED_STATES.get(sim.state._value_)
    return positional(  # hotpath: positional construction
        Authorization,
        (
            deny is None,
            deny,
            sim.state,
            billing_started,
            would_start,
            price,
            unit,
            remaining,
            estimate,
        ),
    )
