"""Usage rating: checking records against the cache, deciding billing start, and applying
committed records to the per-SIM period counters.

The persister worker drives it in three steps per group commit, all under the state lock:

1. `check_all` — each record is answered now (INVALID, UNKNOWN_SIM, ...) or becomes a
                `Candidate` waiting for its commit;
2. `plan_starts` — pure: which SIMs' billing start the new records move (FIRST_USE);
                the persister writes those SIM rows in the same transaction;
3. `apply`    — after the commit: counters, moved billing starts, per-record results.

Nothing here touches the database, so the cache only ever shows committed records.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import structlog

from service.cache import SimUsage, StateCache, UnchargedRecord, UsageCounters
from service.clock import Clock
from service.domain.activation import decide_billing_start, first_use_time
from service.domain.model import (
    Account,
    ActivationMode,
    BillingStartReason,
    Sim,
    SimState,
    UsageRate,
    UsageRecord,
    UsageType,
)
from service.domain.periods import next_period, period_containing
from service.domain.rating import estimate_charge, rated_quantity

log = structlog.get_logger("usage")

MAX_RECORD_ID_LENGTH = 128
MAX_SESSION_ID_LENGTH = 128
FUTURE_TOLERANCE = timedelta(minutes=5)
INT64_MAX = 2**63 - 1


class RecordStatus(enum.IntEnum):
    RATED = 1
    DUPLICATE = 2
    UNKNOWN_SIM = 3
    INVALID = 4
    PERIOD_CLOSED = 5
    BEFORE_PROVISIONING = 6
    AFTER_TERMINATION = 7
    FUTURE_EVENT = 8


RATED = RecordStatus.RATED  # enum member lookups are slow on the hot path


class RecordResult(NamedTuple):
    record_id: str
    status: RecordStatus
    detail: str = ""
    rated_quantity: int = 0
    charged: bool = False
    estimated_charge_micros: int = 0
    started_billing: bool = False


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A record whose fields could not be read; `field` names the culprit."""

    record_id: str
    field: str
    problem: str


class Candidate(NamedTuple):
    """A record that passed every check and waits for its commit."""

    record: UsageRecord
    account_id: str
    period: str
    rated_quantity: int
    rate: UsageRate | None  # the plan's rate for the record's usage type


@dataclass(frozen=True, slots=True)
class UnlessCounted:
    """A record refused because of what happened since it may have been counted (its period
    was settled, its SIM terminated): DUPLICATE if its id was counted before, else `refusal`.
    Ids are the idempotency key forever, so a retry never gets a different answer."""

    refusal: RecordResult


Checked = Candidate | UnlessCounted | RecordResult


class PeriodLookup:
    """period_containing() for many records: remembers each account's recent periods."""

    def __init__(self) -> None:
        # By account id, with the Account the periods were computed for: an updated account
        # (a new object) starts afresh. Hashing the frozen Account itself would be slow.
        self._known: dict[str, tuple[Account, list[tuple[datetime, datetime, str]]]] = {}

    def name(self, account: Account, instant: datetime) -> str:
        entry = self._known.get(account.account_id)
        if entry is None or entry[0] is not account:
            entry = self._known[account.account_id] = (account, [])
        known = entry[1]
        for start, end, name in known:
            if start <= instant < end:
                return name
        period = period_containing(instant, account.timezone, account.billing_day)
        known.append((period.start, period.end, period.name))
        if len(known) > 24:
            del known[0]
        return period.name


