"""Usage rating: checking records against the cache, deciding billing start, and applying
committed records to the per-SIM period counters.

The persister worker drives it in three steps:

1. `check_all` — each record is answered now (INVALID, UNKNOWN_SIM, ...) or becomes a
                `Candidate` waiting for its commit. Done when a batch arrives, and again
                under the state lock if the cache changed since (`state_version`);
2. `plan_starts` — pure: which SIMs' billing start the new records move (FIRST_USE);
                the persister writes those SIM rows in the same transaction;
3. `apply` (`install_starts` + `count`) — after the commit: moved billing starts,
                counters, per-record results.

Nothing here touches the database, so the cache only ever shows committed records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

import structlog

from service.domain.activation import (
    decide_billing_start,
    first_use_time,
    is_charged,
    started_sim,
)
from service.domain.limits import CLOCK_SKEW_TOLERANCE, INT64_MAX
from service.domain.model import (
    USAGE_TYPES_BY_VALUE,
    Account,
    ActivationMode,
    BillingStartReason,
    Plan,
    Sim,
    UsageRate,
    UsageRecord,
    UsageType,
)
from service.domain.periods import next_period, period_containing
from service.domain.pricing import estimate_charge, rated_quantity
from service.ingestion.records import (
    RATED,
    Candidate,
    Checked,
    InvalidRecord,
    RecordResult,
    RecordStatus,
    UnlessCounted,
)
from service.ops.clock import Clock
from service.ops.hotpath import positional
from service.state.cache import StateCache, UnchargedRecord, UsageCounters
from service.state.periods import PeriodLookup
from service.storage.usage_state import UnchargedRow

log = structlog.get_logger("usage")

_FUTURE_DETAIL = (
    f"event_time more than {CLOCK_SKEW_TOLERANCE // timedelta(minutes=1)} minutes ahead"
)


def _ignore_rejected(sim: Sim, start: datetime) -> None:
    pass


class UsageEngine:
    def __init__(
        self,
        cache: StateCache,
        clock: Clock,
        *,
        on_correction_rejected: Callable[[Sim, datetime], None] = _ignore_rejected,
    ) -> None:
        self._cache = cache
        self._clock = clock
        self.periods = PeriodLookup()
        # Told about a billing start correction refused because it reaches a settled period.
        self._on_correction_rejected = on_correction_rejected

    # --- 1. checks ----------------------------------------------------------------------------

    @property
    def state_version(self) -> int:
        """The cache version checks are made at (see StateCache.version)."""
        return self._cache.version

    def check_all(self, records: Sequence[UsageRecord | InvalidRecord]) -> list[Checked]:
        """Answer each record now, or make it a Candidate to commit (or UnlessCounted)."""
        cache = self._cache
        sims, accounts, plans, settled = cache.sims, cache.accounts, cache.plans, cache.settled
        find_period = self.periods.find
        now = self._clock.now()
        latest = now + CLOCK_SKEW_TOLERANCE
        new = positional
        # The ingestion hot path. Records of a batch mostly share an account period and a
        # plan rate: the last ones found are tried first, with identity tests only.
        last_account: Account | None = None
        period_start = period_end = now
        period = ""
        last_plan: Plan | None = None
        last_type: UsageType | None = None
        rate: UsageRate | None = None
        checked: list[Checked] = []
        append = checked.append
        for record in records:
            if type(record) is InvalidRecord:
                append(
                    RecordResult(
                        record.record_id, RecordStatus.INVALID, f"{record.field}: {record.problem}"
                    )
                )
                continue
            record_id, iccid, usage_type, quantity, event_time, session_id = record  # type: ignore[misc]
            sim = sims.get(iccid)
            if sim is None:
                append(RecordResult(record_id, RecordStatus.UNKNOWN_SIM, f"iccid {iccid!r}"))
                continue
            if event_time > latest:
                append(RecordResult(record_id, RecordStatus.FUTURE_EVENT, _FUTURE_DETAIL))
                continue
            if event_time < sim.provisioned_at:
                append(
                    RecordResult(
                        record_id,
                        RecordStatus.BEFORE_PROVISIONING,
                        "event_time before provisioned_at",
                    )
                )
                continue
            account = accounts[sim.account_id]
            if account is not last_account or not period_start <= event_time < period_end:
                period_start, period_end, period = find_period(account, event_time)
                last_account = account
            if sim.terminated_at is not None and event_time >= sim.terminated_at:
                append(
                    UnlessCounted(
                        RecordResult(
                            record_id,
                            RecordStatus.AFTER_TERMINATION,
                            "event_time at or after terminated_at",
                        ),
                        period,
                    )
                )
                continue
            if settled and (sim.account_id, period) in settled:
                append(
                    UnlessCounted(
                        RecordResult(
                            record_id, RecordStatus.PERIOD_CLOSED, f"period {period} is settled"
                        ),
                        period,
                    )
                )
                continue
            plan = plans[sim.plan_id]
            if plan is not last_plan or usage_type is not last_type:
                rate = plan.rate_for(usage_type)
                last_plan, last_type = plan, usage_type
            rated = rated_quantity(quantity, rate)
            if rated > INT64_MAX:
                append(RecordResult(record_id, RecordStatus.INVALID, "quantity: too large"))
                continue
            row = (
                record_id,
                iccid,
                usage_type,
                quantity,
                rated,
                event_time,
                session_id,
                period,
            )
            append(new(Candidate, row))  # hotpath: positional construction
        return checked

    # --- 2. billing start decisions (pure) ------------------------------------------------------

    def plan_starts(self, candidates: Sequence[Candidate]) -> dict[str, Sim]:
        """SIMs whose billing start the candidates move, with their new state."""
        cache = self._cache
        if not cache.first_use_plans:
            return {}  # billing starts move only on FIRST_USE plans
        sims, first_use_plans = cache.sims, cache.first_use_plans
        touched: dict[str, list[Candidate]] = {}
        for candidate in candidates:
            sim = sims[candidate.iccid]
            if sim.plan_id in first_use_plans:
                start = sim.billing_started_at
                if start is None or candidate.event_time < start:
                    touched.setdefault(sim.iccid, []).append(candidate)
        changed: dict[str, Sim] = {}
        for iccid, early in touched.items():
            started = self._decide(sims[iccid], early)
            if started is not None:
                changed[iccid] = started
        return changed

    def _decide(self, sim: Sim, early: Sequence[Candidate]) -> Sim | None:
        """The SIM with an earlier billing start, if `early` (records before its current start,
        if any) move it."""
        start = sim.billing_started_at
        plan = self._cache.plans[sim.plan_id]
        known = [
            (u.event_time, u.usage_type, u.quantity)
            for u in self._cache.usage_of(sim.iccid).uncharged
        ]
        new = [(c.event_time, c.usage_type, c.quantity) for c in early]
        first_use = first_use_time(plan.thresholds, [*known, *new])
        decided = decide_billing_start(plan, sim.provisioned_at, first_use, self._clock.now())
        if decided is None or (start is not None and decided[0] >= start):
            return None
        new_start, reason = decided
        if self._reaches_settled_period(sim, new_start):
            self._on_correction_rejected(sim, new_start)
            return None
        return started_sim(sim, new_start, reason)

    def _reaches_settled_period(self, sim: Sim, new_start: datetime) -> bool:
        """Whether moving billing start to `new_start` changes a settled period.

        The move changes [new_start, old start) (up to now if billing had not started: no
        later period can be settled). Periods are half-open too, so a settled period that
        starts at the old start is not reached.
        """
        account = self._cache.accounts[sim.account_id]
        until = sim.billing_started_at or self._clock.now()
        period = period_containing(new_start, account.timezone, account.billing_day)
        while period.start < until:
            if (sim.account_id, period.name) in self._cache.settled:
                return True
            period = next_period(period, account.timezone, account.billing_day)
        return False

    def uncharged_of(
        self, candidates: Iterable[Candidate], started: dict[str, Sim]
    ) -> list[UnchargedRow]:
        """The new records `count` will keep as uncharged (with the `started` billing starts
        installed): those before billing start of SIMs on FIRST_USE plans."""
        sims, first_use_plans = self._cache.sims, self._cache.first_use_plans
        if not first_use_plans:
            return []
        uncharged: list[UnchargedRow] = []
        for _, iccid, usage_type, quantity, rated, event_time, _, period in candidates:
            sim = (started.get(iccid) if started else None) or sims[iccid]
            if sim.plan_id in first_use_plans and not is_charged(
                event_time, sim.billing_started_at
            ):
                uncharged.append((iccid, event_time, usage_type, quantity, rated, period))
        return uncharged

    # --- 3. apply after commit -------------------------------------------------------------------

    def apply(self, candidates: Sequence[Candidate], started: dict[str, Sim]) -> list[RecordResult]:
        """Count committed records and install moved billing starts; one result per candidate."""
        self.install_starts(started)
        return self.count(candidates, started)

    def install_starts(self, started: dict[str, Sim]) -> None:
        for sim in started.values():
            self.install_start(sim)

    def count(self, candidates: Sequence[Candidate], started: dict[str, Sim]) -> list[RecordResult]:
        """Count committed records (after install_starts of the `started` their group moved);
        one result per candidate. A group may be counted in several calls, in order."""
        return self._count(candidates, started, estimate=True)

    def install_start(self, sim: Sim) -> None:
        """Install a new (earlier) billing start: uncharged records from it on become charged."""
        self._charge_from_start(sim)
        self._cache.mark_started(sim.iccid)
        self._cache.put_sims([sim])

    def _charge_from_start(self, sim: Sim) -> int:
        """Charge the SIM's uncharged records at or after its billing start; how many."""
        usage = self._cache.usage_for_update(sim.iccid)
        plan = self._cache.plans[sim.plan_id]
        start = sim.billing_started_at
        assert start is not None
        still_uncharged = []
        for record in usage.uncharged:
            if is_charged(record.event_time, start):
                self._charge(
                    sim,
                    usage.counters_for(record.period, record.usage_type),
                    record.period,
                    plan.rate_for(record.usage_type),
                    record.quantity,
                    record.rated_quantity,
                )
            else:
                still_uncharged.append(record)
        charged = len(usage.uncharged) - len(still_uncharged)
        if charged:
            usage.uncharged = still_uncharged or ()
            self._cache.mark_dirty(sim.iccid)
        return charged

    def _count(
        self, candidates: Iterable[Candidate], started: dict[str, Sim], *, estimate: bool
    ) -> list[RecordResult]:
        # The ingestion hot path: one loop for the group, every lookup done once, inline.
        cache = self._cache
        plans, usage_by_sim = cache.plans, cache.usage
        mark_dirty, add_pool_usage = cache.dirty_marker(), cache.add_pool_usage
        first_use, first_use_start = ActivationMode.FIRST_USE, BillingStartReason.FIRST_USE
        new = positional
        last_plan: Plan | None = None
        last_type: UsageType | None = None
        rate: UsageRate | None = None
        results: list[RecordResult] = []
        append = results.append
        for record_id, iccid, usage_type, quantity, rated, event_time, _, period in candidates:
            usage = usage_by_sim.get(iccid)
            if usage is None:
                usage = cache.usage_for_update(iccid)
            sim: Sim = usage.sim  # type: ignore[assignment]  # set in every stored SimUsage
            # The SIM's own ICCID string: the record's goes away with the record.
            mark_dirty(sim.iccid)
            plan = plans[sim.plan_id]
            if plan is not last_plan or usage_type is not last_type:
                rate = plan.rate_for(usage_type)
                last_plan, last_type = plan, usage_type
            for counters in usage.counters:  # hotpath: inlined SimUsage.counters_for
                if counters.usage_type is usage_type and counters.period == period:
                    break
            else:
                counters = usage.counters_for(period, usage_type)
            counters.raw_quantity += quantity
            counters.records += 1
            start = sim.billing_started_at
            charge = 0
            if is_charged(event_time, start):
                charged = True
                if rate is None:
                    pass  # not priced: counted as charged usage at no price
                elif rate.pooled:
                    if estimate:
                        used, included = cache.allowance_position(sim, rate, period)
                        if used + rated > included:  # else all inside the allowance
                            charge = estimate_charge(rate, used, rated, included)
                    add_pool_usage(sim.account_id, sim.plan_id, period, usage_type, rated)
                elif estimate:
                    used, included = counters.charged_rated_quantity, rate.included_quantity
                    if used + rated > included:
                        charge = estimate_charge(rate, used, rated, included)
                counters.charged_rated_quantity += rated
            else:
                charged = False
                counters.uncharged_raw_quantity += quantity
                counters.uncharged_records += 1
                if plan.activation_mode is first_use:
                    usage.add_uncharged(
                        UnchargedRecord(event_time, usage_type, quantity, rated, period)
                    )
            moved = started.get(iccid) if started else None
            started_billing = (
                moved is not None
                and moved.billing_start_reason is first_use_start
                and event_time == moved.billing_started_at
            )
            result = (record_id, RATED, "", rated, charged, charge, started_billing)
            append(new(RecordResult, result))  # hotpath: positional construction
        return results

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
        counters.uncharged_raw_quantity -= raw
        counters.uncharged_records -= 1
        if rate is not None and rate.pooled:
            self._cache.add_pool_usage(sim.account_id, sim.plan_id, period, rate.usage_type, rated)

    # --- restart -------------------------------------------------------------------------------

    def charge_restored_uncharged(self) -> int:
        """At start, after the checkpoint's state is loaded: the loaded uncharged records
        that the SIMs' current billing starts charge become charged (a start only moves
        earlier, so installing the current one again is exact). Returns how many."""
        charged = 0
        for iccid, usage in self._cache.usage.items():
            if not usage.uncharged:  # most SIMs: nothing before their billing start
                continue
            sim = self._cache.sims[iccid]
            if sim.billing_started_at is not None:
                if count := self._charge_from_start(sim):
                    self._cache.mark_started(sim.iccid)
                    charged += count
        return charged

    def replay(self, rows: Iterable[tuple[str, int, int, int, datetime, str]]) -> int:
        """Count committed records (iccid, usage_type, quantity, rated, event_time, period)
        with the SIMs' current billing starts, as the counting after their commit did.
        Returns how many."""
        kinds = USAGE_TYPES_BY_VALUE
        candidates = [
            Candidate("", iccid, kinds[kind], quantity, rated, event_time, "", period)
            for iccid, kind, quantity, rated, event_time, period in rows
        ]
        self._count(candidates, {}, estimate=False)
        return len(candidates)
