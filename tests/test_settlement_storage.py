"""Settlement from PostgreSQL (docs/settlement.md, "Where an invoice's facts come from"):
`usage_state.period_facts` reads an account-period's facts from the stored state alone
(SIMs, usage_aggregates, the records after the checkpoint, usage_uncharged), and they give
the same invoice as the facts in memory, through the same pure `compute_invoice`. Every
record's answer (status, rated quantity, charged, started_billing) is the one the
contract's rules (docs/) give at the instant it is sent (tests/support/usage_state.py)."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from hypothesis import event, example, given, seed, settings, target
from hypothesis import strategies as st
from hypothesis.statistics import collector, describe_statistics

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import types_pb2 as t
from service.app import Application
from service.domain.model import Invoice, Period, SimPeriodFacts
from service.domain.periods import next_period, period_containing
from service.domain.settlement import compute_invoice
from service.storage import invoices, usage_state
from tests.conftest import AppFactory
from tests.support import T0, Stubs, data_plan, first_use_plan, iccids
from tests.support.billing import advance, preview, put_account, settle, step, terminate
from tests.support.builders import EUR, PROPERTY
from tests.support.usage import rate, record
from tests.support.usage_state import (
    FIRST_USE_START,
    PlanRules,
    billing_start,
    counted,
    expected_state,
    rated,
    stored_state,
)

T = TypeVar("T")
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
SEED_VARIABLE = "RATING_SETTLEMENT_SEED"


def plans() -> list[t.Plan]:
    """IMMEDIATE per-SIM, IMMEDIATE pooled with SMS, FIRST_USE with a short grace, FIRST_USE
    on any data use without a deadline (its start set, and moved by late records, often),
    and WHEN_USED: every way a record can be charged or not, and an allowance shared or
    not."""
    own = data_plan("SP-OWN")
    pooled = data_plan("SP-POOL")
    pooled.usage_rates[0].pooled = True
    pooled.usage_rates[0].included_quantity = 3_000_000
    pooled.usage_rates.append(
        t.UsageRate(
            usage_type=t.USAGE_TYPE_SMS,
            unit_quantity=1,
            rounding_increment=1,
            included_quantity=2,
            pooled=True,
            tiers=[t.Tier(up_to_quantity=0, price_micros=50_000)],
        )
    )
    first_use = first_use_plan("SP-FU", grace_days=12, threshold=1_500_000)
    any_use = first_use_plan("SP-ANY", grace_days=0, threshold=1)
    used = data_plan("SP-USED", billing_mode=t.BILLING_MODE_WHEN_USED)
    return [own, pooled, first_use, any_use, used]


PLAN_IDS = [plan.plan_id for plan in plans()]


@dataclass(frozen=True)
class Usage:
    sim: int
    period: int  # 0: the period settled in the example, 1: the one left open
    at: float  # fraction of the period's length
    late: float  # sent this fraction of a period after its event time (late record)
    quantity: int
    sms: bool


@dataclass(frozen=True)
class Scenario:
    sims: list[str]  # plan id per SIM
    usage: list[Usage]
    terminations: dict[int, float]  # SIM -> fraction of period 0 at which it is terminated
    checkpoints: set[int]  # run a checkpoint before sending these usage indexes
    commitment: tuple[int, int] | None  # (min billable SIMs, min spend in EUR)
    billing_day: int
    timezone: str


def usage_strategy(sims: int) -> st.SearchStrategy[Usage]:
    return st.builds(
        Usage,
        sim=st.integers(0, sims - 1),
        period=st.sampled_from([0, 0, 1]),
        at=st.floats(0.0, 0.95),
        late=st.one_of(st.just(0.0), st.floats(0.0, 0.5)),
        # Quantities either side of SP-FU's threshold (1,500,000) as often as any others.
        quantity=st.one_of(
            st.integers(0, 900_000),
            st.integers(0, 2_500_000),
            st.sampled_from([800_000, 1_600_000]),
        ),
        sms=st.booleans(),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    count = draw(st.integers(1, 4))
    usage = draw(st.lists(usage_strategy(count), max_size=14))
    return Scenario(
        # FIRST_USE twice as likely: its starts are what moves between checkpoints.
        sims=draw(st.lists(st.sampled_from([*PLAN_IDS, "SP-FU"]), min_size=count, max_size=count)),
        usage=usage,
        terminations=draw(
            st.dictionaries(st.integers(0, count - 1), st.floats(0.05, 0.9), max_size=2)
        ),
        checkpoints=draw(st.sets(st.integers(0, 14), max_size=6)),
        commitment=draw(st.one_of(st.none(), st.tuples(st.integers(0, 4), st.integers(0, 12)))),
        billing_day=draw(st.sampled_from([1, 15, 28])),
        timezone=draw(st.sampled_from(["UTC", "America/New_York"])),
    )


# A FIRST_USE SIM's record below the threshold is checkpointed as uncharged; a late record
# before it then makes it the first use: the stored row holds a record the SIM's billing
# start now charges (the third part of usage_state.period_facts). Rare in random draws.
MOVED_START = Scenario(
    sims=["SP-FU", "SP-POOL"],
    usage=[
        Usage(sim=0, period=0, at=0.3, late=0.0, quantity=1_000_000, sms=False),
        Usage(sim=0, period=0, at=0.1, late=0.3, quantity=600_000, sms=False),
        Usage(sim=1, period=0, at=0.2, late=0.0, quantity=5_000_000, sms=False),
        Usage(sim=0, period=1, at=0.1, late=0.0, quantity=100, sms=True),
    ],
    terminations={},
    checkpoints={1},
    commitment=(2, 4),
    billing_day=1,
    timezone="UTC",
)

# Issue 20's case without a restart: a FIRST_USE SIM's record below its threshold, the grace
# period ends (billing starts at the deadline: 12 days, before 0.55 of any period), then a
# late record before it that reaches the threshold at it: the start moves back from the
# deadline to that record. And a SIM billing on any data use whose first record is followed
# by an earlier one: the start moves to the later-sent, earlier record.
LATE_AFTER_GRACE = Scenario(
    sims=["SP-FU", "SP-ANY"],
    usage=[
        Usage(sim=0, period=0, at=0.2, late=0.0, quantity=800_000, sms=False),
        Usage(sim=0, period=0, at=0.1, late=0.45, quantity=800_000, sms=False),
        Usage(sim=1, period=0, at=0.3, late=0.0, quantity=10, sms=False),
        Usage(sim=1, period=0, at=0.25, late=0.1, quantity=10, sms=False),
    ],
    terminations={},
    checkpoints={1, 3},
    commitment=None,
    billing_day=15,
    timezone="UTC",
)


async def facts_both_ways(
    app: Application, account_id: str, period: str
) -> tuple[list[SimPeriodFacts], list[SimPeriodFacts]]:
    """(memory's, PostgreSQL's) facts of the account-period, read under the state lock:
    every committed record is counted in memory and none is being committed."""
    async with counted(app):
        memory = app.cache.period_facts(account_id, period)
        async with app.pool.acquire() as conn, conn.transaction():
            stored = await usage_state.period_facts(conn, account_id, period)
    return sorted(memory, key=lambda f: f.iccid), stored


def invoice_of(app: Application, account_id: str, period: Period, facts: Any) -> Invoice:
    account = app.cache.accounts[account_id]
    return compute_invoice(account, app.cache.plans, period, facts, final=False)


def at(period: Period, fraction: float) -> datetime:
    return period.start + (period.end - period.start) * fraction


def mismatches(app: Application) -> float:
    value = app.metrics.registry.get_sample_value("rating_settlement_mismatches_total")
    return value or 0.0


class Example:
    """One scenario through the real service, on a fresh account and fresh SIMs, starting
    at the first period after the test clock's now (the clock only moves forward)."""

    def __init__(self, app: Application, stubs: Stubs, number: int, scenario: Scenario) -> None:
        self.app, self.stubs, self.scenario = app, stubs, scenario
        self.account_id = f"SP{number}"
        self.sims = iccids(10_000 + 10 * number, len(scenario.sims))
        self.rules = {plan.plan_id: PlanRules.from_proto(plan) for plan in plans()}
        self.plan_of = dict(zip(self.sims, scenario.sims, strict=True))
        self.provisioned_at = T0
        self.accepted: defaultdict[str, list[tuple[datetime, int, int]]] = defaultdict(list)
        self.terminated: dict[str, datetime] = {}
        # What the records' answers showed: how many were charged, refused, started billing
        # by first use, moved a billing start earlier (late records).
        self.seen: Counter[str] = Counter()

    async def run(self) -> None:
        s, app, stubs = self.scenario, self.app, self.stubs
        tz, day = s.timezone, s.billing_day
        p0 = next_period(period_containing(app.clock.now(), tz, day), tz, day)
        p1 = next_period(p0, tz, day)
        await advance(stubs, p0.start)
        self.provisioned_at = p0.start
        schedule = []
        if s.commitment is not None:
            schedule.append(step(p0.name, s.commitment[0], "SP-OWN", s.commitment[1] * EUR))
        await put_account(stubs, self.account_id, timezone=tz, billing_day=day, schedule=schedule)
        for iccid, plan_id in zip(self.sims, s.sims, strict=True):
            request = p.ProvisionSimsRequest(
                account_id=self.account_id, plan_id=plan_id, iccids=[iccid]
            )
            request.provisioned_at.FromDatetime(p0.start)
            await stubs.provisioning.ProvisionSims(request)
        # Every action at the instant it is sent; the clock moves forward to it.
        # Callables, not coroutines: a failure leaves none of them created and never awaited.
        actions: list[tuple[datetime, int, Callable[[], Awaitable[None]] | None]] = []
        for sim, fraction in s.terminations.items():
            when = at(p0, fraction)
            actions.append((when, -1, partial(self._terminate, self.sims[sim], when)))
        settle_at = p0.end + HOUR  # before the worker's late usage window ends
        for n, u in enumerate(s.usage):
            period = p0 if u.period == 0 else p1
            event = at(period, u.at)
            sent = min(event + (period.end - period.start) * u.late, period.end - HOUR)
            sent = max(sent, event)
            if u.period == 1:
                sent = max(sent, settle_at + HOUR)
            kind = t.USAGE_TYPE_SMS if u.sms else t.USAGE_TYPE_DATA
            quantity = u.quantity % 5 if u.sms else u.quantity
            one = record(f"{self.account_id}-{n}", self.sims[u.sim], quantity, event, kind)
            actions.append((sent, n, partial(self._send, n, one)))
        actions.append((settle_at, len(s.usage), None))
        actions.sort(key=lambda a: (a[0], a[1]))
        for when, _, action in actions:
            if when > app.clock.now():
                await advance(stubs, when)
            if action is not None:
                await action()
            else:
                await self._compare(p0)
                await self._settle(p0)
        await self._compare(p1)

    async def _send(self, n: int, one: t.UsageRecord) -> None:
        if n in self.scenario.checkpoints:
            await self.app.checkpoint.run_once()
        [result] = await rate(self.stubs, one)
        got = (result.status, result.rated_quantity, result.charged, result.started_billing)
        assert got == self._expected(one), one

    def _expected(self, one: t.UsageRecord) -> tuple[int, int, bool, bool]:
        """(status, rated quantity, charged, started_billing) the record must get now: the
        SIM's billing start recomputed from its records accepted so far (this one too) at
        the service's clock, by docs/activation.md."""
        iccid, when = one.iccid, one.event_time.ToDatetime(tzinfo=UTC)
        plan = self.rules[self.plan_of[iccid]]
        terminated = self.terminated.get(iccid)
        if terminated is not None and when >= terminated:
            self.seen["refused"] += 1
            return t.RECORD_STATUS_AFTER_TERMINATION, 0, False, False
        now, records = self.app.clock.now(), self.accepted[iccid]
        before = billing_start(plan, self.provisioned_at, terminated, records, now)
        records.append((when, one.usage_type, one.quantity))
        after = billing_start(plan, self.provisioned_at, terminated, records, now)
        charged = after is not None and when >= after[0]
        by_first_use = after is not None and after != before and after[1] == FIRST_USE_START
        moved = before is not None and after is not None and after[0] < before[0]
        self.seen.update(
            name
            for name, seen in (("charged", charged), ("first use", by_first_use), ("moved", moved))
            if seen
        )
        started = by_first_use and after is not None and after[0] == when
        return (
            t.RECORD_STATUS_RATED,
            rated(one.quantity, plan.rates.get(one.usage_type)),
            charged,
            started,
        )

    async def _terminate(self, iccid: str, when: datetime) -> None:
        await terminate(self.stubs, iccid, when)
        self.terminated[iccid] = when

    async def _compare(self, period: Period) -> None:
        memory, stored = await facts_both_ways(self.app, self.account_id, period.name)
        assert stored == memory
        assert invoice_of(self.app, self.account_id, period, stored) == invoice_of(
            self.app, self.account_id, period, memory
        )

    async def _settle(self, period: Period) -> None:
        """Settle through the API: the stored invoice (computed from PostgreSQL) is the one
        memory's facts give, SIM breakdown included, and the check found no difference."""
        async with counted(self.app):
            memory = self.app.cache.period_facts(self.account_id, period.name)
        before = mismatches(self.app)
        await settle(self.stubs, period.name, self.account_id)
        async with self.app.pool.acquire() as conn:
            stored = await invoices.fetch_invoice(conn, self.account_id, period.name)
        assert stored is not None
        account = self.app.cache.accounts[self.account_id]
        expected = compute_invoice(
            account, self.app.cache.plans, period, memory, final=True, settled_at=stored.settled_at
        )
        assert stored == expected
        assert mismatches(self.app) == before


