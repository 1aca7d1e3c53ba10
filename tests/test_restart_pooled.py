"""Pooled allowances across a restart, clean stop and kill -9.

Pool usage is not stored: a start rebuilds it from the checkpoint's counters and the
replayed records, and the SIMs counted in each pool from the SIMs' billing starts. One
account with an IMMEDIATE pooled plan (DATA over two tiers and SMS) and a FIRST_USE pooled
plan (the plan of issue 20: threshold 1 MiB, grace 10 days, 1 MiB pooled per billable
SIM), another account on the first plan (its own pool). SIMs part-way to their threshold
across both stops, grace periods expiring while the service is down, late records moving
starts set by first use and by the grace period, the Jan 5 record of the issue's scenario
after the restart. At every step the whole state (the cache, the stored state after a
checkpoint, GetSimStatus, AuthorizeSession and the bill previews) is held against the
recomputation from the stored facts (tests/support/usage_state.py), and the restarted
service answers every question as the stopped one did.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from datetime import datetime, timedelta

import grpc
import pytest

from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from tests.conftest import AppFactory
from tests.support import T0, ServerProcess, Stubs, data_plan, first_use_plan, iccids
from tests.support.billing import advance, get_invoice, preview, provision, put_account, put_plans
from tests.support.usage import rate, record
from tests.support.usage_state import (
    DATA,
    SMS,
    check_api,
    check_app,
    invoice_problems,
    recompute_at,
)

pytestmark = pytest.mark.slow

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
MIB = 1_048_576
REQUESTS = ((DATA, 0), (DATA, 700_000), (SMS, 2))

POOL_A, FU, POOL_B = iccids(1, 6), iccids(20, 6), iccids(40, 3)
EVERYONE = POOL_A + FU + POOL_B


def pooled_plan() -> t.Plan:
    """IMMEDIATE; DATA pooled, 2 MiB per billable SIM, 0.10 per MiB for the first 5 MiB
    beyond it, then 0.05; SMS pooled, 3 per SIM, 0.05 each."""
    plan = data_plan("POOL")
    plan.usage_rates[0].pooled = True
    plan.usage_rates[0].included_quantity = 2 * MIB
    del plan.usage_rates[0].tiers[:]
    plan.usage_rates[0].tiers.extend(
        [
            t.Tier(up_to_quantity=5 * MIB, price_micros=100_000),
            t.Tier(up_to_quantity=0, price_micros=50_000),
        ]
    )
    plan.usage_rates.append(
        t.UsageRate(
            usage_type=t.USAGE_TYPE_SMS,
            unit_quantity=1,
            rounding_increment=1,
            included_quantity=3,
            pooled=True,
            tiers=[t.Tier(up_to_quantity=0, price_micros=50_000)],
        )
    )
    return plan


def first_use_pooled_plan() -> t.Plan:
    plan = first_use_plan("POOL-FU", grace_days=10, threshold=MIB)
    plan.usage_rates[0].included_quantity = MIB
    plan.usage_rates[0].pooled = True
    return plan


def jan(day: int, hour: int = 0) -> datetime:
    return T0 + (day - 1) * DAY + hour * HOUR


async def set_up(stubs: Stubs) -> None:
    await put_plans(stubs, pooled_plan(), first_use_pooled_plan())
    await put_account(stubs, "A")
    await put_account(stubs, "B")
    await provision(stubs, POOL_A, T0, "POOL", "A")
    await provision(stubs, FU, T0, "POOL-FU", "A")
    await provision(stubs, POOL_B, T0, "POOL", "B")


async def rated(stubs: Stubs, *records: t.UsageRecord) -> list[t.RecordResult]:
    results = await rate(stubs, *records)
    assert {x.status for x in results} == {t.RECORD_STATUS_RATED}, results
    return results


async def answers(stubs: Stubs, sims: Sequence[str] = EVERYONE) -> list[bytes]:
    """Every SIM's status and authorizations, and both accounts' previews, serialized."""
    out = []
    for iccid in sims:
        status = await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))
        out.append(status.SerializeToString(deterministic=True))
        for usage_type, quantity in REQUESTS:
            request = r.AuthorizeSessionRequest(
                iccid=iccid,
                usage_type=usage_type,  # type: ignore[arg-type]
                requested_quantity=quantity,
            )
            answer = await stubs.rating.AuthorizeSession(request)
            out.append(answer.SerializeToString(deterministic=True))
    for account_id in ("A", "B"):
        out.append((await preview(stubs, "", account_id)).SerializeToString(deterministic=True))
    return out


async def server_at(database_url: str, clock: datetime) -> tuple[ServerProcess, int]:
    server = ServerProcess(
        {
            "RATING_DATABASE_URL": database_url,
            "RATING_CLOCK": f"test:{clock.isoformat()}",
            "RATING_CHECKPOINT_INTERVAL_S": "3600",
        }
    )
    return server, await server.start()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["clean", "kill-9"])
async def test_pooled_usage_survives_a_restart(
    start_app: AppFactory, database_url: str, stop: signal.Signals
) -> None:
    # 1. Jan 9, first process: usage below and above thresholds, then a clean stop (its
    #    last checkpoint holds all of it: the next start restores pools from counters).
    first, port = await server_at(database_url, jan(9))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stubs = Stubs(channel)
        await set_up(stubs)
        await rated(
            stubs,
            *[
                record(f"a-{n}", sim, 900_000 + 100_001 * n, jan(2, n))
                for n, sim in enumerate(POOL_A)
            ],
            *[record(f"a-sms-{n}", sim, 2, jan(3), SMS) for n, sim in enumerate(POOL_A)],
            *[record(f"b-{n}", sim, 3_000_000, jan(3)) for n, sim in enumerate(POOL_B)],
            record("fu0-1", FU[0], 600_000, jan(3)),
            record("fu0-2", FU[0], 600_000, jan(4)),  # first use: billing starts Jan 4
            record("fu1-1", FU[1], 600_000, jan(4)),
            record("fu2-1", FU[2], 300_000, jan(2)),
            record("fu2-2", FU[2], 300_000, jan(3)),
            record("fu3-1", FU[3], 1_000, jan(2)),
            record("fu4-1", FU[4], 600_000, jan(8)),  # the Jan 8 record of issue 20
        )
        await check_api(stubs, await recompute_at(database_url, stubs), requests=REQUESTS)
    assert await first.stop() == 0

    # 2. Jan 12, second process: FU[1..5]'s grace ended on Jan 11 while it was down; late
    #    records move two starts earlier, the pool passes its allowance; then `stop`.
    second, port = await server_at(database_url, jan(12))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stubs = Stubs(channel)
        expected = await recompute_at(database_url, stubs)
        assert {expected.starts[x] for x in FU[1:]} == {
            (jan(11), t.BILLING_START_REASON_GRACE_EXPIRED)
        }
        await check_api(stubs, expected, requests=REQUESTS)
        await rated(
            stubs,
            record("fu1-late", FU[1], 500_000, jan(2)),  # first use at fu1-1, Jan 4
            record("fu0-late", FU[0], 600_000, jan(2)),  # first use moves to Jan 3
            *[record(f"a2-{n}", sim, 2_000_000, jan(11)) for n, sim in enumerate(POOL_A[:3])],
            record("a2-sms", POOL_A[0], 9, jan(11), SMS),
            record("fu5-1", FU[5], 2_000_000, jan(12)),
        )
        expected = await recompute_at(database_url, stubs)
        assert expected.starts[FU[0]] == (jan(3), t.BILLING_START_REASON_FIRST_USE)
        assert expected.starts[FU[1]] == (jan(4), t.BILLING_START_REASON_FIRST_USE)
        pool = expected.pool_used[("A", "POOL", "2026-01", DATA)]
        assert pool > 6 * 2 * MIB  # the pool is used beyond its allowance
        await check_api(stubs, expected, requests=REQUESTS)
        before = await answers(stubs)
    assert await second.stop(stop) == (-stop if stop is signal.SIGKILL else 0)

    # 3. In process, on the same database: the restarted state is the recomputed one,
    #    and every answer is the one the stopped service gave.
    app, stubs = await start_app(clock_start=jan(12))
    expected = await check_app(app)
    await check_api(stubs, expected, requests=REQUESTS)
    assert await answers(stubs) == before

    # 4. After the restart: the Jan 5 record of issue 20 moves FU[4]'s start from the
    #    grace deadline back to its Jan 8 record; a late record makes FU[2]'s Jan 3
    #    record its first use; on-time usage of started SIMs, and of the other pool.
    [late] = await rated(stubs, record("fu4-late", FU[4], 600_000, jan(5)))
    assert not late.charged
    await rated(
        stubs,
        record("fu2-late", FU[2], 500_000, jan(1, 12)),
        record("fu3-2", FU[3], 1_100_000, jan(12)),
        *[record(f"b2-{n}", sim, 1_500_000, jan(12)) for n, sim in enumerate(POOL_B)],
    )
    expected = await check_app(app)
    assert expected.starts[FU[4]] == (jan(8), t.BILLING_START_REASON_FIRST_USE)
    assert expected.starts[FU[2]] == (jan(3), t.BILLING_START_REASON_FIRST_USE)
    assert expected.totals[("2026-01", FU[4], DATA)][1] == 600_000  # Jan 8 only
    await check_api(stubs, expected, requests=REQUESTS)

    # 5. January settled: the invoice is the recomputed bill, the pools of a settled
    #    period leave memory.
    await advance(stubs, jan(34))
    expected = await check_app(app)
    for account_id in ("A", "B"):
        invoice = await get_invoice(stubs, "2026-01", account_id)
        assert invoice_problems(invoice, expected) == []
    await check_api(stubs, expected, requests=REQUESTS)
