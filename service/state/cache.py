"""The in-memory state cache: plans, accounts, SIMs and open-period usage counters.

Loaded from PostgreSQL at start; afterwards changed only after the matching commit, so
what the cache shows is always what the database holds. The gRPC layer reads it and
never the database for status and authorization calls.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter

from service.domain.errors import NotFound
from service.domain.model import (
    USAGE_TYPES_BY_VALUE,
    Account,
    ActivationMode,
    Plan,
    Sim,
    SimPeriodFacts,
    SimState,
    SimUsageFacts,
    UsageRate,
    UsageType,
)
from service.domain.pricing import allowance


@dataclass(slots=True)
class UsageCounters:
    """Running totals of one SIM, one period, one usage type.

    Uncharged quantities are kept rather than charged ones: most SIMs have every record
    charged, so those two stay the shared int 0 (a charged total would be one more int
    object of 28-32 bytes each) and counting a charged record updates three fields."""

    period: str
    usage_type: UsageType
    raw_quantity: int = 0
    charged_rated_quantity: int = 0
    uncharged_raw_quantity: int = 0
    records: int = 0
    uncharged_records: int = 0

    @property
    def charged_raw_quantity(self) -> int:
        return self.raw_quantity - self.uncharged_raw_quantity

    @property
    def charged_records(self) -> int:
        return self.records - self.uncharged_records

    def facts(self) -> SimUsageFacts:
        return SimUsageFacts(
            raw_quantity=self.raw_quantity,
            charged_rated_quantity=self.charged_rated_quantity,
            charged_raw_quantity=self.charged_raw_quantity,
            records=self.records,
            charged_records=self.charged_records,
        )


@dataclass(frozen=True, slots=True)
class UnchargedRecord:
    """A record before billing start, kept while a late record can still move the start."""

    event_time: datetime
    usage_type: UsageType
    quantity: int
    rated_quantity: int
    period: str


@dataclass(slots=True)
class SimUsage:
    """A SIM's usage in memory. Compact (docs/storage.md, Memory): a million of them."""

    # The SIM as the cache holds it now (put_sims keeps it current): counting a record
    # finds both with one look-up. None only in the shared empty value of usage_of().
    sim: Sim | None = None
    # One UsageCounters per (period, usage type) in memory: a SIM has a few (its open
    # periods times the types it used), so a tuple scanned in order costs less memory than
    # dicts by period and type, and no more time.
    counters: tuple[UsageCounters, ...] = ()
    # Records before billing start (FIRST_USE plans): a list once there is one.
    uncharged: list[UnchargedRecord] | tuple[()] = ()
    # Raw quantity per usage type of the SIM's settled periods (no longer in `counters`):
    # (usage type, raw) pairs, as a dict costs 224 bytes for one type and these pairs 104.
    # Held only for a SIM whose plan has first-use thresholds: only they read
    # `lifetime_raw` (threshold progress, first-use detection), and a SIM's plan, like a
    # plan's thresholds, never changes. PostgreSQL holds every SIM's (sim_settled_usage).
    settled_raw: tuple[tuple[UsageType, int], ...] = ()

    @property
    def lifetime_raw(self) -> dict[UsageType, int]:
        """Raw quantity per usage type over the SIM's life: settled and open periods (for a
        SIM on a plan with thresholds; open periods only for another)."""
        totals: dict[UsageType, int] = dict(self.settled_raw)
        for c in self.counters:
            totals[c.usage_type] = totals.get(c.usage_type, 0) + c.raw_quantity
        return totals

    @property
    def periods(self) -> dict[str, dict[UsageType, UsageCounters]]:
        """The counters by period and usage type (a new dict: for reports and tests)."""
        periods: dict[str, dict[UsageType, UsageCounters]] = {}
        for c in self.counters:
            periods.setdefault(c.period, {})[c.usage_type] = c
        return periods

    def period_count(self) -> int:
        """How many periods the SIM has counters of."""
        counters = self.counters
        return len(counters) if len(counters) < 2 else len({c.period for c in counters})

    def in_period(self, name: str) -> list[UsageCounters]:
        """The counters of one period, one per usage type."""
        return [c for c in self.counters if c.period == name]

    def period(self, name: str) -> dict[UsageType, UsageCounters]:
        return {c.usage_type: c for c in self.in_period(name)}

    def find(self, period: str, usage_type: UsageType) -> UsageCounters | None:
        for c in self.counters:
            if c.usage_type is usage_type and c.period == period:
                return c
        return None

    def counters_for(self, period: str, usage_type: UsageType) -> UsageCounters:
        """The counters of (period, usage type), created if missing."""
        counters = self.find(period, usage_type)
        if counters is None:
            # One string object per period name, however the name was read or decoded.
            counters = UsageCounters(sys.intern(period), usage_type)
            self.counters = (*self.counters, counters)
        return counters

    def add_uncharged(self, record: UnchargedRecord) -> None:
        if isinstance(self.uncharged, list):
            self.uncharged.append(record)
        else:
            self.uncharged = [record]

    def drop_period(self, name: str) -> tuple[UsageCounters, ...]:
        """Remove the counters of one period; returns them."""
        dropped = tuple(self.in_period(name))
        if dropped:
            self.counters = tuple(c for c in self.counters if c.period != name)
        return dropped


