"""What the API shows about a SIM, assembled from the cache alone (no database)."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from service.domain.activation import activation_deadline, threshold_progress
from service.domain.model import Sim, UsageType
from service.domain.periods import period_containing
from service.ops.clock import Clock
from service.ops.hotpath import positional
from service.state.cache import StateCache
from service.state.periods import PeriodLookup


class SimView(NamedTuple):  # built at every GetSimStatus: cheaper than a frozen dataclass
    sim: Sim
    activation_deadline: datetime | None
    first_use_progress: list[tuple[UsageType, int, int]]
    current_period: str
    period_usage: list[tuple[UsageType, int]]


def sim_view(
    cache: StateCache, clock: Clock, iccid: str, periods: PeriodLookup | None = None
) -> SimView:
    """`periods`, if given, remembers the accounts' periods across calls (a hot caller's:
    computing a period from the account's time zone costs more than the rest of the view)."""
    sim, usage = cache.sim_and_usage(iccid)
    if sim is None:
        sim = cache.sim(iccid)  # raises NotFound
    plan = cache.plans[sim.plan_id]  # a SIM's plan and account are always in the cache
    account = cache.accounts[sim.account_id]
    now = clock.now()
    if periods is not None:
        period_name = periods.name(account, now)
    else:
        period_name = period_containing(now, account.timezone, account.billing_day).name
    # hotpath: positional construction (sim, activation_deadline, first_use_progress,
    # current_period, period_usage).
    return positional(
        SimView,
        (
            sim,
            activation_deadline(plan, sim.provisioned_at),
            # lifetime_raw adds up every period the SIM has: only when there is a threshold.
            threshold_progress(plan.thresholds, usage.lifetime_raw) if plan.thresholds else [],
            period_name,
            _by_usage_type([(c.usage_type, c.raw_quantity) for c in usage.in_period(period_name)]),
        ),
    )


def _by_usage_type(pairs: list[tuple[UsageType, int]]) -> list[tuple[UsageType, int]]:
    """In the usage types' numbers' order (`_value_`: Enum's `.value` is a slower property)."""
    if len(pairs) > 1:
        pairs.sort(key=lambda pair: pair[0]._value_)
    return pairs
