"""RateUsage and StreamUsage through a real channel: every record status, idempotency,
rating rules and the running counters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from rating.v1 import billing_service_pb2 as b
from rating.v1 import clock_service_pb2 as k
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import Application
from tests.conftest import AppFactory
from tests.support import T0, Stubs, iccids, until
from tests.support.usage import account_with_sims, period_usage, rate, record

S = t  # status names live on the types module


async def test_rated_record_is_rounded_charged_and_counted(stubs: Stubs) -> None:
    sim = (await account_with_sims(stubs, 1))[0]
    [result] = await rate(stubs, record("r1", sim, 600_000))
    assert result.status == S.RECORD_STATUS_RATED
    assert result.rated_quantity == 600_064  # rounded up to the 1,024-byte increment
    assert result.charged
    assert result.estimated_charge_micros == 0  # inside the 10 MiB allowance
    [big] = await rate(stubs, record("r2", sim, 20_971_520))
    # 600,064 + 20,971,520 - 10,485,760 = 11,085,824 chargeable bytes at 0.10/MiB
    assert big.estimated_charge_micros == 1_057_227  # 10.5722656 MiB x 0.10
    assert await period_usage(stubs, sim) == {t.USAGE_TYPE_DATA: 21_571_520}


async def test_every_rejection_status(stubs: Stubs) -> None:
    sims = await account_with_sims(stubs, 2, provisioned_at=T0 - timedelta(days=1))
    await stubs.provisioning.TerminateSim(p.TerminateSimRequest(iccid=sims[1]))
    results = await rate(
        stubs,
        record("unknown", iccids(99, 1)[0]),
        record("early", sims[0], when=T0 - timedelta(days=2)),
        record("late", sims[1], when=T0),
        record("future", sims[0], when=T0 + timedelta(minutes=6)),
        record("skew-ok", sims[0], when=T0 + timedelta(minutes=4)),
        record("", sims[0]),
        record("x" * 129, sims[0]),
        record("neg", sims[0], quantity=-1),
        record("no-time", sims[0], when=None),
        record("no-type", sims[0], usage_type=0),
        record("bad-type", sims[0], usage_type=42),
        record("ctl\x00", sims[0]),
        record("no-iccid", ""),
    )
    statuses = [(x.record_id, x.status) for x in results]
    assert statuses == [
        ("unknown", S.RECORD_STATUS_UNKNOWN_SIM),
        ("early", S.RECORD_STATUS_BEFORE_PROVISIONING),
        ("late", S.RECORD_STATUS_AFTER_TERMINATION),
        ("future", S.RECORD_STATUS_FUTURE_EVENT),
        ("skew-ok", S.RECORD_STATUS_RATED),
        ("", S.RECORD_STATUS_INVALID),
        ("x" * 128, S.RECORD_STATUS_INVALID),
        ("neg", S.RECORD_STATUS_INVALID),
        ("no-time", S.RECORD_STATUS_INVALID),
        ("no-type", S.RECORD_STATUS_INVALID),
        ("bad-type", S.RECORD_STATUS_INVALID),
        ("ctl\x00", S.RECORD_STATUS_INVALID),
        ("no-iccid", S.RECORD_STATUS_INVALID),
    ]
    details = [x.detail for x in results[5:]]
    for field, detail in zip(
        [
            "record_id",
            "record_id",
            "quantity",
            "event_time",
            "usage_type",
            "usage_type",
            "record_id",
            "iccid",
        ],
        details,
        strict=True,
    ):
        assert detail.startswith(field), detail
    assert await period_usage(stubs, sims[0]) == {t.USAGE_TYPE_DATA: 1_000}


async def test_duplicates_in_a_batch_and_across_batches(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    sim = (await account_with_sims(stubs, 1))[0]
    first = await rate(stubs, record("a", sim, 100), record("a", sim, 100), record("b", sim, 5))
    assert [x.status for x in first] == [
        S.RECORD_STATUS_RATED,
        S.RECORD_STATUS_DUPLICATE,
        S.RECORD_STATUS_RATED,
    ]
    second = await rate(stubs, record("b", sim, 5), record("c", sim, 7), record("a", sim, 999))
    assert [x.status for x in second] == [
        S.RECORD_STATUS_DUPLICATE,
        S.RECORD_STATUS_RATED,
        S.RECORD_STATUS_DUPLICATE,
    ]
    assert await period_usage(stubs, sim) == {t.USAGE_TYPE_DATA: 112}
    metric = app.metrics.registry.get_sample_value
    assert metric("rating_usage_records_total", {"status": "RATED"}) == 3
    assert metric("rating_usage_records_total", {"status": "DUPLICATE"}) == 3
    assert metric("rating_usage_quantity_total", {"usage_type": "DATA"}) == 112
    assert metric("rating_persist_batch_records_count") == 2
    assert metric("rating_persist_queue_depth") == 0


async def test_malformed_record_in_the_middle_of_a_good_batch(stubs: Stubs) -> None:
    sim = (await account_with_sims(stubs, 1))[0]
    batch = [record(f"g{i}", sim, 10) for i in range(10)]
    batch.insert(5, record("bad", sim, quantity=-5))
    results = await rate(stubs, *batch)
    assert [x.status for x in results].count(S.RECORD_STATUS_RATED) == 10
    assert results[5].status == S.RECORD_STATUS_INVALID and results[5].record_id == "bad"
    assert await period_usage(stubs, sim) == {t.USAGE_TYPE_DATA: 100}


async def test_duplicates_across_a_restart(start_app: AppFactory) -> None:
    app, stubs = await start_app()
    sim = (await account_with_sims(stubs, 1))[0]
    await rate(stubs, record("a", sim, 100), record("b", sim, 200))
    await app.stop()
    _, stubs = await start_app()
    assert await period_usage(stubs, sim) == {t.USAGE_TYPE_DATA: 300}
    results = await rate(stubs, record("a", sim, 100), record("c", sim, 1))
    assert [x.status for x in results] == [S.RECORD_STATUS_DUPLICATE, S.RECORD_STATUS_RATED]
    assert await period_usage(stubs, sim) == {t.USAGE_TYPE_DATA: 301}


async def test_period_closed_but_counted_ids_stay_duplicate(
    start_app: AppFactory, database_url: str
) -> None:
    app, stubs = await start_app()
    sim = (await account_with_sims(stubs, 1, provisioned_at=T0 - timedelta(days=40)))[0]
    december = T0 - timedelta(days=10)
    await rate(stubs, record("dec-1", sim, 100, when=december))
    await app.stop()
    import asyncpg

    conn = await asyncpg.connect(database_url)
    await conn.execute(
        "INSERT INTO invoices VALUES ('A', '2025-12', $1, $2, 'EUR', 0, '{}', $2)",
        T0 - timedelta(days=31),
        T0,
    )
    await conn.close()
    _, stubs = await start_app()
    results = await rate(
        stubs, record("dec-1", sim, 100, when=december), record("dec-2", sim, 1, when=december)
    )
    assert [x.status for x in results] == [S.RECORD_STATUS_DUPLICATE, S.RECORD_STATUS_PERIOD_CLOSED]


async def test_stream_acknowledges_in_order(stubs: Stubs) -> None:
    sims = await account_with_sims(stubs, 4)

    async def batches() -> AsyncIterator[r.StreamUsageRequest]:
        for n in range(20):
            yield r.StreamUsageRequest(
                batch_id=f"b{n}",
                records=[record(f"s{n}-{i}", sims[i % 4], 10) for i in range(50)]
                + [record(f"s{n}-bad", sims[0], -1)],
            )

    acks = [ack async for ack in stubs.rating.StreamUsage(batches())]
    assert [a.batch_id for a in acks] == [f"b{n}" for n in range(20)]
    for ack in acks:
        assert [x.status for x in ack.results].count(S.RECORD_STATUS_RATED) == 50
        assert ack.results[-1].status == S.RECORD_STATUS_INVALID
    assert sum([(await period_usage(stubs, s))[t.USAGE_TYPE_DATA] for s in sims]) == 20 * 50 * 10


async def test_batch_over_the_limit_is_refused(stubs: Stubs) -> None:
    sim = (await account_with_sims(stubs, 1))[0]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rate(stubs, *[record(f"x{i}", sim) for i in range(10_001)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "records" in (err.value.details() or "")
    assert await period_usage(stubs, sim) == {}


async def test_streams_refused_while_the_client_still_sends_see_invalid_argument(
    stubs: Stubs,
) -> None:
    """A bad batch fails its stream while the client is still sending the next ones (more
    than flow control lets through): every caller sees INVALID_ARGUMENT, never the INTERNAL
    a grpc client reports when its write fails before the status arrives."""
    sim = (await account_with_sims(stubs, 1))[0]

    async def refused(n: int) -> grpc.StatusCode:
        async def batches() -> AsyncIterator[r.StreamUsageRequest]:
            too_big = [record(f"s{n}-x{i}", sim) for i in range(10_001)]
            yield r.StreamUsageRequest(batch_id="too-big", records=too_big)
            for number in range(10):
                batch = [record(f"s{n}-{number}-{i}", sim) for i in range(5_000)]
                yield r.StreamUsageRequest(batch_id=f"b{number}", records=batch)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stubs.rating.StreamUsage(batches()):
                pass
        return err.value.code()

    codes = await asyncio.gather(*(refused(n) for n in range(4)))
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 4
    assert await period_usage(stubs, sim) == {}


async def test_authorize_session(stubs: Stubs) -> None:
    sims = await account_with_sims(stubs, 3)
    await rate(stubs, record("u", sims[0], 10_485_760))
    answer = await stubs.rating.AuthorizeSession(
        r.AuthorizeSessionRequest(
            iccid=sims[0], usage_type=t.USAGE_TYPE_DATA, requested_quantity=1_048_576
        )
    )
    assert answer.allowed and answer.billing_started and not answer.would_start_billing
    assert answer.state == t.SIM_STATE_ACTIVE
    assert (answer.price_micros, answer.unit_quantity) == (100_000, 1_048_576)
    assert answer.remaining_included_quantity == 0
    assert answer.estimated_charge_micros == 100_000
    fresh = await stubs.rating.AuthorizeSession(
        r.AuthorizeSessionRequest(iccid=sims[1], usage_type=t.USAGE_TYPE_DATA, requested_quantity=1)
    )
    assert fresh.remaining_included_quantity == 10_485_760 and fresh.estimated_charge_micros == 0
    await stubs.provisioning.SuspendSim(p.SuspendSimRequest(iccid=sims[1]))
    await stubs.provisioning.TerminateSim(p.TerminateSimRequest(iccid=sims[2]))
    for iccid, reason in (
        (sims[1], r.DENY_REASON_SUSPENDED),
        (sims[2], r.DENY_REASON_TERMINATED),
        (iccids(77, 1)[0], r.DENY_REASON_UNKNOWN_SIM),
    ):
        denied = await stubs.rating.AuthorizeSession(
            r.AuthorizeSessionRequest(
                iccid=iccid, usage_type=t.USAGE_TYPE_DATA, requested_quantity=1
            )
        )
        assert not denied.allowed and denied.deny_reason == reason
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.rating.AuthorizeSession(r.AuthorizeSessionRequest(iccid=sims[0]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "usage_type" in (
        err.value.details() or ""
    )


async def test_a_counted_record_stays_duplicate_after_a_back_dated_termination(
    stubs: Stubs,
) -> None:
    sim = (await account_with_sims(stubs, 1))[0]
    later = k.AdvanceTimeRequest()
    later.to.FromDatetime(T0 + timedelta(days=2))
    await stubs.clock.AdvanceTime(later)
    used_at = T0 + timedelta(days=1)
    [first] = await rate(stubs, record("kept", sim, 10, when=used_at))
    assert first.status == S.RECORD_STATUS_RATED
    terminate = p.TerminateSimRequest(iccid=sim)
    terminate.effective_at.FromDatetime(T0 + timedelta(hours=12))  # before the usage
    await stubs.provisioning.TerminateSim(terminate)
    again = await rate(
        stubs, record("kept", sim, 10, when=used_at), record("new", sim, 10, when=used_at)
    )
    assert [x.status for x in again] == [
        S.RECORD_STATUS_DUPLICATE,  # a retry never gets another answer than its first
        S.RECORD_STATUS_AFTER_TERMINATION,
    ]
    assert await period_usage(stubs, sim) == {t.USAGE_TYPE_DATA: 10}


async def test_a_batch_whose_caller_gave_up_before_its_turn_is_not_stored(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    sim = (await account_with_sims(stubs, 1))[0]
    metric = app.metrics.registry.get_sample_value
    cancelled = {
        "grpc_type": "unary",
        "grpc_service": "rating.v1.RatingService",
        "grpc_method": "RateUsage",
        "grpc_code": "CANCELLED",
    }

    async with app.state_lock:  # the persister takes batch A, then waits for this lock
        first = asyncio.ensure_future(rate(stubs, record("a", sim, 1)))
        await until(lambda: app.persister.busy)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stubs.rating.RateUsage(
                r.RateUsageRequest(records=[record("b", sim, 100)]), timeout=0.2
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: metric("grpc_server_handled_total", cancelled) == 1)
    [a] = await first
    assert a.status == S.RECORD_STATUS_RATED
    # B was dropped before its turn: nothing of it was stored, so it is new on retry.
    retry = await rate(stubs, record("a", sim, 1), record("b", sim, 100))
    assert [x.status for x in retry] == [S.RECORD_STATUS_DUPLICATE, S.RECORD_STATUS_RATED]
    assert await period_usage(stubs, sim) == {t.USAGE_TYPE_DATA: 101}


async def test_a_record_is_checked_again_when_the_state_changed_between_arrival_and_commit(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    sim = (await account_with_sims(stubs, 1))[0]
    async with app.state_lock:  # nothing changes or commits while the test holds it
        terminate = asyncio.ensure_future(
            stubs.provisioning.TerminateSim(p.TerminateSimRequest(iccid=sim))
        )
        await until(lambda: app.state_lock.waiting == 1)
        # Checked on arrival, the SIM still active: a candidate. Its commit waits behind the
        # termination, which ends the SIM at the record's event time.
        rated = asyncio.ensure_future(rate(stubs, record("r", sim, 10, when=T0)))
        await until(lambda: app.state_lock.waiting == 2)
    await terminate
    [result] = await rated
    assert result.status == S.RECORD_STATUS_AFTER_TERMINATION
    assert await period_usage(stubs, sim) == {}


async def test_inside_the_state_lock_the_counters_hold_every_stored_record_under_load(
    app_stubs: tuple[Application, Stubs],
) -> None:
    """The persister counts a group while it writes the next one; whoever enters the state
    lock next counts a group left uncounted (`count_committed`, as settlement, provisioning
    and activation do), so they never see a committed record missing from the counters."""
    app, stubs = app_stubs
    sims = await account_with_sims(stubs, 20)

    async def send(stream: int) -> None:
        requests = [
            r.StreamUsageRequest(
                batch_id=f"{stream}-{b}",
                records=[record(f"{stream}-{b}-{i}", sims[i % 20], 1 + i) for i in range(500)],
            )
            for b in range(40)
        ]
        acks = [ack async for ack in stubs.rating.StreamUsage(iter(requests))]
        assert len(acks) == len(requests)

    # What this test's task found uncounted when it entered (before count_committed counted it).
    found: list[int] = []
    senders = asyncio.gather(*(send(n) for n in range(4)))
    checks = 0
    while not senders.done():
        async with app.state_lock:
            found.append(app.persister.uncounted)
            app.persister.count_committed()
            async with app.pool.acquire() as conn:  # no commit can happen while we hold it
                stored = await conn.fetchval("SELECT coalesce(sum(quantity), 0) FROM usage_records")
            counted = sum(
                c.raw_quantity
                for usage in app.cache.usage.values()
                for by_type in usage.periods.values()
                for c in by_type.values()
            )
            assert counted == stored
            checks += 1
    await senders
    assert checks > 1 and any(found), found


# --- a record id repeated inside a group: refused records are never DUPLICATE of themselves ---


async def usage_world(stubs: Stubs) -> tuple[str, str, str]:
    """An active SIM, a terminated one (at T0) and one for holding the persister; December
    2025 settled."""
    active, ended, holder = await account_with_sims(
        stubs, 3, provisioned_at=T0 - timedelta(days=40)
    )
    await stubs.provisioning.TerminateSim(p.TerminateSimRequest(iccid=ended))
    await stubs.billing.SettlePeriod(b.SettlePeriodRequest(account_id="A", period="2025-12"))
    return active, ended, holder


async def stored_usage(app: Application) -> dict[str, tuple[str, int]]:
    async with app.pool.acquire() as conn:
        rows = await conn.fetch("SELECT record_id, iccid, quantity FROM usage_records")
    return {row["record_id"]: (row["iccid"], row["quantity"]) for row in rows}


DECEMBER = T0 - timedelta(days=10)  # in the settled period


def repeated_ids(active: str, ended: str) -> list[t.UsageRecord]:
    """Each id twice or more: refused (after termination, period closed) and good, in every
    order."""
    return [
        record("x", ended, 1),  # refused, then a good one: the refusal, RATED
        record("x", active, 100),
        record("y", active, 10),  # good, then refused: RATED, then DUPLICATE of it
        record("y", ended, 2),
        record("z", ended, 3),  # refused twice: two refusals
        record("z", ended, 3),
        record("p", active, 4, when=DECEMBER),  # the same with a closed period
        record("p", active, 1_000),
        record("q", active, 20),
        record("q", active, 5, when=DECEMBER),  # another period: its own key, refused
        record("q", active, 6),  # a good one after both: DUPLICATE
    ]


REPEATED_ID_STATUSES = [
    S.RECORD_STATUS_AFTER_TERMINATION,
    S.RECORD_STATUS_RATED,
    S.RECORD_STATUS_RATED,
    S.RECORD_STATUS_DUPLICATE,
    S.RECORD_STATUS_AFTER_TERMINATION,
    S.RECORD_STATUS_AFTER_TERMINATION,
    S.RECORD_STATUS_PERIOD_CLOSED,
    S.RECORD_STATUS_RATED,
    S.RECORD_STATUS_RATED,
    S.RECORD_STATUS_PERIOD_CLOSED,  # (q, 2025-12) was never stored: the key has the period
    S.RECORD_STATUS_DUPLICATE,
]


async def check_repeated_ids_stored(
    app: Application, stubs: Stubs, active: str, ended: str, holder: str | None = None
) -> None:
    """The good record of each id stored and counted, once; then each id a DUPLICATE of
    its stored record (`holder`: the SIM of the group tests' one record "hold")."""
    held = {} if holder is None else {"hold": (holder, 1)}
    assert await stored_usage(app) == {
        "x": (active, 100),
        "y": (active, 10),
        "p": (active, 1_000),
        "q": (active, 20),
        **held,
    }
    assert await period_usage(stubs, active) == {t.USAGE_TYPE_DATA: 1_130}
    assert await period_usage(stubs, ended) == {}
    # Stored before now: every January copy of x, y, p, q is DUPLICATE; z, never stored, is
    # refused, and so are the December copies of p and q (their key, with the period, is not
    # stored).
    again = await rate(stubs, *repeated_ids(active, ended))
    assert [x.status for x in again] == [
        *[S.RECORD_STATUS_DUPLICATE] * 4,
        S.RECORD_STATUS_AFTER_TERMINATION,
        S.RECORD_STATUS_AFTER_TERMINATION,
        S.RECORD_STATUS_PERIOD_CLOSED,
        *[S.RECORD_STATUS_DUPLICATE] * 2,
        S.RECORD_STATUS_PERIOD_CLOSED,
        S.RECORD_STATUS_DUPLICATE,
    ]
    assert await period_usage(stubs, active) == {t.USAGE_TYPE_DATA: 1_130}
    metric = app.metrics.registry.get_sample_value
    assert metric("rating_usage_records_total", {"status": "RATED"}) == 4 + len(held)
    assert metric("rating_usage_records_total", {"status": "DUPLICATE"}) == 2 + 7


async def test_a_record_refused_in_a_batch_is_not_the_duplicate_of_a_later_one(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    active, ended, _ = await usage_world(stubs)
    results = await rate(stubs, *repeated_ids(active, ended))
    assert [x.status for x in results] == REPEATED_ID_STATUSES
    assert results[0].detail == "event_time at or after terminated_at"
    assert results[6].detail == "period 2025-12 is settled"
    await check_repeated_ids_stored(app, stubs, active, ended)


async def test_a_record_refused_in_a_stream_batch_is_not_the_duplicate_of_a_later_one(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    active, ended, _ = await usage_world(stubs)
    request = r.StreamUsageRequest(batch_id="b", records=repeated_ids(active, ended))
    [ack] = [ack async for ack in stubs.rating.StreamUsage(iter([request]))]
    assert [x.status for x in ack.results] == REPEATED_ID_STATUSES
    await check_repeated_ids_stored(app, stubs, active, ended)


async def in_one_group(app: Application, stubs: Stubs, holder: str, *sends: Any) -> list[Any]:
    """Run `sends` (coroutine functions, each queueing one batch) so that their batches are
    committed in ONE group, in this order: the persister is held on a first batch while they
    queue one after the other."""
    metric = app.metrics.registry.get_sample_value
    groups = metric("rating_persist_batch_records_count") or 0
    async with app.state_lock:  # the persister takes the first batch, then waits for this
        held = asyncio.ensure_future(rate(stubs, record("hold", holder, 1)))
        await until(lambda: app.persister.busy)
        running = []
        for n, send in enumerate(sends, 1):
            running.append(asyncio.ensure_future(send()))
            await until(lambda n=n: metric("rating_persist_queue_depth") == n)  # type: ignore[misc]
    await held
    answers = await asyncio.gather(*running)
    assert metric("rating_persist_batch_records_count") == groups + 2  # held, then theirs
    return answers


async def test_a_record_refused_in_a_group_is_not_the_duplicate_of_a_later_batch(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    active, ended, holder = await usage_world(stubs)
    batches = [[x] for x in repeated_ids(active, ended)]  # one record per RateUsage call
    answers = await in_one_group(
        app, stubs, holder, *(lambda batch=batch: rate(stubs, *batch) for batch in batches)
    )
    assert [x.status for [x] in answers] == REPEATED_ID_STATUSES
    await check_repeated_ids_stored(app, stubs, active, ended, holder)


async def test_a_record_refused_in_a_stream_is_not_the_duplicate_of_a_later_batch(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    active, ended, holder = await usage_world(stubs)
    requests = [
        r.StreamUsageRequest(batch_id=f"b{n}", records=[x])
        for n, x in enumerate(repeated_ids(active, ended))
    ]
    metric = app.metrics.registry.get_sample_value
    groups = metric("rating_persist_batch_records_count") or 0
    async with app.state_lock:
        held = asyncio.ensure_future(rate(stubs, record("hold", holder, 1)))
        await until(lambda: app.persister.busy)
        stream = stubs.rating.StreamUsage(iter(requests))
        acks = asyncio.ensure_future(collect(stream))
        # One reader submits the batches in order; all wait in the queue for one group.
        await until(lambda: metric("rating_persist_queue_depth") == len(requests))
    await held
    assert [a.batch_id for a in await acks] == [x.batch_id for x in requests]
    assert [x.status for a in await acks for x in a.results] == REPEATED_ID_STATUSES
    assert metric("rating_persist_batch_records_count") == groups + 2  # held, then theirs
    await check_repeated_ids_stored(app, stubs, active, ended, holder)


async def collect(stream: Any) -> list[Any]:
    return [ack async for ack in stream]
