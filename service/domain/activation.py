"""Activation: when a SIM's subscription starts (docs/activation.md).

IMMEDIATE plans bill from provisioning. FIRST_USE plans bill from the earlier of first use
(the instant the cumulative raw quantity of a threshold's usage type reaches it) and the
activation deadline (provisioned_at + grace period; no deadline when grace is zero).
Everything here is a pure function of the records known so far, so a late record simply
means calling it again with one more record.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from service.domain.model import (
    ActivationMode,
    BillingStartReason,
    Plan,
    Sim,
    SimState,
    Threshold,
    UsageType,
)


def first_use_time(
    thresholds: Sequence[Threshold], records: Iterable[tuple[datetime, UsageType, int]]
) -> datetime | None:
    """The smallest event time t at which some threshold's usage type has a raw total
    (over records with event_time <= t) of at least the threshold; None if never reached.

    Records at the same instant count together, which makes the answer independent of the
    order in which records arrived or are listed.
    """
    watched = {threshold.usage_type for threshold in thresholds}
    by_type: dict[UsageType, defaultdict[datetime, int]] = {
        usage_type: defaultdict(int) for usage_type in watched
    }
    for event_time, usage_type, quantity in records:
        if usage_type in by_type:
            by_type[usage_type][event_time] += quantity
    earliest: datetime | None = None
    for threshold in thresholds:
        reached = _time_reaching(by_type[threshold.usage_type], threshold.quantity)
        if reached is not None and (earliest is None or reached < earliest):
            earliest = reached
    return earliest


def _time_reaching(quantity_at: Mapping[datetime, int], threshold: int) -> datetime | None:
    total = 0
    for event_time in sorted(quantity_at):
        total += quantity_at[event_time]
        if total >= threshold:
            return event_time
    return None


def activation_deadline(plan: Plan, provisioned_at: datetime) -> datetime | None:
    """provisioned_at + grace for FIRST_USE plans with a grace period; otherwise None."""
    if plan.activation_mode is not ActivationMode.FIRST_USE or plan.grace_period <= timedelta(0):
        return None
    return provisioned_at + plan.grace_period


def decide_billing_start(
    plan: Plan, provisioned_at: datetime, first_use: datetime | None, now: datetime
) -> tuple[datetime, BillingStartReason] | None:
    """Billing start and its reason as known at `now`, or None while it has not started.

    - IMMEDIATE: provisioned_at.
    - FIRST_USE: first use if strictly before the deadline (or there is no deadline).
    - Otherwise the deadline (GRACE_EXPIRED) once now >= deadline: the start is the
      deadline itself, not the moment somebody noticed. A first use exactly at the deadline
      is GRACE_EXPIRED (the deadline takes effect at the deadline); that record is charged
      either way since its event time is not before billing start.
    - A known first use at or after a deadline still in the future (a record up to the
      allowed clock skew ahead of now) also yields the deadline: it is then certain billing
      starts no later than the deadline, and deciding so now keeps the start from moving
      later when the deadline passes.
    """
    if plan.activation_mode is ActivationMode.IMMEDIATE:
        return provisioned_at, BillingStartReason.IMMEDIATE
    deadline = activation_deadline(plan, provisioned_at)
    if first_use is not None and (deadline is None or first_use < deadline):
        return first_use, BillingStartReason.FIRST_USE
    if deadline is not None and (now >= deadline or first_use is not None):
        return deadline, BillingStartReason.GRACE_EXPIRED
    return None


def started_sim(sim: Sim, start: datetime, reason: BillingStartReason) -> Sim:
    """The SIM with billing started at `start`; a PROVISIONED SIM becomes ACTIVE."""
    state = SimState.ACTIVE if sim.state is SimState.PROVISIONED else sim.state
    return dataclasses.replace(
        sim, state=state, billing_started_at=start, billing_start_reason=reason
    )


def is_charged(event_time: datetime, billing_started_at: datetime | None) -> bool:
    """Whether a record is charged: its event time is at or after billing start."""
    return billing_started_at is not None and event_time >= billing_started_at


def threshold_progress(
    thresholds: Sequence[Threshold], raw_by_type: Mapping[UsageType, int]
) -> list[tuple[UsageType, int, int]]:
    """(usage_type, raw quantity so far, threshold) per threshold, in the plan's order.

    The quantity is not capped at the threshold: it is the SIM's raw total of that type.
    """
    return [
        (threshold.usage_type, raw_by_type.get(threshold.usage_type, 0), threshold.quantity)
        for threshold in thresholds
    ]
