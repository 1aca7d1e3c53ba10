"""Restart equivalence: for any traffic and any restart points, every answer and every
invoice equals that of the same run without restarts.

A hypothesis state machine drives two real `python -m service` processes on the test
clock (tests/support/twins.py): the reference is never restarted; the subject is stopped
cleanly (SIGTERM) or killed (SIGKILL) at random moments, while idle, a few milliseconds
after a call or while a usage batch is in flight, and checkpoints every 20 ms, so kills
also land during checkpoints; one rule kills it inside a checkpoint's transaction for sure,
holding the checkpoint there with a table lock. Both get the same calls: usage (late
records reaching back over earlier periods and before provisioning, exact duplicates,
reused ids with other contents, records that cross first-use thresholds and move billing
starts earlier),
plan and account changes, provisioning, suspension and termination, clock advances (grace
expiries, automatic settlement) and explicit settlements. Every answer must be the same,
and after every step so must every SIM's status, AuthorizeSession's answer for every SIM
and usage type, the bill preview of the open and the previous period of each account, and
every stored invoice.

A batch in flight when the subject is killed may or may not have been committed: like a
mediation platform, the test sends it again after the restart. Its records may then be
answered DUPLICATE where the reference answered RATED (they were stored before the kill);
everything else about them must be equal, and so must everything after.

Seeds: each run draws a fresh seed and prints it; `RATING_EQUIVALENCE_SEED=N` replays it
(the calls are the same; which records a kill catches in flight may differ, it is timing).
`RATING_EQUIVALENCE_EXAMPLES` sets how many runs of `STEPS` steps one test makes (default
`EXAMPLES`: more in CI).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import uuid
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from hypothesis import HealthCheck, Phase, event, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from rating.v1 import billing_service_pb2 as b
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import clock_service_pb2 as k
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from tests.support import T0, data_plan, iccids
from tests.support.postgres import create_database, drop_database
from tests.support.twins import (
    SUBJECT_CHECKPOINT_S,
    Answer,
    Service,
    Twins,
    answer_of,
    assert_same,
)

pytestmark = pytest.mark.slow

SEED_VARIABLE = "RATING_EQUIVALENCE_SEED"
STEPS = 30
EXAMPLES = 20 if os.environ.get("CI") else 10  # worlds of up to STEPS steps each
MiB = 1_048_576
EUR = 1_000_000
HOUR = timedelta(hours=1)
T = TypeVar("T")

ACCOUNTS = {"A": ("UTC", 1), "B": ("Europe/Berlin", 15)}
PLANS = ("FUP", "FUW", "IMM")  # each world's ids end in its number
USAGE_TYPES = (t.USAGE_TYPE_DATA, t.USAGE_TYPE_SMS, t.USAGE_TYPE_VOICE)
QUANTITIES = {
    t.USAGE_TYPE_DATA: (1, 1_000, 300_000, 600_000, 1_100_000, 3 * MiB),
    t.USAGE_TYPE_SMS: (1, 2),
    t.USAGE_TYPE_VOICE: (60, 600),
}
UNKNOWN_SIM = iccids(900, 1)[0]


def plans(world: str, fee_micros: int = 2 * EUR, data_price: int = 100_000) -> list[t.Plan]:
    """FUP: first use at 1 MiB of data, 10 days' grace, a pooled 1 MiB data allowance per
    SIM. FUW: first use at 3 SMS or 2 MiB, 5 days' grace, billed when used, undivided fee.
    IMM: billed from provisioning, 5 MiB included per SIM, voice priced."""
    fup = data_plan(f"FUP{world}", subscription_fee_micros=fee_micros)
    fup.activation.mode = t.ACTIVATION_MODE_FIRST_USE
    fup.activation.thresholds.append(
        t.ActivationThreshold(usage_type=t.USAGE_TYPE_DATA, quantity=MiB)
    )
    fup.activation.grace_period.FromSeconds(10 * 86_400)
    fup.usage_rates[0].included_quantity = MiB
    fup.usage_rates[0].pooled = True
    fup.usage_rates[0].tiers[0].price_micros = data_price
    fup.usage_rates.append(
        t.UsageRate(
            usage_type=t.USAGE_TYPE_SMS,
            unit_quantity=1,
            rounding_increment=1,
            tiers=[t.Tier(up_to_quantity=0, price_micros=50_000)],
        )
    )
    fuw = data_plan(
        f"FUW{world}", billing_mode=t.BILLING_MODE_WHEN_USED, proration=t.PRORATION_NONE
    )
    fuw.activation.mode = t.ACTIVATION_MODE_FIRST_USE
    fuw.activation.thresholds.extend(
        [
            t.ActivationThreshold(usage_type=t.USAGE_TYPE_SMS, quantity=3),
            t.ActivationThreshold(usage_type=t.USAGE_TYPE_DATA, quantity=2 * MiB),
        ]
    )
    fuw.activation.grace_period.FromSeconds(5 * 86_400)
    fuw.usage_rates[0].included_quantity = 0
    del fuw.usage_rates[0].tiers[:]
    fuw.usage_rates[0].tiers.extend(
        [
            t.Tier(up_to_quantity=2 * MiB, price_micros=200_000),
            t.Tier(up_to_quantity=0, price_micros=50_000),
        ]
    )
    imm = data_plan(f"IMM{world}")
    imm.usage_rates[0].included_quantity = 5 * MiB
    imm.usage_rates.append(
        t.UsageRate(
            usage_type=t.USAGE_TYPE_VOICE,
            unit_quantity=60,
            rounding_increment=60,
            tiers=[t.Tier(up_to_quantity=0, price_micros=20_000)],
        )
    )
    return [fup, fuw, imm]


def account(world: str, account_id: str, min_spend_micros: int = 5 * EUR) -> t.Account:
    timezone, billing_day = ACCOUNTS[account_id]
    return t.Account(
        account_id=f"{account_id}{world}",
        currency="EUR",
        timezone=timezone,
        billing_day=billing_day,
        commitment_schedule=[
            t.CommitmentStep(
                effective_period="2026-01",
                min_billable_sims=3,
                sim_commitment_plan_id=f"FUP{world}",
                min_spend_micros=min_spend_micros,
            )
        ],
    )


def period_name(when: datetime, account_id: str) -> str:
    """The name of the account's period containing `when`, near enough to choose which
    periods to look at (the service decides what they hold)."""
    _, billing_day = ACCOUNTS[account_id]
    month_start = when if when.day >= billing_day else when - timedelta(days=when.day)
    return f"{month_start.year:04d}-{month_start.month:02d}"


def previous_period(name: str) -> str:
    year, month = map(int, name.split("-"))
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"


class RestartEquivalence(RuleBasedStateMachine):
    """See the module docstring. Each example starts its own pair of services on fresh
    databases at the same clock: what hypothesis draws depends on nothing else, so a seed
    replays the same calls."""

    loop: asyncio.AbstractEventLoop
    server_url: str
    template: str
    worlds = 0

    def __init__(self) -> None:
        super().__init__()
        RestartEquivalence.worlds += 1
        self.world = str(RestartEquivalence.worlds)
        self.now = T0 + 5 * timedelta(days=1)
        self.databases: list[str] = []
        self.twins: Twins | None = None
        self.sims: list[str] = []
        self.first_use_sims: list[str] = []
        self.provisioned: dict[str, datetime] = {}
        self.sent: dict[str, t.UsageRecord] = {}  # every record id sent, first content
        self.records_drawn = 0
        self.steps: dict[str, int] = {}  # rules run, by name
        self.statuses: dict[str, int] = {}  # record statuses answered, by name

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run on the test's event loop, from hypothesis' thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=300)

    @property
    def both(self) -> Twins:
        assert self.twins is not None, "set_up starts them"
        return self.twins

    def same(self, service: str, method: str, request: Any) -> Answer:
        return self.run(self.both.same(service, method, request))

    def count(self, rule: str, answer: Answer | None = None) -> None:
        self.steps[rule] = self.steps.get(rule, 0) + 1
        if answer is not None and answer.code is grpc.StatusCode.OK:
            for result in answer.response.results:
                name = t.RecordStatus.Name(result.status).removeprefix("RECORD_STATUS_")
                if result.started_billing:
                    name += "+started"
                self.statuses[name] = self.statuses.get(name, 0) + 1
                event(f"record {name}")

    def new_record_id(self) -> str:
        self.records_drawn += 1
        return f"w{self.world}-r{self.records_drawn}"

    def account_id(self, name: str) -> str:
        return f"{name}{self.world}"

    # --- the world ---------------------------------------------------------------------------

    @initialize()
    def set_up(self) -> None:
        async def start() -> Twins:
            for role in ("reference", "subject"):
                name = f"{self.template.removesuffix('_template')}_{role}_{uuid.uuid4().hex[:8]}"
                self.databases.append(await create_database(self.server_url, self.template, name))
            twins = Twins(
                Service(self.databases[0], "30"), Service(self.databases[1], SUBJECT_CHECKPOINT_S)
            )
            await twins.start(self.now)
            return twins

        self.twins = self.run(start())
        for plan in plans(self.world):
            self.same("catalog", "PutPlan", c.PutPlanRequest(plan=plan))
        for name in ACCOUNTS:
            request = c.PutAccountRequest(account=account(self.world, name))
            self.same("catalog", "PutAccount", request)
        # Provisioned before and at the clock, on every plan of both accounts.
        for name, plan_id, days_ago in [
            ("A", "FUP", 5),
            ("A", "FUP", 5),
            ("A", "FUP", 2),
            ("A", "FUW", 5),
            ("A", "IMM", 4),
            ("B", "FUP", 3),
            ("B", "FUP", 0),
            ("B", "IMM", 5),
        ]:
            self.provision(name, plan_id, self.now - timedelta(days=days_ago))

    def provision(self, name: str, plan: str, at: datetime) -> None:
        [iccid] = iccids(int(self.world) * 1_000 + len(self.sims), 1)
        request = p.ProvisionSimsRequest(
            account_id=self.account_id(name), plan_id=f"{plan}{self.world}", iccids=[iccid]
        )
        request.provisioned_at.FromDatetime(at)
        answer = self.same("provisioning", "ProvisionSims", request)
        if answer.response and answer.response.results[0].status == p.PROVISION_STATUS_CREATED:
            self.sims.append(iccid)
            self.provisioned[iccid] = at
            if plan != "IMM":
                self.first_use_sims.append(iccid)

    def teardown(self) -> None:
        print(
            f"  world {self.world}: {sum(self.steps.values())} steps {self.steps},"
            f" clock {self.now:%Y-%m-%d %H:%M}, {len(self.sims)} SIMs,"
            f" records answered {self.statuses}"
        )

        async def stop() -> None:
            if self.twins is not None:
                await self.twins.stop()
            for url in self.databases:
                await drop_database(self.server_url, url)

        self.run(stop())

    # --- traffic -----------------------------------------------------------------------------

    @st.composite
    @staticmethod
    def _record(draw: st.DrawFn, machine: RestartEquivalence) -> t.UsageRecord:
        sent = machine.sent
        if sent and draw(st.integers(0, 9)) == 0:
            return sent[draw(st.sampled_from(sorted(sent)))]  # an exact resend
        iccid = draw(st.sampled_from([*machine.sims, UNKNOWN_SIM]))
        usage_type = draw(st.sampled_from(USAGE_TYPES))
        quantity = draw(st.sampled_from(QUANTITIES[usage_type]))
        # Mostly recent; some late, reaching back over earlier periods and provisioning.
        hours_ago = draw(
            st.one_of(st.integers(0, 48), st.integers(0, 24 * 7), st.integers(0, 24 * 40))
        )
        if sent and draw(st.integers(0, 19)) == 0:
            record_id = draw(st.sampled_from(sorted(sent)))  # a reused id, other contents
        else:
            record_id = machine.new_record_id()
        record = t.UsageRecord(
            record_id=record_id, iccid=iccid, usage_type=usage_type, quantity=quantity
        )
        record.event_time.FromDatetime(machine.now - hours_ago * HOUR)
        return record

    def records(self, data: st.DataObject) -> list[t.UsageRecord]:
        batch = data.draw(st.lists(self._record(self), min_size=1, max_size=6), label="records")
        for record in batch:
            self.sent.setdefault(record.record_id, record)
        return batch

    @rule(data=st.data())
    def rate_usage(self, data: st.DataObject) -> None:
        answer = self.same("rating", "RateUsage", r.RateUsageRequest(records=self.records(data)))
        self.count("rate", answer)

    @precondition(lambda self: bool(self.first_use_sims))
    @rule(data=st.data())
    def approach_first_use(self, data: st.DataObject) -> None:
        """Data records of 600,000 bytes on a FIRST_USE SIM at any instant since its
        provisioning: two of them cross FUP's threshold, and a late one moves the billing
        start earlier, before or after the grace period ended."""
        iccid = data.draw(st.sampled_from(self.first_use_sims), label="iccid")
        span = max(int((self.now - self.provisioned[iccid]) / HOUR), 0)
        batch = []
        for _ in range(data.draw(st.integers(1, 2), label="records")):
            record = t.UsageRecord(
                record_id=self.new_record_id(),
                iccid=iccid,
                usage_type=t.USAGE_TYPE_DATA,
                quantity=600_000,
            )
            hours_ago = data.draw(st.integers(0, span), label="hours ago")
            record.event_time.FromDatetime(self.now - hours_ago * HOUR)
            self.sent[record.record_id] = record
            batch.append(record)
        answer = self.same("rating", "RateUsage", r.RateUsageRequest(records=batch))
        self.count("first use", answer)

    @rule(data=st.data(), delay_ms=st.integers(0, 40), sig=st.sampled_from(["TERM", "KILL"]))
    def stop_while_a_batch_is_in_flight(self, data: st.DataObject, delay_ms: int, sig: str) -> None:
        """The subject stopped `delay_ms` after a batch was sent to it; the batch sent again
        after its restart, as a mediation platform resends what was not acknowledged."""
        request = r.RateUsageRequest(records=self.records(data))
        reference_service, subject_service = self.both.reference, self.both.subject

        async def on_reference() -> Answer:
            return await answer_of(reference_service.call("rating", "RateUsage", request))

        async def in_flight() -> Answer:
            sending = asyncio.ensure_future(
                answer_of(subject_service.call("rating", "RateUsage", request))
            )
            await asyncio.sleep(delay_ms / 1000)  # a random instant, not a wait for a worker
            await subject_service.signal(getattr(signal, f"SIG{sig}"))
            first = await sending
            await subject_service.close()
            await subject_service.start(self.now)
            if first.code is grpc.StatusCode.OK:
                return first
            return await answer_of(subject_service.call("rating", "RateUsage", request))

        reference = self.run(on_reference())
        subject = self.run(in_flight())
        self.count(f"in-flight SIG{sig}", reference)
        if subject.code is grpc.StatusCode.OK and reference.code is grpc.StatusCode.OK:
            pairs = zip(reference.response.results, subject.response.results, strict=True)
            if any(
                x.status == t.RECORD_STATUS_RATED and y.status == t.RECORD_STATUS_DUPLICATE
                for x, y in pairs
            ):
                # Stored before the stop, unacknowledged: DUPLICATE on the resend. The rest of
                # each such result is the first answer's, which the stop lost.
                event("in-flight batch stored before the stop")
                expected = r.RateUsageResponse()
                for x, y in zip(reference.response.results, subject.response.results, strict=True):
                    if x.status == t.RECORD_STATUS_RATED and y.status == t.RECORD_STATUS_DUPLICATE:
                        expected.results.append(y)
                    else:
                        expected.results.append(x)
                reference = Answer(reference.code, reference.details, expected)
        assert_same(f"RateUsage in flight at SIG{sig}", reference, subject)

    @rule(days=st.integers(1, 12))
    def advance_days(self, days: int) -> None:
        """Time moves on by days as often as by hours: grace periods end, periods close."""
        self.advance_clock(24 * days)

    @rule(hours=st.sampled_from([1, 5, 24, 72, 24 * 5, 24 * 9]))
    def advance_clock(self, hours: int) -> None:
        self.now += hours * HOUR
        request = k.AdvanceTimeRequest()
        request.to.FromDatetime(self.now)
        self.same("clock", "AdvanceTime", request)
        self.count("advance")

    @rule(name=st.sampled_from(sorted(ACCOUNTS)), back=st.integers(0, 2))
    def settle(self, name: str, back: int) -> None:
        period = period_name(self.now, name)
        for _ in range(back):
            period = previous_period(period)
        request = b.SettlePeriodRequest(account_id=self.account_id(name), period=period)
        answer = self.same("billing", "SettlePeriod", request)
        self.count("settle" if answer.code is grpc.StatusCode.OK else "settle refused")

    @rule(fee=st.sampled_from([EUR, 2 * EUR, 3 * EUR]), price=st.sampled_from([50_000, 100_000]))
    def change_plans(self, fee: int, price: int) -> None:
        for plan in plans(self.world, fee, price):
            self.same("catalog", "PutPlan", c.PutPlanRequest(plan=plan))
        self.count("plans")

    @rule(name=st.sampled_from(sorted(ACCOUNTS)), spend=st.sampled_from([0, 5 * EUR, 20 * EUR]))
    def change_account(self, name: str, spend: int) -> None:
        request = c.PutAccountRequest(account=account(self.world, name, spend))
        self.same("catalog", "PutAccount", request)
        self.count("account")

    @rule(
        name=st.sampled_from(sorted(ACCOUNTS)),
        plan=st.sampled_from(PLANS),
        days_ago=st.integers(0, 20),
    )
    def provision_one(self, name: str, plan: str, days_ago: int) -> None:
        self.provision(name, plan, self.now - timedelta(days=days_ago))
        self.count("provision")

    @precondition(lambda self: bool(self.sims))
    @rule(data=st.data(), change=st.sampled_from(["SuspendSim", "ResumeSim", "TerminateSim"]))
    def change_sim(self, data: st.DataObject, change: str) -> None:
        iccid = data.draw(st.sampled_from(self.sims), label="iccid")
        if change == "SuspendSim":
            request: Any = p.SuspendSimRequest(iccid=iccid)
        elif change == "ResumeSim":
            request = p.ResumeSimRequest(iccid=iccid)
        else:
            request = p.TerminateSimRequest(iccid=iccid)
            days = data.draw(st.integers(-20, 0), label="effective days ago")
            request.effective_at.FromDatetime(self.now + timedelta(days=days))
        self.same("provisioning", change, request)
        self.count(change)

    # --- restarts ----------------------------------------------------------------------------

    @rule(sig=st.sampled_from(["TERM", "KILL"]), delay_ms=st.integers(0, 60))
    def restart(self, sig: str, delay_ms: int) -> None:
        """Stop the subject `delay_ms` after the last call (its checkpoints run meanwhile)
        and start it again at the same clock."""

        async def wait() -> None:
            await asyncio.sleep(delay_ms / 1000)  # a random instant, not a wait for a worker

        self.run(self.both.restart_subject(self.now, getattr(signal, f"SIG{sig}"), wait))
        self.count(f"restart SIG{sig}")

    @precondition(lambda self: bool(self.sims))
    @rule(data=st.data(), table=st.sampled_from(["usage_aggregates", "usage_checkpoint"]))
    def kill_during_a_checkpoint(self, data: st.DataObject, table: str) -> None:
        """Kill the subject inside a checkpoint's transaction: `table` is locked against
        writes in its database, a record makes a checkpoint due, and once the checkpoint
        waits for the lock (its earlier writes made, uncommitted) the subject is killed."""
        iccid = data.draw(st.sampled_from(self.sims), label="iccid")
        record = t.UsageRecord(
            record_id=self.new_record_id(),
            iccid=iccid,
            usage_type=t.USAGE_TYPE_SMS,
            quantity=1,
        )
        record.event_time.FromDatetime(self.now)
        self.sent[record.record_id] = record
        subject = self.both.subject

        async def kill() -> str:
            conn = await asyncpg.connect(subject.database_url)
            try:
                async with conn.transaction():
                    await conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
                    answer = await self.both.same(
                        "rating", "RateUsage", r.RateUsageRequest(records=[record])
                    )
                    if answer.response.results[0].status != t.RECORD_STATUS_RATED:
                        return "no checkpoint due"
                    await checkpoint_waiting_for_lock(conn)
                    await subject.stop(signal.SIGKILL)
            finally:
                await conn.close()
            await subject.start(self.now)
            return "killed during a checkpoint"

        self.count(self.run(kill()))

    # --- what both must answer alike after every step ----------------------------------------

    @invariant()
    def same_views(self) -> None:
        for iccid in [*self.sims, UNKNOWN_SIM]:
            self.same("rating", "GetSimStatus", r.GetSimStatusRequest(iccid=iccid))
            for usage_type in USAGE_TYPES:
                request = r.AuthorizeSessionRequest(
                    iccid=iccid, usage_type=usage_type, requested_quantity=MiB
                )
                self.same("rating", "AuthorizeSession", request)
        for name in ACCOUNTS:
            account_id = self.account_id(name)
            period = period_name(self.now, name)
            for which in (period, previous_period(period)):
                preview = b.GetBillPreviewRequest(account_id=account_id, period=which)
                self.same("billing", "GetBillPreview", preview)
            self.same("billing", "ListInvoices", b.ListInvoicesRequest(account_id=account_id))


async def checkpoint_waiting_for_lock(conn: asyncpg.Connection) -> None:
    """Until another session of this database waits for a lock (the checkpoint, the only
    writer of the locked tables here); at most 10 s."""
    async with asyncio.timeout(10):
        while not await conn.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                     AND wait_event_type = 'Lock'"""
        ):
            pass  # each look-up is a round trip to the server: no busy loop


def equivalence_seed() -> int:
    chosen = os.environ.get(SEED_VARIABLE, "").strip()
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


async def test_restarts_change_no_answer_and_no_bill(server_url: str, template_db: str) -> None:
    chosen = equivalence_seed()
    replay = f"{SEED_VARIABLE}={chosen}"
    print(f"restart equivalence seed {chosen}: replay with {replay}")
    examples = int(os.environ.get("RATING_EQUIVALENCE_EXAMPLES", "0")) or EXAMPLES
    RestartEquivalence.loop = asyncio.get_running_loop()
    RestartEquivalence.server_url = server_url
    RestartEquivalence.template = template_db
    RestartEquivalence.worlds = 0
    machine = seed(chosen)(RestartEquivalence)
    run_settings = settings(
        max_examples=examples,
        stateful_step_count=STEPS,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each step restarts processes
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    try:
        await asyncio.to_thread(run_state_machine_as_test, machine, settings=run_settings)
    except BaseException as exc:
        exc.add_note(f"replay with {replay}")
        raise
