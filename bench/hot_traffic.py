"""What the hot benchmark loads, and what every answer to it must be.

The SIMs are in accounts of `SIMS_PER_ACCOUNT`; account n is on `PER_SIM_PLAN` (UTC) when
n is even and on `POOLED_PLAN` (Europe/Berlin) when it is odd. Both plans bill from
provisioning (IMMEDIATE) and price DATA in two tiers; the pooled one shares its allowance
across the account's SIMs. Every SIM is provisioned at `PROVISIONED_AT`; the service's
test clock stands at `CLOCK` (2026-01-29), so January is the **open** period and every
record below counts in it.

The usage: `records` records over random SIMs (fixed seed), event times at random
seconds of 2026-01-01 .. 2026-01-28, a share `SMS_SHARE` SMS (1..5 messages, a type the
plans do not price: rated at its raw quantity, no price) and the rest DATA (1 B..4 MiB).
The allowances are sized to this traffic when records = SIMs (the default): a per-SIM
allowance of 2 MiB against a mean of 1.6 MiB of DATA per SIM, and pools of 1,000 SIMs near
their allowance, so the answers spread over inside and outside the allowance, both
tiers, and estimates that cross a tier bound.

`Expected` recomputes, from the records alone and the plans as sent (not through the
service's code), what AuthorizeSession and GetSimStatus must answer for each SIM, as the
product contract states it (docs/rating.md, docs/activation.md, rating_service.proto):
the SIM's own charged rated DATA (or its account's on a pooled plan) against its
allowance (or the pool's: included x the account's SIMs on the plan), the marginal tier
price at that position, what is left of the allowance, and the estimate of the requested
quantity (rounded up to the increment) priced through the tiers, half-up to whole micros;
the status with the raw quantity per usage type of the current period.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp

from bench.workload import ROUNDING_INCREMENT, Workload, batch_id, sim_iccids
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t

PROVISIONED_AT = datetime(2026, 1, 1, tzinfo=UTC)
CLOCK = datetime(2026, 1, 29, tzinfo=UTC)
PERIOD = "2026-01"  # the open period of both time zones at CLOCK
_FIRST_EVENT = int((PROVISIONED_AT + timedelta(minutes=1)).timestamp())
_EVENT_SPAN = int(timedelta(days=27, hours=23).total_seconds())  # ends 2026-01-28 23:01Z
SIMS_PER_ACCOUNT = 1_000
MIB = 1_048_576
MAX_DATA = 4 * MIB
SMS_SHARE = 0.2
REQUESTED_QUANTITY = MIB  # what every AuthorizeSession asks for (DATA)
SEED = 29
ZONES = ("UTC", "Europe/Berlin")  # by account parity: per-SIM, pooled


def _plan(plan_id: str, pooled: bool, included: int, tier_bound: int) -> t.Plan:
    return t.Plan(
        plan_id=plan_id,
        currency="EUR",
        subscription_fee_micros=2_000_000,
        activation=t.Activation(mode=t.ACTIVATION_MODE_IMMEDIATE),
        billing_mode=t.BILLING_MODE_ALWAYS,
        proration=t.PRORATION_DAILY,
        usage_rates=[
            t.UsageRate(
                usage_type=t.USAGE_TYPE_DATA,
                unit_quantity=MIB,
                rounding_increment=ROUNDING_INCREMENT,
                included_quantity=included,
                pooled=pooled,
                tiers=[
                    t.Tier(up_to_quantity=tier_bound, price_micros=100_000),
                    t.Tier(up_to_quantity=0, price_micros=40_000),
                ],
            )
        ],
    )


# Per SIM: 2 MiB included; 0.10 EUR per MiB for the first 2 MiB above it, then 0.04.
PER_SIM_PLAN = _plan("hot-per-sim", pooled=False, included=2 * MIB, tier_bound=2 * MIB)
# Pooled: 1,638 KiB per SIM, the mean DATA per SIM when records = SIMs (4/5 of the records
# are DATA, of 2 MiB on average): about half the pools of 1,000 SIMs end above their
# allowance, by up to ~130 MiB; the same prices, the first tier 50 MiB of the account's
# chargeable DATA.
POOLED_PLAN = _plan("hot-pooled", pooled=True, included=1_638 * 1_024, tier_bound=50 * MIB)


def accounts(sims: int) -> int:
    return -(-sims // SIMS_PER_ACCOUNT)


def account_id(n: int) -> str:
    return f"hot-account-{n:05d}"


def plan_of(account: int) -> t.Plan:
    return POOLED_PLAN if account % 2 else PER_SIM_PLAN


def account_proto(n: int) -> t.Account:
    return t.Account(account_id=account_id(n), currency="EUR", timezone=ZONES[n % 2])


def sims_of(account: int, sims: int) -> range:
    return range(account * SIMS_PER_ACCOUNT, min(sims, (account + 1) * SIMS_PER_ACCOUNT))


class HotRecord(NamedTuple):
    record_id: str
    sim: int  # index into bench.workload.sim_iccids()
    usage_type: int  # t.USAGE_TYPE_*
    quantity: int
    event_seconds: int


def records(sims: int, count: int, seed: int = SEED) -> Iterator[HotRecord]:
    rng = random.Random(seed)
    for k in range(count):
        sim = rng.randrange(sims)
        if rng.random() < SMS_SHARE:
            kind, quantity = t.USAGE_TYPE_SMS, rng.randrange(1, 6)
        else:
            kind, quantity = t.USAGE_TYPE_DATA, rng.randrange(1, MAX_DATA)
        yield HotRecord(
            f"hot-{k:09d}", sim, kind, quantity, _FIRST_EVENT + rng.randrange(_EVENT_SPAN)
        )


def serialized_requests(workload: Workload) -> list[list[bytes]]:
    """The StreamUsage requests of `workload.records` records over `workload.sims` SIMs, as
    bench.client sends them (a RequestBuilder): batch b on stream b % streams."""
    iccids = sim_iccids(workload)
    streams: list[list[bytes]] = [[] for _ in range(workload.streams)]
    batch: list[t.UsageRecord] = []
    index = 0

    def flush() -> None:
        nonlocal batch, index
        request = r.StreamUsageRequest(batch_id=batch_id(index), records=batch)
        streams[index % workload.streams].append(request.SerializeToString())
        batch, index = [], index + 1

    for rec in records(workload.sims, workload.records):
        batch.append(
            t.UsageRecord(
                record_id=rec.record_id,
                iccid=iccids[rec.sim],
                usage_type=rec.usage_type,  # type: ignore[arg-type]
                quantity=rec.quantity,
                event_time=Timestamp(seconds=rec.event_seconds),
                session_id=f"hot-session-{rec.sim}",
            )
        )
        if len(batch) == workload.batch:
            flush()
    if batch:
        flush()
    return streams


# --- the expected answers -----------------------------------------------------------------


def _rounded_up(quantity: int, increment: int) -> int:
    return -(-quantity // increment) * increment


def _price(rate: t.UsageRate, chargeable: int) -> Fraction:
    """Micros of `chargeable` units through the graduated tiers (exact)."""
    total, lower = Fraction(0), 0
    for tier in rate.tiers:
        upper = tier.up_to_quantity or chargeable
        portion = min(chargeable, upper) - lower
        if portion <= 0:
            break
        total += Fraction(portion * tier.price_micros, rate.unit_quantity)
        lower = upper
    return total


def _marginal_price(rate: t.UsageRate, chargeable: int) -> int:
    """The price of the tier the next chargeable unit falls in."""
    for tier in rate.tiers:
        if tier.up_to_quantity == 0 or chargeable < tier.up_to_quantity:
            return tier.price_micros
    return rate.tiers[-1].price_micros


def _half_up(amount: Fraction) -> int:
    return math.floor(amount + Fraction(1, 2))


@dataclass
class Expected:
    """Per SIM (by index) what was sent in the open period, and per pooled account the
    charged rated DATA of its SIMs."""

    sims: int
    iccids: list[str]
    data_raw: list[int]
    data_rated: list[int]
    sms_raw: list[int]
    pool_rated: dict[int, int]

    @classmethod
    def of(cls, sims: int, count: int) -> Expected:
        data_raw, data_rated, sms_raw = [0] * sims, [0] * sims, [0] * sims
        increment = PER_SIM_PLAN.usage_rates[0].rounding_increment
        assert increment == POOLED_PLAN.usage_rates[0].rounding_increment
        for rec in records(sims, count):
            if rec.usage_type == t.USAGE_TYPE_DATA:
                data_raw[rec.sim] += rec.quantity
                data_rated[rec.sim] += _rounded_up(rec.quantity, increment)
            else:
                sms_raw[rec.sim] += rec.quantity
        pool_rated = {
            n: sum(data_rated[i] for i in sims_of(n, sims))
            for n in range(accounts(sims))
            if plan_of(n).usage_rates[0].pooled
        }
        iccids = sim_iccids(Workload(records=1, sims=sims))
        return cls(sims, iccids, data_raw, data_rated, sms_raw, pool_rated)

    def position(self, sim: int) -> tuple[t.UsageRate, int, int]:
        """(DATA rate, charged rated quantity so far, allowance) the SIM is priced at.
        Every record is charged: the plans bill from provisioning, before every event."""
        account = sim // SIMS_PER_ACCOUNT
        rate = plan_of(account).usage_rates[0]
        if rate.pooled:
            billed = len(sims_of(account, self.sims))
            return rate, self.pool_rated[account], rate.included_quantity * billed
        return rate, self.data_rated[sim], rate.included_quantity

    def authorization(self, sim: int) -> r.AuthorizeSessionResponse:
        rate, used, included = self.position(sim)
        chargeable_before = max(0, used - included)
        requested = _rounded_up(REQUESTED_QUANTITY, rate.rounding_increment)
        chargeable_after = max(0, used + requested - included)
        estimate = _price(rate, chargeable_after) - _price(rate, chargeable_before)
        return r.AuthorizeSessionResponse(
            allowed=True,
            state=t.SIM_STATE_ACTIVE,
            billing_started=True,
            would_start_billing=False,
            price_micros=_marginal_price(rate, chargeable_before),
            unit_quantity=rate.unit_quantity,
            remaining_included_quantity=max(0, included - used),
            estimated_charge_micros=_half_up(estimate),
        )

    def status(self, sim: int) -> r.GetSimStatusResponse:
        account = sim // SIMS_PER_ACCOUNT
        provisioned = Timestamp(seconds=int(PROVISIONED_AT.timestamp()))
        usage = [
            t.UsageQuantity(usage_type=kind, quantity=quantity)  # type: ignore[arg-type]
            for kind, quantity in (
                (t.USAGE_TYPE_DATA, self.data_raw[sim]),
                (t.USAGE_TYPE_SMS, self.sms_raw[sim]),
            )
            if quantity
        ]
        return r.GetSimStatusResponse(
            status=t.SimStatus(
                iccid=self.iccids[sim],
                account_id=account_id(account),
                plan_id=plan_of(account).plan_id,
                state=t.SIM_STATE_ACTIVE,
                provisioned_at=provisioned,
                billing_started_at=provisioned,
                billing_start_reason=t.BILLING_START_REASON_IMMEDIATE,
                current_period=PERIOD,
                period_usage=usage,
            )
        )


def describe(method: str, answer: r.AuthorizeSessionResponse | r.GetSimStatusResponse) -> set[str]:
    """What kind of answer this is, for the counts a run reports (not a check)."""
    kinds: set[str] = set()
    if isinstance(answer, r.AuthorizeSessionResponse):
        if answer.estimated_charge_micros:
            kinds.add("with an estimate")
        if answer.remaining_included_quantity:
            kinds.add("inside the allowance")
        if answer.price_micros != 100_000:
            kinds.add("in the second tier")
    elif answer.status.period_usage:
        kinds.add(f"with {len(answer.status.period_usage)} usage types")
    return kinds
