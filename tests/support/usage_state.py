"""The usage state, stored and in memory, against what the stored facts imply.

Two levels:
- `expected_state`, `stored_state`, `cache_state`, `open_part`, `check_checkpoint`: the
  stored usage state (usage_aggregates, usage_uncharged, sim_settled_usage) against the
  stored records counted with the SIMs' STORED billing starts, and the cache's counters
  against the stored ones.
- `recompute` and the `check_*` functions after it: the whole state recomputed from the
  stored facts alone (plans, accounts, SIMs as provisioned and terminated, the accepted
  usage records, the invoices) by the contract's rules (docs/), written out here and not taken from
  the service's code: each SIM's billing start and its reason, per SIM, period and usage
  type the raw and charged totals, the records kept as uncharged, first-use progress,
  pooled usage and the bill. Held against the stored state, the cache, and the answers of
  GetSimStatus, AuthorizeSession and GetBillPreview.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import asyncpg

from rating.v1 import billing_service_pb2 as b
from rating.v1 import clock_service_pb2 as k
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.domain.model import USAGE_TYPES_BY_VALUE
from service.state.cache import StateCache

if TYPE_CHECKING:
    from service.app import Application
    from tests.support import Stubs

Key = tuple[str, str, int]  # (period, iccid, usage_type)
Totals = tuple[int, int, int, int, int]  # raw, charged raw, charged rated, records, charged


class UsageState:
    def __init__(self) -> None:
        self.aggregates: dict[Key, Totals] = {}
        self.uncharged: Counter[tuple[Any, ...]] = Counter()
        self.settled_raw: dict[tuple[str, int], int] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UsageState) and (
            (self.aggregates, self.uncharged, self.settled_raw)
            == (other.aggregates, other.uncharged, other.settled_raw)
        )

    def __repr__(self) -> str:
        return (
            f"UsageState({len(self.aggregates)} aggregates, {sum(self.uncharged.values())}"
            f" uncharged, {len(self.settled_raw)} settled totals)"
        )


async def expected_state(conn: asyncpg.Connection) -> UsageState:
    """What the stored records imply: charged when event_time >= the SIM's billing start;
    uncharged ones kept for SIMs on FIRST_USE plans; settled totals over invoiced periods."""
    sims = {
        row["iccid"]: row
        for row in await conn.fetch(
            "SELECT s.iccid, s.account_id, s.billing_started_at,"
            " p.body ->> 'activation_mode' AS mode FROM sims s JOIN plans p USING (plan_id)"
        )
    }
    settled = {(r[0], r[1]) for r in await conn.fetch("SELECT account_id, period FROM invoices")}
    totals: defaultdict[Key, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    state = UsageState()
    for row in await conn.fetch(
        "SELECT iccid, usage_type, quantity, rated_quantity, event_time, period FROM usage_records"
    ):
        sim = sims.get(row["iccid"])
        if sim is None:
            continue
        total = totals[(row["period"], row["iccid"], row["usage_type"])]
        total[0] += row["quantity"]
        total[3] += 1
        start = sim["billing_started_at"]
        if start is not None and row["event_time"] >= start:
            total[1] += row["quantity"]
            total[2] += row["rated_quantity"]
            total[4] += 1
        elif sim["mode"] == "FIRST_USE":
            state.uncharged[
                (
                    row["iccid"],
                    row["event_time"],
                    row["usage_type"],
                    row["quantity"],
                    row["rated_quantity"],
                    row["period"],
                )
            ] += 1
    state.aggregates = {key: (v[0], v[1], v[2], v[3], v[4]) for key, v in totals.items()}
    for (period, iccid, usage_type), done in state.aggregates.items():
        if (sims[iccid]["account_id"], period) in settled:
            settled_key = (iccid, usage_type)
            state.settled_raw[settled_key] = state.settled_raw.get(settled_key, 0) + done[0]
    return state


async def stored_state(conn: asyncpg.Connection) -> UsageState:
    state = UsageState()
    for row in await conn.fetch("SELECT * FROM usage_aggregates"):
        state.aggregates[(row["period"], row["iccid"], row["usage_type"])] = (
            int(row["raw_quantity"]),
            int(row["charged_raw_quantity"]),
            int(row["charged_rated_quantity"]),
            row["records"],
            row["charged_records"],
        )
    for row in await conn.fetch(
        "SELECT iccid, event_time, usage_type, quantity, rated_quantity, period"
        " FROM usage_uncharged"
    ):
        state.uncharged[tuple(row)] += 1
    for row in await conn.fetch("SELECT iccid, usage_type, raw_quantity FROM sim_settled_usage"):
        state.settled_raw[(row[0], row[1])] = int(row[2])
    return state


def cache_state(cache: StateCache) -> UsageState:
    """The cache's usage as a UsageState: counters of the periods it holds (open ones)."""
    state = UsageState()
    for iccid, usage in cache.usage.items():
        for period, by_type in usage.periods.items():
            for usage_type, c in by_type.items():
                state.aggregates[(period, iccid, usage_type.value)] = (
                    c.raw_quantity,
                    c.charged_raw_quantity,
                    c.charged_rated_quantity,
                    c.records,
                    c.charged_records,
                )
        for u in usage.uncharged:
            key = (iccid, u.event_time, u.usage_type.value, u.quantity, u.rated_quantity, u.period)
            state.uncharged[key] += 1
        for usage_type, raw in usage.settled_raw:
            state.settled_raw[(iccid, usage_type.value)] = raw
    return state