def on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=120)


def property_seed() -> int:
    """The seed of this run: RATING_SETTLEMENT_SEED when set (a replay), else a fresh one."""
    chosen = os.environ.get(SEED_VARIABLE, "").strip()
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


async def test_invoices_from_postgresql_equal_invoices_from_memory(
    start_app: AppFactory, database_url: str
) -> None:
    """Random scenarios (SIMs on per-SIM, pooled, FIRST_USE and WHEN_USED plans; records in
    a period that is settled and in the next, left open; late records, some moving a
    billing start; terminations; commitments; checkpoints at random points, so the stored
    state is aggregates plus records after the watermark plus uncharged records a moved
    start charges): for every account-period the facts, and so the invoices, read from
    PostgreSQL equal memory's, before settlement and as settled.

    One server for all examples, each on a fresh account and SIMs from the first period
    after the test clock's now. hypothesis runs in a worker thread and hands each scenario
    to the server's event loop; a failure is reported and shrunk the hypothesis way (the
    falsifying scenario, and `print_blob` for `@reproduce_failure`). Every run draws a
    fresh seed and prints it; RATING_SETTLEMENT_SEED=N replays it. A quarter of the
    profile's examples: 25 by default, more under the `ci` profile (tests/conftest.py).
    The hypothesis statistics printed at the end (hypothesis.event) show how many examples
    charged usage, set a billing start by first use or moved one earlier; hypothesis
    targets the last two. The run must have shown each (the explicit examples are there
    for the last two), and its generated examples must have charged usage."""
    chosen = property_seed()
    replay = f"{SEED_VARIABLE}={chosen}"
    print(f"settlement property seed {chosen}: replay with {replay}")
    app, stubs = await start_app(clock_start=T0)
    for plan in plans():
        await stubs.catalog.PutPlan(c.PutPlanRequest(plan=plan))
    loop = asyncio.get_running_loop()
    examples = iter(range(1_000_000))
    shown: Counter[str] = Counter()  # examples that showed each
    generated: Counter[str] = Counter()  # of them, those hypothesis generated

    @seed(chosen)
    @settings(PROPERTY, max_examples=settings().max_examples // 4, print_blob=True)
    @given(scenarios())
    @example(MOVED_START)
    @example(LATE_AFTER_GRACE)
    def check(scenario: Scenario) -> None:
        run = Example(app, stubs, next(examples), scenario)
        on_loop(loop, run.run())
        for name, label in (
            ("charged", "records charged"),
            ("first use", "a billing start set or moved by first use"),
            ("moved", "a billing start moved earlier by a late record"),
            ("refused", "records refused after termination"),
        ):
            event(f"{label}: {'yes' if run.seen[name] else 'no'}")
        target(float(run.seen["moved"]), label="billing starts moved earlier")
        target(float(run.seen["first use"]), label="billing starts set by first use")
        shown.update(name for name in run.seen if run.seen[name])
        if scenario not in (MOVED_START, LATE_AFTER_GRACE):
            generated.update(name for name in run.seen if run.seen[name])

    statistics: list[str] = []

    def collect(found: Any) -> None:
        statistics.append(describe_statistics(found))

    def check_with_statistics() -> None:
        # hypothesis hands a run's statistics (its events) to this collector when it is done;
        # typed as holding None only, its default.
        with collector.with_value(collect):  # type: ignore[arg-type]
            check()

    try:
        await asyncio.to_thread(check_with_statistics)
    except Exception as exc:
        exc.add_note(f"settlement property seed {chosen}: replay with {replay}")
        raise
    print("\n".join(statistics))
    print(f"examples that showed each: {dict(shown)}; generated ones: {dict(generated)}")
    assert shown["first use"] > 0 and shown["moved"] > 0, shown
    assert generated["charged"] > 0, generated
    assert mismatches(app) == 0
    await app.checkpoint.run_once()
    async with app.pool.acquire() as conn:
        assert await stored_state(conn) == await expected_state(conn)


async def test_settles_a_period_that_is_not_in_memory(
    start_app: AppFactory, database_url: str
) -> None:
    """Settle an account-period whose counters are in no process's memory: the invoice is
    computed from PostgreSQL alone and equals the bill previewed from memory before.

    The scenario: a first instance rates January (a FIRST_USE SIM's record below its
    threshold is stored as uncharged) and stops (its last checkpoint holds all of it). A
    second instance starts on the same database and rates more of January, after its
    watermark: a late record of one SIM, and one of the FIRST_USE SIM that makes the
    stored uncharged record its first use (billing starts there: the stored row holds as
    uncharged a record that is charged now). Its preview is the expected bill. Then
    January leaves its memory (`StateCache.evict_period`, under the state lock): the state
    of an instance that does not hold those SIMs' counters, as a start that loaded nothing
    of January would leave it (a start loads every open period, so a restart alone cannot
    produce this state). Settling January must give the previewed invoice; the memory
    check reports the difference (memory holds nothing of January) and counts it, while
    the invoice is PostgreSQL's."""
    app, stubs = await start_app(clock_start=T0)
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P")))
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=first_use_plan("FU", threshold=1_000_000)))
    await put_account(stubs, "A", schedule=[step("2026-01", 3, "P", 5 * EUR)])
    own, waiting = iccids(1, 2), iccids(50, 1)
    for sims, plan_id in ((own, "P"), (waiting, "FU")):
        request = p.ProvisionSimsRequest(account_id="A", plan_id=plan_id, iccids=sims)
        request.provisioned_at.FromDatetime(T0)
        await stubs.provisioning.ProvisionSims(request)
    await advance(stubs, T0 + 10 * DAY)
    await rate(stubs, record("a1", own[0], 8_000_000, T0 + 2 * DAY))
    await rate(stubs, record("u1", waiting[0], 600_000, T0 + 8 * DAY))  # uncharged
    await app.checkpoint.run_once()
    await rate(stubs, record("a2", own[1], 9_000_000, T0 + 9 * DAY))  # after the watermark
    await app.stop()

    app, stubs = await start_app(clock_start=T0 + 20 * DAY)
    await rate(stubs, record("a3", own[0], 7_000_000, T0 + 15 * DAY))
    # 500,000 + 600,000 reach the threshold at "u1": billing starts at day 8, and "u1",
    # stored as uncharged by the first instance's checkpoint, is charged now.
    [late] = await rate(stubs, record("u0", waiting[0], 500_000, T0 + 3 * DAY))
    assert not late.charged
    assert app.cache.sims[waiting[0]].billing_started_at == T0 + 8 * DAY
    expected = await preview(stubs, "2026-01")
    assert expected.total_micros > 0

    async with app.state_lock:
        assert app.cache.evict_period("A", "2026-01") == 3
    await advance(stubs, T0 + 31 * DAY + HOUR)  # January has ended, still inside the window
    settled = await settle(stubs, "2026-01")
    assert settled.total_micros == expected.total_micros
    assert list(settled.lines) == list(expected.lines)
    assert settled.billable_sims == expected.billable_sims
    assert mismatches(app) == 1
    await app.checkpoint.run_once()  # deletes the stored uncharged record now charged
    async with app.pool.acquire() as conn:
        assert await stored_state(conn) == await expected_state(conn)