_NO_USAGE = SimUsage()


class StateCache:
    def __init__(self) -> None:
        self.plans: dict[str, Plan] = {}
        self.first_use_plans: set[str] = set()  # ids of the plans that bill on first use
        self.accounts: dict[str, Account] = {}
        self.sims: dict[str, Sim] = {}
        # In provisioning order; a list: a set would cost ~50 bytes more per SIM.
        self.sims_by_account: defaultdict[str, list[str]] = defaultdict(list)
        self.state_counts: Counter[SimState] = Counter()
        self.usage: dict[str, SimUsage] = {}
        self.settled: set[tuple[str, str]] = set()  # (account_id, period) with an invoice
        # Pooled allowances: charged rated quantity per (account, plan, period, usage type)
        # (changed through add_pool_usage), and the SIMs per (account, plan) whose billing
        # has started and not ended.
        self._pool_used: defaultdict[tuple[str, str, str, UsageType], int] = defaultdict(int)
        self.started_on_plan: Counter[tuple[str, str]] = Counter()
        # Bumped by every change that can alter how a usage record is checked (plans,
        # accounts, SIMs, settled periods): a check made at an older version is redone.
        self.version = 0
        # Called with (previous or None, new) after every SIM change is installed.
        self.sim_listeners: list[Callable[[Sim | None, Sim], None]] = []
        # Since the last checkpoint (workers.checkpoint): the SIMs whose counters changed,
        # and those whose billing start was installed (their stored uncharged records from
        # it on are charged now). Changed only through mark_dirty, mark_started,
        # take_marks and mark_again.
        self._dirty: set[str] = set()
        self._new_starts: set[str] = set()

    # --- reads -----------------------------------------------------------------------------

    def plan(self, plan_id: str) -> Plan:
        try:
            return self.plans[plan_id]
        except KeyError:
            raise NotFound(f"plan {plan_id!r} not found") from None

    def account(self, account_id: str) -> Account:
        try:
            return self.accounts[account_id]
        except KeyError:
            raise NotFound(f"account {account_id!r} not found") from None

    def sim(self, iccid: str) -> Sim:
        try:
            return self.sims[iccid]
        except KeyError:
            raise NotFound(f"SIM {iccid!r} not found") from None

    def allowance_position(
        self, sim: Sim, rate: UsageRate, period: str, usage: SimUsage | None = None
    ) -> tuple[int, int]:
        """(charged rated quantity so far, allowance) a new record of the SIM is priced at:
        the SIM's own usage (`usage`, if the caller has it already), or for a pooled rate
        the account's usage on the plan, against `domain.pricing.allowance`."""
        if rate.pooled:
            key = (sim.account_id, sim.plan_id)
            used = self._pool_used.get((*key, period, rate.usage_type), 0)
            return used, allowance(rate, self.started_on_plan[key])
        if usage is None:
            usage = self.usage_of(sim.iccid)
        counters = usage.find(period, rate.usage_type)
        return (counters.charged_rated_quantity if counters else 0), allowance(rate, 1)

    def sim_and_usage(self, iccid: str) -> tuple[Sim | None, SimUsage]:
        """The SIM (None if unknown) and its usage (read-only, as `usage_of`), with one
        look-up when it has usage (`SimUsage.sim` is kept current): a look-up in a dict of
        a million SIMs misses the CPU caches several times, ~1.5 us of a session-start
        read (docs/performance.md)."""
        usage = self.usage.get(iccid)
        if usage is not None:
            return usage.sim, usage
        return self.sims.get(iccid), _NO_USAGE

    def usage_of(self, iccid: str) -> SimUsage:
        """The SIM's usage (read-only: a shared empty value when it has none)."""
        return self.usage.get(iccid, _NO_USAGE)

    def usage_for_update(self, iccid: str) -> SimUsage:
        usage = self.usage.get(iccid)
        if usage is None:
            sim = self.sims[iccid]
            # Keyed by the SIM's own ICCID string: the caller's (a record's, a row's) is
            # another object of ~70 bytes that would live as long as the SIM.
            usage = self.usage[sim.iccid] = SimUsage(sim)
        return usage

    def period_facts(self, account_id: str, period: str) -> list[SimPeriodFacts]:
        """What settlement needs of every SIM of the account for one period."""
        facts = []
        for iccid in self.sims_by_account.get(account_id, ()):
            sim = self.sims[iccid]
            counters = self.usage_of(iccid).in_period(period)
            facts.append(
                SimPeriodFacts(
                    iccid=iccid,
                    plan_id=sim.plan_id,
                    billing_started_at=sim.billing_started_at,
                    terminated_at=sim.terminated_at,
                    usage={c.usage_type: c.facts() for c in counters},
                )
            )
        return facts

    def usage_rows(
        self, iccids: Iterable[str], period: str | None = None
    ) -> list[tuple[str, str, int, int, int, int, int, int]]:
        """The counters of the SIMs' periods in memory (of `period` only, if given) as rows
        (period, iccid, usage type value, raw, charged raw, charged rated, records,
        charged records): what usage_aggregates stores."""
        rows = []
        usage_by_sim = self.usage
        for iccid in iccids:
            usage = usage_by_sim.get(iccid)
            if usage is None:
                continue
            for c in usage.counters:
                if period is None or c.period == period:
                    rows.append(
                        (
                            c.period,
                            iccid,
                            c.usage_type.value,
                            c.raw_quantity,
                            c.charged_raw_quantity,
                            c.charged_rated_quantity,
                            c.records,
                            c.charged_records,
                        )
                    )
        return rows

    def account_has_sims(self, account_id: str) -> bool:
        return bool(self.sims_by_account.get(account_id))

    # --- writes, after commit ----------------------------------------------------------------

    def mark_dirty(self, iccid: str) -> None:
        """The SIM's counters changed: the next checkpoint writes them. Pass the SIM's own
        ICCID string (`Sim.iccid`): the set keeps it until then."""
        self._dirty.add(iccid)

    def dirty_marker(self) -> Callable[[str], None]:
        """`mark_dirty` for a loop over many records: the set's own `add`, with no Python
        frame per call (the ingestion count calls it once per record)."""
        return self._dirty.add

    def mark_started(self, iccid: str) -> None:
        """The SIM's billing start was installed: the next checkpoint deletes its stored
        uncharged records that the start charges."""
        self._new_starts.add(iccid)

    def take_marks(self) -> tuple[set[str], set[str]]:
        """(dirty SIMs, SIMs with an installed billing start) since the last call; clears
        both (a checkpoint takes them)."""
        taken = self._dirty, self._new_starts
        self._dirty, self._new_starts = set(), set()
        return taken

    def mark_again(self, dirty: set[str], started: set[str]) -> None:
        """Put back marks taken by a checkpoint that failed: the next one writes them."""
        self._dirty |= dirty
        self._new_starts |= started

    def add_pool_usage(
        self, account_id: str, plan_id: str, period: str, usage_type: UsageType, rated: int
    ) -> None:
        """Charged rated quantity of a pooled rate, added to the account's pool."""
        self._pool_used[(account_id, plan_id, period, usage_type)] += rated

    def put_plan(self, plan: Plan) -> None:
        self.version += 1
        self.plans[plan.plan_id] = plan
        if plan.activation_mode is ActivationMode.FIRST_USE:
            self.first_use_plans.add(plan.plan_id)
        else:
            self.first_use_plans.discard(plan.plan_id)

    def put_account(self, account: Account) -> None:
        self.version += 1
        self.accounts[account.account_id] = account

    def add_settled(self, periods: Iterable[tuple[str, str]]) -> None:
        """(account_id, period) pairs that now have an invoice."""
        self.version += 1
        self.settled.update(periods)

    def evict_period(self, account_id: str, period: str) -> int:
        """Forget the counters of a settled account-period (its invoice is committed; they
        stay in PostgreSQL): their raw quantities join the SIMs' `settled_raw`, its pooled
        usage goes. Uncharged records stay (first-use detection sums them). Returns the
        SIM-periods dropped."""
        dropped = 0
        for iccid in self.sims_by_account.get(account_id, ()):
            usage = self.usage.get(iccid)
            if usage is None:
                continue
            counters = usage.drop_period(period)
            if not counters:
                continue
            dropped += 1
            if not self.plans[usage.sim.plan_id].thresholds:  # type: ignore[union-attr]
                continue  # never read (see SimUsage.settled_raw)
            settled = dict(usage.settled_raw)
            for c in counters:
                settled[c.usage_type] = settled.get(c.usage_type, 0) + c.raw_quantity
            usage.settled_raw = tuple(settled.items())
        pool_used = self._pool_used
        for key in [k for k in pool_used if k[0] == account_id and k[2] == period]:
            del pool_used[key]
        return dropped

    def restore_period(
        self, period: str, rows: Iterable[tuple[str, int, int, int, int, int, int]]
    ) -> int:
        """Install stored aggregates of one period (iccid, usage_type, raw, charged raw,
        charged rated, records, charged records), with the pooled usage they imply."""
        kinds, count = USAGE_TYPES_BY_VALUE, 0
        period = sys.intern(period)  # one string object per period name
        sims, usage_by_sim, plans, pool_used = self.sims, self.usage, self.plans, self._pool_used
        pooled: dict[tuple[str, UsageType], bool] = {}  # by (plan, usage type)
        for iccid, kind, raw, charged_raw, charged_rated, records, charged_records in rows:
            sim = sims.get(iccid)
            if sim is None:
                continue
            usage_type = kinds[kind]
            usage = usage_by_sim.get(iccid)
            if usage is None:
                usage = usage_by_sim[sim.iccid] = SimUsage(sim)  # keyed by the SIM's string
            counters = usage.find(period, usage_type)
            if counters is None:
                usage.counters = (
                    *usage.counters,
                    UsageCounters(
                        period,
                        usage_type,
                        raw,
                        charged_rated,
                        raw - charged_raw,
                        records,
                        records - charged_records,
                    ),
                )
            else:
                counters.raw_quantity = raw
                counters.charged_rated_quantity = charged_rated
                counters.uncharged_raw_quantity = raw - charged_raw
                counters.records = records
                counters.uncharged_records = records - charged_records
            key = (sim.plan_id, usage_type)
            is_pooled = pooled.get(key)
            if is_pooled is None:
                rate = plans[sim.plan_id].rate_for(usage_type)
                is_pooled = pooled[key] = rate is not None and rate.pooled
            if is_pooled and charged_rated:
                pool_used[(sim.account_id, sim.plan_id, period, usage_type)] += charged_rated
            count += 1
        return count

    def restore_uncharged(self, rows: Iterable[tuple[str, datetime, int, int, int, str]]) -> None:
        kinds = USAGE_TYPES_BY_VALUE
        for iccid, event_time, kind, quantity, rated, period in rows:
            if iccid in self.sims:
                self.usage_for_update(iccid).add_uncharged(
                    UnchargedRecord(event_time, kinds[kind], quantity, rated, period)
                )

    def restore_settled_raw(self, rows: Iterable[tuple[str, int, int]]) -> None:
        """Install sim_settled_usage rows of SIMs on plans with thresholds."""
        kinds, sims, usage_by_sim = USAGE_TYPES_BY_VALUE, self.sims, self.usage
        for iccid, kind, raw in rows:
            usage = usage_by_sim.get(iccid)
            if usage is None:
                sim = sims.get(iccid)
                if sim is None:
                    continue
                usage = usage_by_sim[sim.iccid] = SimUsage(sim)
            if not self.plans[usage.sim.plan_id].thresholds:  # type: ignore[union-attr]
                continue
            # One row per (SIM, usage type): sim_settled_usage's primary key.
            usage.settled_raw = (*usage.settled_raw, (kinds[kind], raw))

    def load_sims(self, sims: Iterable[Sim]) -> None:
        """The SIMs read at start, into a cache that has none yet: what put_sims does,
        without its per-SIM look-ups of a previous version and with nobody listening
        (~3x faster at 1,000,000 SIMs)."""
        assert not self.sims and not self.sim_listeners, "load_sims is for the start"
        self.version += 1
        by_iccid, by_account = self.sims, self.sims_by_account
        for sim in sims:
            by_iccid[sim.iccid] = sim
            by_account[sim.account_id].append(sim.iccid)
        loaded = by_iccid.values()
        self.state_counts.update(map(attrgetter("state"), loaded))
        self.started_on_plan.update(
            (sim.account_id, sim.plan_id) for sim in loaded if _counts_in_pool(sim)
        )

    def put_sims(self, sims: Iterable[Sim]) -> None:
        self.version += 1
        for sim in sims:
            previous = self.sims.get(sim.iccid)
            if previous is not None:
                self.state_counts[previous.state] -= 1
                self.started_on_plan[(sim.account_id, sim.plan_id)] -= _counts_in_pool(previous)
            self.sims[sim.iccid] = sim
            usage = self.usage.get(sim.iccid)
            if usage is not None:
                usage.sim = sim
            if previous is None:
                self.sims_by_account[sim.account_id].append(sim.iccid)
            elif previous.account_id != sim.account_id:  # never done by the service today
                self.sims_by_account[previous.account_id].remove(sim.iccid)
                self.sims_by_account[sim.account_id].append(sim.iccid)
            self.state_counts[sim.state] += 1
            self.started_on_plan[(sim.account_id, sim.plan_id)] += _counts_in_pool(sim)
            for listener in self.sim_listeners:
                listener(previous, sim)


def _counts_in_pool(sim: Sim) -> int:
    return int(sim.billing_started_at is not None and sim.state is not SimState.TERMINATED)