def open_part(state: UsageState, cache: StateCache) -> UsageState:
    """`state` without the aggregates of settled account-periods (and without zero totals
    of settled periods, which the cache does not keep)."""
    part = UsageState()
    part.aggregates = {
        key: totals
        for key, totals in state.aggregates.items()
        if (cache.sims[key[1]].account_id, key[0]) not in cache.settled
    }
    part.uncharged = state.uncharged
    # Memory holds them for SIMs on plans with thresholds only (SimUsage.settled_raw).
    part.settled_raw = {
        key: raw
        for key, raw in state.settled_raw.items()
        if cache.plans[cache.sims[key[0]].plan_id].thresholds
    }
    return part


SETTLED_SEQ = 2**63 - 1


async def check_checkpoint(conn: asyncpg.Connection) -> int:
    """The stored checkpoint is exact as of its seqs, whatever instant it was left at: each
    row of an open period holds the raw quantity and record count of the records with seq <=
    the row's seq <= the watermark, and every SIM-period-type with records up to the
    watermark has a row. Returns the watermark."""
    watermark: int = await conn.fetchval("SELECT watermark FROM usage_checkpoint")
    rows = {
        (row["period"], row["iccid"], row["usage_type"]): row
        for row in await conn.fetch("SELECT * FROM usage_aggregates")
    }
    by_key: defaultdict[Key, list[tuple[int, int]]] = defaultdict(list)  # (seq, quantity)
    for x in await conn.fetch("SELECT period, iccid, usage_type, quantity, seq FROM usage_records"):
        by_key[(x["period"], x["iccid"], x["usage_type"])].append((x["seq"], x["quantity"]))
    for key, row in rows.items():
        if row["seq"] == SETTLED_SEQ:
            continue
        assert row["seq"] <= watermark, key
        upto = [quantity for seq, quantity in by_key[key] if seq <= row["seq"]]
        assert (int(row["raw_quantity"]), row["records"]) == (sum(upto), len(upto)), key
    for key, records in by_key.items():
        if min(seq for seq, _ in records) <= watermark:
            assert key in rows, key
    return watermark


# --- the whole usage state, recomputed from the stored facts --------------------------------
#
# `recompute` reads what callers sent and the service stored as facts (plans, accounts, SIMs
# as provisioned and terminated, the accepted usage records, the invoices) and derives the
# rest by the contract's rules (docs/), written out here and not taken from the service's code: each
# SIM's billing start and its reason, the raw and charged totals per SIM, period and usage
# type, the records kept as uncharged, first-use progress, pooled usage and the bill. The
# checks below hold the stored state, the cache and the API's answers against it.