class UsageEngine:
    def __init__(self, cache: StateCache, clock: Clock) -> None:
        self._cache = cache
        self._clock = clock
        self.periods = PeriodLookup()
        # Told about a billing start correction refused because it reaches a settled period.
        self.on_correction_rejected: Callable[[Sim, datetime], None] = lambda sim, start: None

    # --- 1. checks ----------------------------------------------------------------------------

    def check_all(self, records: Sequence[UsageRecord | InvalidRecord]) -> list[Checked]:
        """Answer each record now, or make it a Candidate to commit (or UnlessCounted)."""
        cache = self._cache
        sims, accounts, plans, settled = cache.sims, cache.accounts, cache.plans, cache.settled
        period_name = self.periods.name
        latest = self._clock.now() + FUTURE_TOLERANCE
        checked: list[Checked] = []
        append = checked.append
        for record in records:
            if isinstance(record, InvalidRecord):
                append(
                    RecordResult(
                        record.record_id, RecordStatus.INVALID, f"{record.field}: {record.problem}"
                    )
                )
                continue
            record_id, event_time = record.record_id, record.event_time
            sim = sims.get(record.iccid)
            if sim is None:
                append(RecordResult(record_id, RecordStatus.UNKNOWN_SIM, f"iccid {record.iccid!r}"))
            elif event_time > latest:
                append(
                    RecordResult(
                        record_id, RecordStatus.FUTURE_EVENT, "event_time more than 5 minutes ahead"
                    )
                )
            elif event_time < sim.provisioned_at:
                append(
                    RecordResult(
                        record_id,
                        RecordStatus.BEFORE_PROVISIONING,
                        "event_time before provisioned_at",
                    )
                )
            elif sim.terminated_at is not None and event_time >= sim.terminated_at:
                append(
                    UnlessCounted(
                        RecordResult(
                            record_id,
                            RecordStatus.AFTER_TERMINATION,
                            "event_time at or after terminated_at",
                        )
                    )
                )
            else:
                period = period_name(accounts[sim.account_id], event_time)
                if settled and (sim.account_id, period) in settled:
                    append(
                        UnlessCounted(
                            RecordResult(
                                record_id, RecordStatus.PERIOD_CLOSED, f"period {period} is settled"
                            )
                        )
                    )
                    continue
                rate = plans[sim.plan_id].rate_for(record.usage_type)
                rated = rated_quantity(record.quantity, rate)
                if rated > INT64_MAX:
                    append(RecordResult(record_id, RecordStatus.INVALID, "quantity: too large"))
                else:
                    append(Candidate(record, sim.account_id, period, rated, rate))
        return checked

    # --- 2. billing start decisions (pure) ------------------------------------------------------

    def plan_starts(self, candidates: Sequence[Candidate]) -> dict[str, Sim]:
        """SIMs whose billing start the candidates move, with their new state."""
        touched: dict[str, list[Candidate]] = {}
        for candidate in candidates:
            sim = self._cache.sims[candidate.record.iccid]
            if self._cache.plans[sim.plan_id].activation_mode is ActivationMode.FIRST_USE:
                touched.setdefault(sim.iccid, []).append(candidate)
        changed: dict[str, Sim] = {}
        for iccid, new in touched.items():
            sim = self._cache.sims[iccid]
            started = self._decide(sim, new)
            if started is not None:
                changed[iccid] = started
        return changed

    def _decide(self, sim: Sim, new: Sequence[Candidate]) -> Sim | None:
        start = sim.billing_started_at
        early = [
            (c.record.event_time, c.record.usage_type, c.record.quantity)
            for c in new
            if start is None or c.record.event_time < start
        ]
        if not early:
            return None
        plan = self._cache.plans[sim.plan_id]
        known = [
            (u.event_time, u.usage_type, u.quantity)
            for u in self._cache.usage_of(sim.iccid).uncharged
        ]
        first_use = first_use_time(plan.thresholds, [*known, *early])
        decided = decide_billing_start(plan, sim.provisioned_at, first_use, self._clock.now())
        if decided is None or (start is not None and decided[0] >= start):
            return None
        new_start, reason = decided
        if self._reaches_settled_period(sim, new_start):
            self.on_correction_rejected(sim, new_start)
            return None
        return started_sim(sim, new_start, reason)

    def _reaches_settled_period(self, sim: Sim, new_start: datetime) -> bool:
        account = self._cache.accounts[sim.account_id]
        until = sim.billing_started_at or self._clock.now()
        period = period_containing(new_start, account.timezone, account.billing_day)
        while period.start <= until:
            if (sim.account_id, period.name) in self._cache.settled:
                return True
            period = next_period(period, account.timezone, account.billing_day)
        return False

    # --- 3. apply after commit -------------------------------------------------------------------

    def apply(self, candidates: Sequence[Candidate], started: dict[str, Sim]) -> list[RecordResult]:
        """Count committed records and install moved billing starts; one result per candidate."""
        for sim in started.values():
            self.install_start(sim)
        if not started:  # the common case: no billing start moved
            return [self._count(c, None) for c in candidates]
        return [self._count(c, started.get(c.record.iccid)) for c in candidates]

    def install_start(self, sim: Sim) -> None:
        """Install a new (earlier) billing start: uncharged records from it on become charged."""
        usage = self._cache.usage_for_update(sim.iccid)
        plan = self._cache.plans[sim.plan_id]
        start = sim.billing_started_at
        assert start is not None
        still_uncharged = []
        for record in usage.uncharged:
            if record.event_time >= start:
                self._charge(
                    sim,
                    usage.counters(record.period, record.usage_type),
                    record.period,
                    plan.rate_for(record.usage_type),
                    record.quantity,
                    record.rated_quantity,
                )
            else:
                still_uncharged.append(record)
        usage.uncharged = still_uncharged
        self._cache.put_sims([sim])

    def _count(
        self, candidate: Candidate, started: Sim | None, *, estimate: bool = True
    ) -> RecordResult:
        # The ingestion hot path: one call per record, so every lookup is done once, inline.
        record, _, period, rated, rate = candidate
        usage_type, quantity, event_time = record.usage_type, record.quantity, record.event_time
        cache = self._cache
        sim = cache.sims[record.iccid]
        plan = cache.plans[sim.plan_id]
        usage = cache.usage.get(record.iccid)
        if usage is None:
            usage = cache.usage[record.iccid] = SimUsage()
        lifetime = usage.lifetime_raw
        lifetime[usage_type] = lifetime.get(usage_type, 0) + quantity
        by_type = usage.periods.get(period)
        if by_type is None:
            by_type = usage.periods[period] = {}
        counters = by_type.get(usage_type)
        if counters is None:
            counters = by_type[usage_type] = UsageCounters()
        counters.raw_quantity += quantity
        counters.records += 1
        start = sim.billing_started_at
        charged = start is not None and event_time >= start
        charge = 0
        if charged:
            if rate is not None and estimate:
                if rate.pooled:
                    used, included = allowance_position(cache, sim, rate, period)
                else:
                    used, included = counters.charged_rated_quantity, rate.included_quantity
                if used + rated > included:  # else all inside the allowance: no charge
                    charge = estimate_charge(rate, used, rated, included)
            self._charge(sim, counters, period, rate, quantity, rated)
        elif plan.activation_mode is ActivationMode.FIRST_USE:
            usage.uncharged.append(UnchargedRecord(event_time, usage_type, quantity, rated, period))
        started_billing = (
            started is not None
            and started.billing_start_reason is BillingStartReason.FIRST_USE
            and event_time == started.billing_started_at
        )
        return RecordResult(record.record_id, RATED, "", rated, charged, charge, started_billing)

    def _charge(
        self,
        sim: Sim,
        counters: UsageCounters,
        period: str,
        rate: UsageRate | None,
        raw: int,
        rated: int,
    ) -> None:
        counters.charged_rated_quantity += rated
        counters.charged_raw_quantity += raw
        counters.charged_records += 1
        if rate is not None and rate.pooled:
            self._cache.pool_used[(sim.account_id, sim.plan_id, period, rate.usage_type)] += rated

    # --- restart -------------------------------------------------------------------------------

    def rebuild(self, rows: Iterable[tuple[str, int, int, int, datetime, str]]) -> int:
        """Recount committed records (iccid, usage_type, quantity, rated, event_time, period)."""
        count = 0
        for iccid, usage_type, quantity, rated, event_time, period in rows:
            sim = self._cache.sims.get(iccid)
            if sim is None:
                continue
            kind = UsageType(usage_type)
            candidate = Candidate(
                UsageRecord("", iccid, kind, quantity, event_time),
                sim.account_id,
                period,
                rated,
                self._cache.plans[sim.plan_id].rate_for(kind),
            )
            self._count(candidate, None, estimate=False)
            count += 1
        return count


def allowance_position(
    cache: StateCache, sim: Sim, rate: UsageRate, period: str
) -> tuple[int, int]:
    """(charged rated quantity so far, allowance) that a new record of the SIM is priced at.

    Per-SIM allowances: the SIM's own usage against `included_quantity`. Pooled: the
    account's usage on the plan against included x the SIMs currently billed on it.
    """
    if rate.pooled:
        key = (sim.account_id, sim.plan_id)
        used = cache.pool_used.get((*key, period, rate.usage_type), 0)
        return used, rate.included_quantity * cache.started_on_plan[key]
    counters = cache.usage_of(sim.iccid).period(period).get(rate.usage_type)
    return (counters.charged_rated_quantity if counters else 0), rate.included_quantity


def started_sim(sim: Sim, start: datetime, reason: BillingStartReason) -> Sim:
    """The SIM with billing started at `start`; a PROVISIONED SIM becomes ACTIVE."""
    state = SimState.ACTIVE if sim.state is SimState.PROVISIONED else sim.state
    return dataclasses.replace(
        sim, state=state, billing_started_at=start, billing_start_reason=reason
    )
