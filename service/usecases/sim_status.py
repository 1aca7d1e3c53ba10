"""What the API shows about a SIM, assembled from the cache alone (no database)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service.domain.activation import activation_deadline, threshold_progress
from service.domain.model import Sim, UsageType
from service.domain.periods import period_containing
from service.ops.clock import Clock
from service.state.cache import StateCache


@dataclass(frozen=True, slots=True)
class SimView:
    sim: Sim
    activation_deadline: datetime | None
    first_use_progress: list[tuple[UsageType, int, int]]
    current_period: str
    period_usage: list[tuple[UsageType, int]]


def sim_view(cache: StateCache, clock: Clock, iccid: str) -> SimView:
    sim = cache.sim(iccid)
    plan = cache.plan(sim.plan_id)
    account = cache.account(sim.account_id)
    period = period_containing(clock.now(), account.timezone, account.billing_day)
    usage = cache.usage_of(iccid)
    return SimView(
        sim=sim,
        activation_deadline=activation_deadline(plan, sim.provisioned_at),
        first_use_progress=threshold_progress(plan.thresholds, usage.lifetime_raw),
        current_period=period.name,
        period_usage=sorted(
            ((t, c.raw_quantity) for t, c in usage.period(period.name).items()),
            key=lambda pair: pair[0].value,
        ),
    )