DATA, VOICE, SMS = t.USAGE_TYPE_DATA, t.USAGE_TYPE_VOICE, t.USAGE_TYPE_SMS
IMMEDIATE_START = t.BILLING_START_REASON_IMMEDIATE
FIRST_USE_START = t.BILLING_START_REASON_FIRST_USE
GRACE_EXPIRED_START = t.BILLING_START_REASON_GRACE_EXPIRED
PROVISIONED, ACTIVE = t.SIM_STATE_PROVISIONED, t.SIM_STATE_ACTIVE
SUSPENDED, TERMINATED = t.SIM_STATE_SUSPENDED, t.SIM_STATE_TERMINATED
MINOR_DIGITS = {"EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "JPY": 0, "KRW": 0, "BHD": 3}

Start = tuple[datetime, int] | None  # (billing start, BillingStartReason number), or none yet
# An invoice line: (kind, plan id, usage type, quantity, chargeable quantity, amount micros).
Line = tuple[int, str, int, int, int, int]


@dataclass(frozen=True)
class Rate:
    unit: int
    increment: int
    included: int
    pooled: bool
    tiers: tuple[tuple[int, int], ...]  # (cumulative upper bound, 0 = none; price per unit)


@dataclass(frozen=True)
class PlanRules:
    """What the rules read of a plan."""

    plan_id: str
    fee_micros: int
    first_use: bool  # activation mode FIRST_USE (else IMMEDIATE)
    thresholds: tuple[tuple[int, int], ...]  # (usage type, quantity), in the plan's order
    grace: timedelta  # zero: no deadline
    when_used: bool  # billing mode WHEN_USED (else ALWAYS)
    daily: bool  # proration DAILY (else NONE)
    rates: dict[int, Rate]

    @staticmethod
    def from_proto(plan: t.Plan) -> PlanRules:
        return PlanRules(
            plan_id=plan.plan_id,
            fee_micros=plan.subscription_fee_micros,
            first_use=plan.activation.mode == t.ACTIVATION_MODE_FIRST_USE,
            thresholds=tuple((x.usage_type, x.quantity) for x in plan.activation.thresholds),
            grace=plan.activation.grace_period.ToTimedelta(),
            when_used=plan.billing_mode == t.BILLING_MODE_WHEN_USED,
            daily=plan.proration == t.PRORATION_DAILY,
            rates={
                rate.usage_type: Rate(
                    rate.unit_quantity,
                    rate.rounding_increment,
                    rate.included_quantity,
                    rate.pooled,
                    tuple((x.up_to_quantity, x.price_micros) for x in rate.tiers),
                )
                for rate in plan.usage_rates
            },
        )

    @staticmethod
    def from_stored(doc: dict[str, Any]) -> PlanRules:
        """From the `plans.body` document (names for enum values, as stored)."""

        def kind(name: str) -> int:
            return t.UsageType.Value(f"USAGE_TYPE_{name}")

        return PlanRules(
            plan_id=doc["plan_id"],
            fee_micros=doc["subscription_fee_micros"],
            first_use=doc["activation_mode"] == "FIRST_USE",
            thresholds=tuple((kind(x["usage_type"]), x["quantity"]) for x in doc["thresholds"]),
            grace=timedelta(microseconds=doc["grace_period_us"]),
            when_used=doc["billing_mode"] == "WHEN_USED",
            daily=doc["proration"] == "DAILY",
            rates={
                kind(rate["usage_type"]): Rate(
                    rate["unit_quantity"],
                    rate["rounding_increment"],
                    rate["included_quantity"],
                    rate["pooled"],
                    tuple((up_to, per_unit) for up_to, per_unit in rate["tiers"]),
                )
                for rate in doc["usage_rates"]
            },
        )

    def deadline(self, provisioned_at: datetime) -> datetime | None:
        if not self.first_use or self.grace <= timedelta(0):
            return None
        return provisioned_at + self.grace


@dataclass(frozen=True)
class AccountRules:
    account_id: str
    currency: str
    timezone: str
    billing_day: int
    schedule: tuple[tuple[str, int, str, int], ...]  # (from period, min SIMs, plan, min spend)


@dataclass(frozen=True)
class SimFacts:
    """A SIM as provisioned, suspended and terminated, and the start the service stored."""

    iccid: str
    account_id: str
    plan_id: str
    provisioned_at: datetime
    state: int
    terminated_at: datetime | None
    stored_start: Start


@dataclass(frozen=True)
class StoredRecord:
    iccid: str
    usage_type: int
    quantity: int
    rated_quantity: int
    event_time: datetime
    period: str


def period_of(instant: datetime, timezone: str, billing_day: int) -> tuple[str, datetime, datetime]:
    """(name, start, end) of the period containing `instant`: from local midnight of the
    billing day to the same point a month later, named by its local start's month."""
    zone = ZoneInfo(timezone)
    local = instant.astimezone(zone)
    year, month = local.year, local.month
    if local.day < billing_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    start = datetime(year, month, billing_day, tzinfo=zone).astimezone(UTC)
    end = datetime(next_year, next_month, billing_day, tzinfo=zone).astimezone(UTC)
    return f"{year:04d}-{month:02d}", start, end


def rated(quantity: int, rate: Rate | None) -> int:
    """Rounded up to the rate's increment; a type the plan does not price keeps its quantity."""
    if rate is None:
        return quantity
    return -(-quantity // rate.increment) * rate.increment


def first_use(
    thresholds: Sequence[tuple[int, int]], records: Iterable[tuple[datetime, int, int]]
) -> datetime | None:
    """The event time at which some threshold's type first reaches its quantity, the raw
    quantities summed in event-time order (records at one instant count together)."""
    earliest: datetime | None = None
    for usage_type, quantity in thresholds:
        at: defaultdict[datetime, int] = defaultdict(int)
        for event_time, kind, raw in records:
            if kind == usage_type:
                at[event_time] += raw
        total = 0
        for instant in sorted(at):
            total += at[instant]
            if total >= quantity:
                if earliest is None or instant < earliest:
                    earliest = instant
                break
    return earliest


def billing_start(
    plan: PlanRules,
    provisioned_at: datetime,
    terminated_at: datetime | None,
    records: Iterable[tuple[datetime, int, int]],
    now: datetime,
) -> Start:
    """docs/activation.md: IMMEDIATE at provisioning; FIRST_USE at the earlier of first use
    and the deadline (provisioning + grace). The deadline takes effect once it has come; a
    first use at or after it already makes the deadline certain. A SIM terminated by its
    deadline never reaches it."""
    if not plan.first_use:
        return provisioned_at, IMMEDIATE_START
    deadline = plan.deadline(provisioned_at)
    used = first_use(plan.thresholds, records)
    if used is not None and (deadline is None or used < deadline):
        return used, FIRST_USE_START
    if deadline is None or (terminated_at is not None and terminated_at <= deadline):
        return None
    if now >= deadline or used is not None:
        return deadline, GRACE_EXPIRED_START
    return None


def price(chargeable: int, rate: Rate) -> Fraction:
    """Exact micros of `chargeable` units through the graduated tiers (above the last bound
    at the last tier's price)."""
    total, lower = Fraction(0), 0
    for up_to, per_unit in rate.tiers:
        upper = chargeable if up_to == 0 else min(chargeable, up_to)
        if upper > lower:
            total += Fraction((upper - lower) * per_unit, rate.unit)
            lower = upper
    if lower < chargeable and rate.tiers:
        total += Fraction((chargeable - lower) * rate.tiers[-1][1], rate.unit)
    return total


def half_up(value: Fraction) -> int:
    magnitude = int(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def round_line(micros: Fraction, currency: str) -> int:
    step: int = 10 ** (6 - MINOR_DIGITS[currency])
    return half_up(micros / step) * step


def marginal_price(rate: Rate, chargeable: int) -> int:
    for up_to, per_unit in rate.tiers:
        if up_to == 0 or chargeable < up_to:
            return per_unit
    return rate.tiers[-1][1] if rate.tiers else 0


def local_days(start: datetime, end: datetime, timezone: str) -> int:
    zone = ZoneInfo(timezone)
    return (end.astimezone(zone).date() - start.astimezone(zone).date()).days


@dataclass
class Recomputed:
    """The usage state the stored facts imply at `now` (see `recompute`)."""

    now: datetime
    plans: dict[str, PlanRules]
    accounts: dict[str, AccountRules]
    sims: dict[str, SimFacts]
    settled: set[tuple[str, str]]
    starts: dict[str, Start] = field(default_factory=dict)
    totals: dict[Key, Totals] = field(default_factory=dict)
    uncharged: Counter[tuple[Any, ...]] = field(default_factory=Counter)
    settled_raw: dict[tuple[str, int], int] = field(default_factory=dict)
    lifetime_raw: dict[str, dict[int, int]] = field(default_factory=dict)
    pool_used: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    started_on_plan: Counter[tuple[str, str]] = field(default_factory=Counter)
    refused_corrections: dict[str, Start] = field(default_factory=dict)

    def state(self) -> UsageState:
        """As a UsageState, comparable with `stored_state` and (`open_part`) `cache_state`."""
        out = UsageState()
        out.aggregates = dict(self.totals)
        out.uncharged = Counter(self.uncharged)
        out.settled_raw = dict(self.settled_raw)
        return out

    def period_now(self, account_id: str) -> str:
        account = self.accounts[account_id]
        return period_of(self.now, account.timezone, account.billing_day)[0]

    def sim_state(self, sim: SimFacts) -> int:
        """The SIM's state: PROVISIONED becomes ACTIVE when billing starts."""
        if sim.state in (PROVISIONED, ACTIVE):
            return ACTIVE if self.starts[sim.iccid] is not None else PROVISIONED
        return sim.state

    def progress(self, iccid: str) -> list[tuple[int, int, int]]:
        """First-use progress as GetSimStatus shows it: (type, lifetime raw, threshold)."""
        plan = self.plans[self.sims[iccid].plan_id]
        lifetime = self.lifetime_raw.get(iccid, {})
        return [(kind, lifetime.get(kind, 0), quantity) for kind, quantity in plan.thresholds]

    def period_usage(self, iccid: str) -> list[tuple[int, int]]:
        """GetSimStatus's period_usage: raw per type of the current period, by type."""
        period = self.period_now(self.sims[iccid].account_id)
        return sorted(
            (kind, totals[0])
            for (name, sim, kind), totals in self.totals.items()
            if sim == iccid and name == period
        )

    def position(self, iccid: str, usage_type: int) -> tuple[int, int]:
        """(charged rated quantity so far, allowance) in the current period: the SIM's, or
        for a pooled rate the account's on the plan against included x started SIMs."""
        sim = self.sims[iccid]
        rate = self.plans[sim.plan_id].rates[usage_type]
        period = self.period_now(sim.account_id)
        if rate.pooled:
            used = self.pool_used.get((sim.account_id, sim.plan_id, period, usage_type), 0)
            return used, rate.included * self.started_on_plan[(sim.account_id, sim.plan_id)]
        totals = self.totals.get((period, iccid, usage_type))
        return (totals[2] if totals else 0), rate.included

    def authorization(self, iccid: str, usage_type: int, requested: int) -> dict[str, Any]:
        """AuthorizeSession's answer for the SIM, as the fields of the response."""
        sim = self.sims[iccid]
        plan = self.plans[sim.plan_id]
        started = self.starts[iccid] is not None
        lifetime = self.lifetime_raw.get(iccid, {}).get(usage_type, 0)
        would_start = (
            plan.first_use
            and not started
            and any(
                kind == usage_type and lifetime + requested >= quantity
                for kind, quantity in plan.thresholds
            )
        )
        state = self.sim_state(sim)
        deny: dict[int, int] = {
            SUSPENDED: r.DENY_REASON_SUSPENDED,
            TERMINATED: r.DENY_REASON_TERMINATED,
        }
        answer: dict[str, Any] = {
            "allowed": state not in deny,
            "deny_reason": deny.get(state, 0),
            "state": state,
            "billing_started": started,
            "would_start_billing": would_start,
            "price_micros": 0,
            "unit_quantity": 0,
            "remaining_included_quantity": 0,
            "estimated_charge_micros": 0,
        }
        rate = plan.rates.get(usage_type)
        if rate is None:
            return answer
        used, included = self.position(iccid, usage_type)
        answer["price_micros"] = marginal_price(rate, max(0, used - included))
        answer["unit_quantity"] = rate.unit
        answer["remaining_included_quantity"] = max(0, included - used)
        if started or would_start:
            before = max(0, used - included)
            after = max(0, used + rated(requested, rate) - included)
            answer["estimated_charge_micros"] = half_up(price(after, rate) - price(before, rate))
        return answer

    def invoice_lines(
        self, account_id: str, period: tuple[str, datetime, datetime]
    ) -> tuple[int, list[Line]]:
        """(billable SIMs, lines as (kind, plan, usage type, quantity, chargeable, amount))
        of the account-period, by docs/settlement.md."""
        account = self.accounts[account_id]
        name, start, end = period
        days_in_period = local_days(start, end, account.timezone)
        by_plan: defaultdict[str, list[SimFacts]] = defaultdict(list)
        for sim in self.sims.values():
            if sim.account_id == account_id:
                by_plan[sim.plan_id].append(sim)
        billable: dict[str, list[tuple[SimFacts, Fraction]]] = {}
        for plan_id, sims in by_plan.items():
            plan = self.plans[plan_id]
            billable[plan_id] = []
            for sim in sims:
                days = self._billed_days(sim, account.timezone, start, end)
                if plan.when_used:
                    used = any(
                        totals[1] > 0
                        for (p, iccid, _), totals in self.totals.items()
                        if p == name and iccid == sim.iccid
                    )
                    if used and self.starts[sim.iccid] is not None:
                        billable[plan_id].append((sim, Fraction(1)))
                elif days > 0:
                    share = Fraction(days, days_in_period) if plan.daily else Fraction(1)
                    billable[plan_id].append((sim, share))
        lines: list[Line] = []
        for plan_id in sorted(by_plan):
            fee = self.plans[plan_id].fee_micros
            if billable[plan_id]:
                count = len(billable[plan_id])
                amount = round_line(
                    sum((fee * s for _, s in billable[plan_id]), Fraction(0)), account.currency
                )
                lines.append((t.LINE_KIND_SUBSCRIPTION, plan_id, 0, count, count, amount))
        for plan_id in sorted(by_plan):
            lines += self._usage_lines(
                account, name, self.plans[plan_id], by_plan[plan_id], billable[plan_id]
            )
        count = sum(len(sims) for sims in billable.values())
        in_force = [s for s in account.schedule if s[0] <= name]
        if in_force:
            _, min_sims, commitment_plan, min_spend = max(in_force)
            if min_sims > count:
                fee = self.plans[commitment_plan].fee_micros
                amount = round_line(Fraction((min_sims - count) * fee), account.currency)
                short = min_sims - count
                lines.append(
                    (t.LINE_KIND_SIM_COMMITMENT_SHORTFALL, commitment_plan, 0, short, short, amount)
                )
            true_up = round_line(Fraction(min_spend - sum(x[5] for x in lines)), account.currency)
            if true_up > 0:
                lines.append((t.LINE_KIND_MINIMUM_SPEND_TRUE_UP, "", 0, 1, 1, true_up))
        return count, lines

    def _billed_days(self, sim: SimFacts, timezone: str, start: datetime, end: datetime) -> int:
        began = self.starts[sim.iccid]
        if began is None:
            return 0
        zone = ZoneInfo(timezone)
        first = began[0].astimezone(zone).date()
        after_last = date.max
        if sim.terminated_at is not None:
            after_last = sim.terminated_at.astimezone(zone).date()
            if after_last == first:
                after_last = first + timedelta(days=1)
        period_first, period_after_last = start.astimezone(zone).date(), end.astimezone(zone).date()
        return max(0, (min(after_last, period_after_last) - max(first, period_first)).days)

    def _usage_lines(
        self,
        account: AccountRules,
        period: str,
        plan: PlanRules,
        sims: list[SimFacts],
        billable: list[tuple[SimFacts, Fraction]],
    ) -> list[Line]:
        billed = {sim.iccid for sim, _ in billable}
        lines: list[Line] = []
        for kind in (DATA, VOICE, SMS):
            quantities = [
                (
                    sim.iccid in billed,
                    self.totals.get((period, sim.iccid, kind), (0, 0, 0, 0, 0))[2],
                )
                for sim in sims
            ]
            total = sum(q for _, q in quantities)
            if total == 0:
                continue
            rate = plan.rates.get(kind)
            if rate is None:
                lines.append((t.LINE_KIND_USAGE, plan.plan_id, kind, total, 0, 0))
                continue
            if rate.pooled:
                chargeable = max(0, total - rate.included * len(billed))
            else:
                chargeable = sum(max(0, q - (rate.included if b else 0)) for b, q in quantities)
            amount = round_line(price(chargeable, rate), account.currency)
            lines.append((t.LINE_KIND_USAGE, plan.plan_id, kind, total, chargeable, amount))
        return lines


def _document(value: Any) -> Any:
    """A jsonb value: decoded already on the service's connections, text on a plain one."""
    return json.loads(value) if isinstance(value, str) else value


def _reaches_settled(
    expected: Recomputed, account: AccountRules, earliest: datetime, until: datetime
) -> bool:
    """Whether [earliest, until) overlaps a settled period of the account."""
    instant = earliest
    while instant < until:
        name, _, end = period_of(instant, account.timezone, account.billing_day)
        if (account.account_id, name) in expected.settled:
            return True
        instant = end
    return False


async def recompute(conn: asyncpg.Connection, now: datetime) -> Recomputed:
    """The usage state the stored facts imply at `now` (the service's clock).

    Billing starts follow docs/activation.md from each SIM's stored records; where the
    service kept a later start than that because the move would have reached a settled
    period (docs/activation.md: not applied), the kept one is taken and listed in
    `refused_corrections`. Every stored record's period and rated quantity are checked
    against the account's periods and the plan's rounding on the way."""
    plans = {
        row["plan_id"]: PlanRules.from_stored(_document(row["body"]))
        for row in await conn.fetch("SELECT plan_id, body FROM plans")
    }
    accounts = {
        row["account_id"]: AccountRules(
            row["account_id"],
            row["currency"],
            row["timezone"],
            row["billing_day"],
            tuple(
                (
                    s["effective_period"],
                    s["min_billable_sims"],
                    s["sim_commitment_plan_id"],
                    s["min_spend_micros"],
                )
                for s in _document(row["commitment_schedule"])
            ),
        )
        for row in await conn.fetch("SELECT * FROM accounts")
    }
    sims = {
        row["iccid"]: SimFacts(
            row["iccid"],
            row["account_id"],
            row["plan_id"],
            row["provisioned_at"],
            row["state"],
            row["terminated_at"],
            None
            if row["billing_started_at"] is None
            else (row["billing_started_at"], row["billing_start_reason"]),
        )
        for row in await conn.fetch("SELECT * FROM sims")
    }
    settled = {
        (row[0], row[1]) for row in await conn.fetch("SELECT account_id, period FROM invoices")
    }
    expected = Recomputed(now, plans, accounts, sims, settled)
    records: defaultdict[str, list[StoredRecord]] = defaultdict(list)
    wrong: list[str] = []
    for row in await conn.fetch(
        "SELECT record_id, iccid, usage_type, quantity, rated_quantity, event_time, period"
        " FROM usage_records"
    ):
        sim = sims.get(row["iccid"])
        assert sim is not None, f"record {row['record_id']} of an unknown SIM is stored"
        account, plan = accounts[sim.account_id], plans[sim.plan_id]
        name = period_of(row["event_time"], account.timezone, account.billing_day)[0]
        rate = plan.rates.get(row["usage_type"])
        if (row["period"], row["rated_quantity"]) != (name, rated(row["quantity"], rate)):
            wrong.append(f"{row['record_id']}: stored {row['period']}/{row['rated_quantity']}")
        records[row["iccid"]].append(
            StoredRecord(
                row["iccid"],
                row["usage_type"],
                row["quantity"],
                row["rated_quantity"],
                row["event_time"],
                row["period"],
            )
        )
    assert not wrong, f"records stored with a wrong period or rated quantity: {wrong[:10]}"

    totals: defaultdict[Key, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    pool_used: defaultdict[tuple[str, str, str, int], int] = defaultdict(int)
    for iccid, sim in sims.items():
        plan, account = plans[sim.plan_id], accounts[sim.account_id]
        mine = records.get(iccid, [])
        start = billing_start(
            plan,
            sim.provisioned_at,
            sim.terminated_at,
            [(x.event_time, x.usage_type, x.quantity) for x in mine],
            now,
        )
        kept = sim.stored_start
        if (
            start is not None
            and start != kept
            and (kept is None or start[0] < kept[0])
            and _reaches_settled(expected, account, start[0], now if kept is None else kept[0])
        ):
            expected.refused_corrections[iccid] = start
            start = kept
        expected.starts[iccid] = start
        if start is not None and sim.state != TERMINATED:
            expected.started_on_plan[(sim.account_id, sim.plan_id)] += 1
        lifetime = expected.lifetime_raw.setdefault(iccid, {})
        for x in mine:
            lifetime[x.usage_type] = lifetime.get(x.usage_type, 0) + x.quantity
            total = totals[(x.period, iccid, x.usage_type)]
            total[0] += x.quantity
            total[3] += 1
            if start is not None and x.event_time >= start[0]:
                total[1] += x.quantity
                total[2] += x.rated_quantity
                total[4] += 1
                rate = plan.rates.get(x.usage_type)
                if rate is not None and rate.pooled:
                    key = (sim.account_id, sim.plan_id, x.period, x.usage_type)
                    pool_used[key] += x.rated_quantity
            elif plan.first_use:
                expected.uncharged[
                    (iccid, x.event_time, x.usage_type, x.quantity, x.rated_quantity, x.period)
                ] += 1
    expected.totals = {key: (v[0], v[1], v[2], v[3], v[4]) for key, v in totals.items()}
    expected.pool_used = {key: used for key, used in pool_used.items() if used}
    for (period, iccid, usage_type), done in expected.totals.items():
        if (sims[iccid].account_id, period) in settled:
            settled_key = (iccid, usage_type)
            expected.settled_raw[settled_key] = expected.settled_raw.get(settled_key, 0) + done[0]
    return expected


async def recompute_at(database_url: str, stubs: Stubs) -> Recomputed:
    """`recompute` on its own connection, at the service's clock (ClockService.GetTime)."""
    now = (await stubs.clock.GetTime(k.GetTimeRequest())).now.ToDatetime(tzinfo=UTC)
    conn = await asyncpg.connect(database_url)
    try:
        return await recompute(conn, now)
    finally:
        await conn.close()


def _differences(what: str, got: Mapping[Any, Any], want: Mapping[Any, Any]) -> list[str]:
    keys = sorted(
        {*got, *want} - {k for k in got.keys() & want.keys() if got[k] == want[k]}, key=repr
    )
    return [f"{what} {key}: {got.get(key)} where {want.get(key)} is expected" for key in keys]


def _assert_none(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} differences:\n" + "\n".join(problems[:25])


def _start_of(billing_started_at: datetime | None, reason: int) -> Start:
    return None if billing_started_at is None else (billing_started_at, reason)


@asynccontextmanager
async def counted(app: Application) -> AsyncIterator[None]:
    """The state lock held with every committed group counted: the cache shows every
    committed record and nothing changes it meanwhile (see StateLock)."""
    async with app.state_lock:
        app.persister.count_committed()
        yield


def check_cache(cache: StateCache, expected: Recomputed) -> None:
    """The cache against the recomputation: every SIM's billing start, reason and state;
    the counters of open periods, the uncharged records and settled raw totals; lifetime
    raw totals (first-use progress) of SIMs on plans with thresholds; pooled usage and
    the SIMs counted in each pool. Call it with the state counted (`counted`)."""
    problems: list[str] = []
    for iccid, sim in expected.sims.items():
        cached = cache.sims[iccid]
        reason = cached.billing_start_reason.value if cached.billing_start_reason else 0
        got = _start_of(cached.billing_started_at, reason)
        if got != expected.starts[iccid]:
            problems.append(f"{iccid} starts at {got}, expected {expected.starts[iccid]}")
        if cached.state.value != expected.sim_state(sim):
            problems.append(f"{iccid} is {cached.state}, expected {expected.sim_state(sim)}")
        if expected.plans[sim.plan_id].thresholds:
            lifetime = {kind.value: raw for kind, raw in cache.usage_of(iccid).lifetime_raw.items()}
            problems += _differences(
                f"lifetime raw of {iccid}",
                {kind: raw for kind, raw in lifetime.items() if raw},
                {kind: raw for kind, raw in expected.lifetime_raw.get(iccid, {}).items() if raw},
            )
    memory, want = cache_state(cache), open_part(expected.state(), cache)
    problems += _differences("counters (period, iccid, type)", memory.aggregates, want.aggregates)
    problems += _differences("uncharged records", memory.uncharged, want.uncharged)
    problems += _differences("settled raw (iccid, type)", memory.settled_raw, want.settled_raw)
    problems += _pool_differences(cache, expected)
    _assert_none(problems)


def _pool_differences(cache: StateCache, expected: Recomputed) -> list[str]:
    """Every pool's (charged rated quantity, allowance) as the cache prices a record of
    the pool's SIMs at (`allowance_position`), in every open period with usage, against
    the recomputed pool usage and included quantity x the SIMs started on the plan."""
    got: dict[tuple[str, str, str, int], tuple[int, int]] = {}
    want: dict[tuple[str, str, str, int], tuple[int, int]] = {}
    on_plan: dict[tuple[str, str], str] = {}
    periods: defaultdict[str, set[str]] = defaultdict(set)  # by account
    for iccid, sim in expected.sims.items():
        on_plan.setdefault((sim.account_id, sim.plan_id), iccid)
        periods[sim.account_id].update(cache.usage_of(iccid).periods)
    for name, iccid, _ in expected.totals:
        periods[expected.sims[iccid].account_id].add(name)
    for (account_id, plan_id), iccid in on_plan.items():
        plan = cache.plans[plan_id]
        for usage_type, rate in expected.plans[plan_id].rates.items():
            if not rate.pooled:
                continue
            for period in periods[account_id]:
                if (account_id, period) in cache.settled:
                    continue
                key = (account_id, plan_id, period, usage_type)
                cached_rate = plan.rate_for(USAGE_TYPES_BY_VALUE[usage_type])
                assert cached_rate is not None
                got[key] = cache.allowance_position(cache.sims[iccid], cached_rate, period)
                started = expected.started_on_plan[(account_id, plan_id)]
                want[key] = (expected.pool_used.get(key, 0), rate.included * started)
    return _differences("pool (account, plan, period, type) at (used, allowance)", got, want)


async def check_stored_state(conn: asyncpg.Connection, expected: Recomputed) -> None:
    """The stored state against the recomputation: the SIMs' stored billing starts, and
    usage_aggregates, usage_uncharged and sim_settled_usage. The stored usage state is
    whole only after a checkpoint that holds every committed record (a graceful stop, or
    `checkpoint.run_once()` with nothing in doubt)."""
    problems = _differences(
        "stored billing start of",
        {iccid: sim.stored_start for iccid, sim in expected.sims.items()},
        expected.starts,
    )
    stored, want = await stored_state(conn), expected.state()
    problems += _differences("stored counters", stored.aggregates, want.aggregates)
    problems += _differences("stored uncharged records", stored.uncharged, want.uncharged)
    problems += _differences("stored settled raw", stored.settled_raw, want.settled_raw)
    _assert_none(problems)


async def check_app(app: Application, *, stored: bool = True) -> Recomputed:
    """An in-process service's whole usage state against the recomputation at its clock:
    the cache (under the state lock, every committed group counted) and, after a
    checkpoint, the stored state. Returns the recomputation (for the API checks)."""
    async with counted(app), app.pool.acquire() as conn:
        expected = await recompute(conn, app.clock.now())
        check_cache(app.cache, expected)
    if stored:
        assert await app.checkpoint.run_once() is not None, "records in doubt"
        async with app.pool.acquire() as conn:
            await check_stored_state(conn, expected)
    return expected


def sim_status_problems(status: t.SimStatus, expected: Recomputed) -> list[str]:
    """GetSimStatus's answer against the recomputation: billing start, reason and state,
    activation deadline, first-use progress, current period and its usage."""
    iccid = status.iccid
    sim = expected.sims[iccid]
    plan = expected.plans[sim.plan_id]
    deadline = plan.deadline(sim.provisioned_at)
    shown_start = (
        status.billing_started_at.ToDatetime(tzinfo=UTC)
        if status.HasField("billing_started_at")
        else None
    )
    got = {
        "start": _start_of(shown_start, status.billing_start_reason),
        "state": status.state,
        "deadline": status.activation_deadline.ToDatetime(tzinfo=UTC)
        if status.HasField("activation_deadline")
        else None,
        "progress": [(x.usage_type, x.quantity, x.threshold) for x in status.first_use_progress],
        "period": status.current_period,
        "usage": [(x.usage_type, x.quantity) for x in status.period_usage],
    }
    want = {
        "start": expected.starts[iccid],
        "state": expected.sim_state(sim),
        "deadline": deadline,
        "progress": expected.progress(iccid),
        "period": expected.period_now(sim.account_id),
        "usage": expected.period_usage(iccid),
    }
    return _differences(f"GetSimStatus {iccid}", got, want)


def authorization_problems(
    answer: r.AuthorizeSessionResponse,
    expected: Recomputed,
    iccid: str,
    usage_type: int,
    requested: int,
) -> list[str]:
    want = expected.authorization(iccid, usage_type, requested)
    got = {name: getattr(answer, name) for name in want}
    return _differences(f"AuthorizeSession {iccid} {usage_type}x{requested}", got, want)


def invoice_problems(invoice: t.Invoice, expected: Recomputed) -> list[str]:
    """A bill preview (or invoice) against the recomputed one: billable SIMs, every line's
    kind, plan, usage type, quantities and amount, in order, and the total."""
    period = (
        invoice.period,
        invoice.period_start.ToDatetime(tzinfo=UTC),
        invoice.period_end.ToDatetime(tzinfo=UTC),
    )
    billable, lines = expected.invoice_lines(invoice.account_id, period)
    got = {
        "billable": invoice.billable_sims,
        "lines": [
            (x.kind, x.plan_id, x.usage_type, x.quantity, x.chargeable_quantity, x.amount_micros)
            for x in invoice.lines
        ],
        "total": invoice.total_micros,
    }
    want = {"billable": billable, "lines": lines, "total": sum(x[5] for x in lines)}
    return _differences(f"invoice {invoice.account_id} {invoice.period}", got, want)


async def check_api(
    stubs: Stubs,
    expected: Recomputed,
    iccids: Sequence[str] | None = None,
    requests: Sequence[tuple[int, int]] = ((DATA, 0), (DATA, 700_000)),
) -> None:
    """The API's answers against the recomputation: GetSimStatus and AuthorizeSession
    (each of `requests`, (usage type, quantity)) for every SIM of `iccids` (all if None),
    and the bill preview of the current period of every account they belong to."""
    chosen = list(expected.sims) if iccids is None else list(iccids)

    async def one(iccid: str) -> list[str]:
        status = await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))
        problems = sim_status_problems(status.status, expected)
        for usage_type, quantity in requests:
            request = r.AuthorizeSessionRequest(
                iccid=iccid,
                usage_type=usage_type,  # type: ignore[arg-type]
                requested_quantity=quantity,
            )
            answer = await stubs.rating.AuthorizeSession(request)
            problems += authorization_problems(answer, expected, iccid, usage_type, quantity)
        return problems

    problems: list[str] = []
    for first in range(0, len(chosen), 100):
        for found in await asyncio.gather(*(one(x) for x in chosen[first : first + 100])):
            problems += found
    for account_id in sorted({expected.sims[x].account_id for x in chosen}):
        got = await stubs.billing.GetBillPreview(b.GetBillPreviewRequest(account_id=account_id))
        problems += invoice_problems(got.invoice, expected)
    _assert_none(problems)
