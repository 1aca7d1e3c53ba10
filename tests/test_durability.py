"""Durability of usage ingestion under failure, through real gRPC and real PostgreSQL.

1. kill -9 of the service while four streams are sending: every acknowledged record is
   stored exactly once, the restarted service counts what is stored, and resending
   everything loses nothing and counts nothing twice. Then the same with SIMs on FIRST_USE
   plans (per SIM and pooled) part-way to their threshold at the kill, crossing it after
   the restart with late and on-time records, killed again, and started after their grace
   period ended. After each restart, the whole usage state (cache, stored state, API) is
   held against its recomputation from the stored facts (tests/support/usage_state.py).
2. PostgreSQL stopped under load and started again, the service left running: callers
   get UNAVAILABLE (never a RATED for a record that is not stored), and ingestion resumes
   with counters equal to what is stored.
3. PostgreSQL crashed (stop -m immediate) twice while four streams send large batches:
   every error a caller sees is UNAVAILABLE (also for the streams retried while it is
   down), and once it is back, retrying stores and counts every record exactly once.

No sleeps: the tests wait on events set by the acknowledgements themselves.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import Application
from service.ops.metrics import Metrics
from tests import conftest
from tests.conftest import AppFactory
from tests.support import T0, ServerProcess, Stubs, first_use_plan, iccids, until
from tests.support.billing import provision, put_account, put_plans
from tests.support.postgres import StoppablePostgres
from tests.support.usage import account_with_sims, rate, record
from tests.support.usage_state import check_api, check_app

pytestmark = pytest.mark.slow

RATED = t.RECORD_STATUS_RATED
DUPLICATE = t.RECORD_STATUS_DUPLICATE
CALL_TIMEOUT = 20.0  # seconds; a hang becomes DEADLINE_EXCEEDED and fails the test

Batch = list[t.UsageRecord]


def make_batches(prefix: str, sims: Sequence[str], batches: int, size: int) -> list[Batch]:
    """`batches` batches of `size` records with unique ids, spread over the SIMs."""
    out = []
    for b in range(batches):
        batch = []
        for i in range(size):
            n = b * size + i
            iccid = sims[(n * 7 + len(prefix)) % len(sims)]
            batch.append(record(f"{prefix}-{b}-{i}", iccid, quantity=1 + (n * 7919) % 100_000))
        out.append(batch)
    return out


def usage_by_sim(records: Sequence[t.UsageRecord]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for rec in records:
        total[rec.iccid] += rec.quantity
    return dict(total)


@dataclass
class Acks:
    """Every acknowledgement received: record id -> status, plus an event after N batches."""

    statuses: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    errors: list[grpc.StatusCode] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # of each error, in order
    _waiters: list[tuple[int, asyncio.Event]] = field(default_factory=list)

    def add(self, results: Sequence[t.RecordResult]) -> None:
        for result in results:
            assert result.record_id not in self.statuses, "record acknowledged twice"
            self.statuses[result.record_id] = result.status
        self.batches += 1
        for count, event in self._waiters:
            if self.batches >= count:
                event.set()

    async def wait_for_batches(self, count: int) -> None:
        event = asyncio.Event()
        self._waiters.append((count, event))
        if self.batches >= count:
            event.set()
        await asyncio.wait_for(event.wait(), CALL_TIMEOUT)

    def with_status(self, status: int) -> set[str]:
        return {rid for rid, s in self.statuses.items() if s == status}


async def stream(
    stubs: Stubs,
    batches: Sequence[Batch],
    acks: Acks,
    pause: tuple[int, asyncio.Event] | None = None,
) -> None:
    """Send the batches on one StreamUsage stream; record every ack; record an error code.
    `pause` (n, event): wait for the event before sending batch n."""

    async def requests() -> AsyncIterator[r.StreamUsageRequest]:
        for n, batch in enumerate(batches):
            if pause is not None and n == pause[0]:
                await pause[1].wait()
            yield r.StreamUsageRequest(batch_id=str(n), records=batch)

    call = stubs.rating.StreamUsage(requests())
    sent = iter(range(len(batches)))
    try:
        async for response in call:
            assert response.batch_id == str(next(sent)), "acknowledgements out of order"
            assert [x.record_id for x in response.results] == [
                x.record_id for x in batches[int(response.batch_id)]
            ]
            acks.add(response.results)
    except grpc.aio.AioRpcError as exc:
        acks.errors.append(exc.code())
        acks.details.append(f"{exc.details()} ({exc.debug_error_string()})")


async def rate_batches(stubs: Stubs, batches: Sequence[Batch], acks: Acks) -> None:
    """RateUsage calls one after the other; stop at the first error and record its code."""
    for batch in batches:
        try:
            response = await stubs.rating.RateUsage(
                r.RateUsageRequest(records=batch), timeout=CALL_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            acks.errors.append(exc.code())
            return
        acks.add(response.results)


async def resend_all(stubs: Stubs, per_stream: Sequence[Sequence[Batch]]) -> Acks:
    acks = Acks()
    async with asyncio.timeout(CALL_TIMEOUT * 2):
        await asyncio.gather(*(stream(stubs, batches, acks) for batches in per_stream))
    assert acks.errors == []
    return acks


async def stored_records(url: str) -> dict[str, tuple[str, int]]:
    """record_id -> (iccid, quantity) of every row of usage_records, read directly."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT record_id, iccid, quantity FROM usage_records")
    finally:
        await conn.close()
    stored = {row["record_id"]: (row["iccid"], row["quantity"]) for row in rows}
    assert len(stored) == len(rows)  # a record_id is stored at most once
    return stored


def stored_by_sim(stored: dict[str, tuple[str, int]]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for iccid, quantity in stored.values():
        total[iccid] += quantity
    return dict(total)


async def data_counters(stubs: Stubs, sims: Sequence[str]) -> dict[str, int]:
    """The DATA period_usage of every SIM, as GetSimStatus shows it (0 when none)."""

    async def one(iccid: str) -> int:
        got: r.GetSimStatusResponse = await stubs.rating.GetSimStatus(
            r.GetSimStatusRequest(iccid=iccid), timeout=CALL_TIMEOUT
        )
        usage = {u.usage_type: u.quantity for u in got.status.period_usage}
        return usage.get(t.USAGE_TYPE_DATA, 0)

    counters: dict[str, int] = {}
    for start in range(0, len(sims), 100):
        chunk = sims[start : start + 100]
        counters.update(zip(chunk, await asyncio.gather(*(one(s) for s in chunk)), strict=True))
    return counters


def assert_stored_as_sent(
    stored: dict[str, tuple[str, int]], sent: dict[str, t.UsageRecord]
) -> None:
    for record_id, (iccid, quantity) in stored.items():
        assert record_id in sent, f"stored a record never sent: {record_id}"
        assert (iccid, quantity) == (sent[record_id].iccid, sent[record_id].quantity)


# --- 1. kill -9 while four streams are sending -------------------------------------------------

STREAMS = 4
SIMS = 1_000
BATCHES_PER_STREAM = 40
BATCH_SIZE = 200
KILL_AFTER_BATCHES = 24  # acknowledged batches, all streams together


async def test_kill_9_while_four_streams_are_sending(
    start_app: AppFactory, database_url: str
) -> None:
    env = {"RATING_DATABASE_URL": database_url, "RATING_CLOCK": "test:2026-01-01T00:00:00Z"}
    server = ServerProcess(env)
    port = await server.start()
    acks = Acks()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs = Stubs(channel)
            sims = await account_with_sims(stubs, SIMS, start=5_000)
            per_stream = [
                make_batches(f"k{s}", sims, BATCHES_PER_STREAM, BATCH_SIZE) for s in range(STREAMS)
            ]
            senders = [asyncio.create_task(stream(stubs, b, acks)) for b in per_stream]
            await acks.wait_for_batches(KILL_AFTER_BATCHES)
            assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.wait_for(asyncio.gather(*senders), CALL_TIMEOUT)
    finally:
        if server.proc is not None and server.proc.poll() is None:  # the test failed early
            server.proc.kill()
    sent = {rec.record_id: rec for batches in per_stream for b in batches for rec in b}
    assert acks.batches >= KILL_AFTER_BATCHES
    assert acks.batches < STREAMS * BATCHES_PER_STREAM, "the streams ended before the kill"
    assert len(acks.errors) >= 1  # at least one stream was cut by the kill
    assert set(acks.statuses.values()) == {RATED}  # unique ids: the first answer is RATED

    stored = await stored_records(database_url)
    print(f"kill -9: {len(acks.statuses)} records acknowledged, {len(stored)} stored")
    assert acks.with_status(RATED) <= stored.keys(), "an acknowledged record was lost"
    assert_stored_as_sent(stored, sent)

    # Restarted in process on the same database, so that its whole state can be read.
    app, stubs = await start_app(clock_start=T0)
    await check_api(stubs, await check_app(app))
    counters = await data_counters(stubs, sims)
    in_db = stored_by_sim(stored)
    acked = usage_by_sim([sent[rid] for rid in acks.statuses])
    for iccid in sims:
        assert counters[iccid] == in_db.get(iccid, 0), iccid
        assert counters[iccid] >= acked.get(iccid, 0), iccid

    again = await resend_all(stubs, per_stream)
    assert again.statuses.keys() == sent.keys()
    for record_id, status in again.statuses.items():
        # Stored before the kill (acknowledged or not) -> DUPLICATE; the rest is new.
        assert status == (DUPLICATE if record_id in stored else RATED), record_id
    assert acks.statuses.keys() <= again.with_status(DUPLICATE)

    final = await data_counters(stubs, sims)
    assert final == {iccid: usage_by_sim(list(sent.values())).get(iccid, 0) for iccid in sims}
    assert len(await stored_records(database_url)) == len(sent)
    await check_api(stubs, await check_app(app))


# --- 1b. kill -9 while SIMs are part-way to their first-use threshold --------------------------

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
MIB = 1_048_576
PART_WAY_SIMS = 200  # per plan
PART_WAY_STREAMS, PART_WAY_BATCHES, PART_WAY_SIZE = 4, 30, 100


def jan(day: int, hour: int = 0) -> datetime:
    return T0 + (day - 1) * DAY + hour * HOUR


def first_use_plans() -> list[t.Plan]:
    """Threshold 1 MiB of data, grace 10 days: an own 10 MiB allowance per SIM, and the
    plan of issue 20 (1 MiB per billable SIM, pooled)."""
    own = first_use_plan("FU", grace_days=10, threshold=MIB)
    pooled = first_use_plan("FU-POOL", grace_days=10, threshold=MIB)
    pooled.usage_rates[0].included_quantity = MIB
    pooled.usage_rates[0].pooled = True
    return [own, pooled]


def crosses_before_the_kill(sim: int) -> bool:
    return sim % 10 == 0


def part_way_batches(prefix: str, sims: Sequence[str], tiny: bool = False) -> list[list[Batch]]:
    """Per stream, batches of records with event times spread over Jan 2..8 in no order.
    Every tenth SIM gets 150,000 bytes a record and crosses its threshold; the others stay
    below it (at most 30 records of < 30,000 bytes each, or of < 100 when `tiny`)."""
    per_stream = []
    for s in range(PART_WAY_STREAMS):
        batches = []
        for b in range(PART_WAY_BATCHES):
            batch = []
            for i in range(PART_WAY_SIZE):
                n = (s * PART_WAY_BATCHES + b) * PART_WAY_SIZE + i
                sim = n % len(sims)
                quantity = 1 + (n * 7919) % (100 if tiny else 30_000)
                if crosses_before_the_kill(sim) and not tiny:
                    quantity = 150_000
                when = jan(2) + HOUR * ((n * 37) % (7 * 24))
                batch.append(record(f"{prefix}-{s}-{b}-{i}", sims[sim], quantity, when))
            batches.append(batch)
        per_stream.append(batches)
    return per_stream


def checkpoint_rows(server: ServerProcess) -> int:
    """Rows written by the server's checkpoints so far, from its log."""
    events = [json.loads(line) for line in server.log_lines if line.startswith("{")]
    return sum(e["rows"] for e in events if e.get("event") == "checkpoint written")


async def kill_while_streaming(server: ServerProcess, per_stream: list[list[Batch]]) -> Acks:
    """Stream a third of the batches; once they are acknowledged and a checkpoint has
    stored counters, stream the rest and kill -9 the server after a few more."""
    port = await server.start()
    acks, go_on = Acks(), asyncio.Event()
    third = len(per_stream[0]) // 3
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs = Stubs(channel)
            senders = [
                asyncio.create_task(stream(stubs, x, acks, (third, go_on))) for x in per_stream
            ]
            await acks.wait_for_batches(third * len(per_stream))
            await until(lambda: checkpoint_rows(server) > 0)
            go_on.set()
            await acks.wait_for_batches(third * len(per_stream) + 2)
            assert await server.stop(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.wait_for(asyncio.gather(*senders), CALL_TIMEOUT)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
    assert acks.batches < sum(map(len, per_stream)), "the streams ended before the kill"
    return acks


async def test_kill_9_while_sims_are_part_way_to_their_threshold(
    start_app: AppFactory, database_url: str
) -> None:
    """Kill -9 under four streams while most FIRST_USE SIMs are below their threshold
    (checkpoints every 50 ms, so the kill finds stored uncharged records and starts
    installed since the last checkpoint); restart; they cross it with late records (the
    start moves before records already stored) and on-time ones; kill -9 again while the
    rest are still below it; start after their grace period ended, and late records move
    those starts back to first use. At each restart, and after each step, the whole state
    (cache, stored state, GetSimStatus, AuthorizeSession, previews) is the recomputed one."""
    env = {
        "RATING_DATABASE_URL": database_url,
        "RATING_CLOCK": f"test:{jan(10).isoformat()}",
        "RATING_CHECKPOINT_INTERVAL_S": "0.05",
    }
    plans = first_use_plans()
    own = iccids(30_000, PART_WAY_SIMS)
    pooled = iccids(31_000, PART_WAY_SIMS)
    sims = own + pooled
    setup = ServerProcess(env)
    port = await setup.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stubs = Stubs(channel)
        await put_plans(stubs, *plans)
        await put_account(stubs, "A")
        await provision(stubs, own, T0, "FU")
        await provision(stubs, pooled, T0, "FU-POOL")
    assert await setup.stop() == 0

    # 1. Kill -9 while streaming: most SIMs part-way, every tenth past its threshold.
    first = part_way_batches("p1", sims)
    acks = await kill_while_streaming(ServerProcess(env), first)
    app, stubs = await start_app(clock_start=jan(10))
    expected = await check_app(app)
    waiting = [x for x in sims if expected.starts[x] is None]
    started = {x for x in sims if expected.starts[x] is not None}
    assert len(waiting) >= len(sims) * 8 // 10, "most SIMs are below their threshold"
    assert started, "some SIMs crossed their threshold before the kill"
    print(
        f"kill -9 part-way: {len(acks.statuses)} records acknowledged; {len(waiting)} SIMs"
        f" below their threshold, {len(started)} past it"
    )
    await check_api(stubs, expected)

    # 2. The rest of the batches, then the threshold crossed by a late record (before the
    #    stored ones: first use moves to a stored record or to the late one) for a third
    #    of the waiting SIMs, by an on-time record for another third.
    again = await resend_all(stubs, first)
    assert set(again.statuses.values()) <= {RATED, DUPLICATE}
    expected = await check_app(app)
    waiting = [x for x in sims if expected.starts[x] is None]
    late = [record(f"late-{x}", x, 700_000, jan(1, 12)) for x in waiting[0::3]]
    on_time = [record(f"now-{x}", x, 1_000_000, jan(10)) for x in waiting[1::3]]
    results = await rate(stubs, *late, *on_time)
    assert {x.status for x in results} == {RATED}
    assert all(x.charged for x in results[len(late) :])  # on time: the record that crosses
    expected = await check_app(app)
    assert {expected.starts[x.iccid][1] for x in late + on_time} == {  # type: ignore[index]
        t.BILLING_START_REASON_FIRST_USE
    }
    assert any(expected.starts[x.iccid][0] > jan(1, 12) for x in late)  # type: ignore[index]
    await check_api(stubs, expected)
    await app.stop()

    # 3. Kill -9 again while the last third is still below its threshold.
    still = [x for x in sims if expected.starts[x] is None]
    second = part_way_batches("p2", still, tiny=True)
    await kill_while_streaming(ServerProcess(env), second)

    # 4. Started on Jan 12: their grace period ended on Jan 11. Late records move half of
    #    those starts back to a first use before the deadline; the others get usage on time.
    app, stubs = await start_app(clock_start=jan(12))
    expected = await check_app(app)
    assert {expected.starts[x] for x in still} == {(jan(11), t.BILLING_START_REASON_GRACE_EXPIRED)}
    results = await rate(
        stubs,
        *[record(f"late2-{x}", x, 700_000, jan(1, 12)) for x in still[0::2]],
        *[record(f"now2-{x}", x, 5_000, jan(12)) for x in still[1::2]],
    )
    assert {x.status for x in results} == {RATED}
    expected = await check_app(app)
    assert {expected.starts[x][1] for x in still[0::2]} == {  # type: ignore[index]
        t.BILLING_START_REASON_FIRST_USE
    }
    await check_api(stubs, expected)


# --- 2. PostgreSQL stopped under load, then started again --------------------------------------


async def health_status(channel: grpc.aio.Channel) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    got = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(got.status)
    return name


async def test_postgres_stopped_under_load_then_started_again() -> None:
    pg = await asyncio.to_thread(StoppablePostgres)
    app: Application | None = None
    try:
        app = Application(conftest.test_settings(pg.uri), Metrics())
        await app.start()  # creates the schema on our own server
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stubs = Stubs(channel)
            sims = await account_with_sims(stubs, 200, start=9_000)
            per_stream = [make_batches(f"p{s}", sims, 100, 200) for s in range(STREAMS)]
            unary = make_batches("u", sims, 400, 50)

            # Load: four streams and a RateUsage caller; stop PostgreSQL once 20 batches
            # have been acknowledged, while all of them are still sending.
            acks = Acks()
            senders = [asyncio.create_task(stream(stubs, b, acks)) for b in per_stream]
            senders.append(asyncio.create_task(rate_batches(stubs, unary, acks)))
            await acks.wait_for_batches(20)
            await asyncio.to_thread(pg.stop)
            await asyncio.wait_for(asyncio.gather(*senders), CALL_TIMEOUT * 2)
            assert acks.errors, "every caller finished before PostgreSQL stopped"
            assert set(acks.errors) == {grpc.StatusCode.UNAVAILABLE}, acks.errors
            assert set(acks.statuses.values()) == {RATED}

            # While it is down: new calls fail fast with UNAVAILABLE; reads from memory work.
            down = Acks()
            await rate_batches(stubs, [unary[-1]], down)
            async with asyncio.timeout(CALL_TIMEOUT):
                await stream(stubs, [per_stream[0][-1]], down)
            assert down.errors == [grpc.StatusCode.UNAVAILABLE] * 2
            assert down.statuses == {}
            health_while_down = await health_status(channel)
            counters_while_down = await data_counters(stubs, sims)

            await asyncio.to_thread(pg.start)
            stored = await stored_records(pg.uri)
            sent = {
                rec.record_id: rec
                for batches in [*per_stream, unary]
                for batch in batches
                for rec in batch
            }
            assert acks.with_status(RATED) <= stored.keys(), "RATED but not stored"
            stored_before_retry = len(stored)
            assert_stored_as_sent(stored, sent)
            # Nothing counted that is not stored. Less may be counted than stored: a group
            # whose COMMIT was cut by the shutdown may be stored, unacknowledged and not yet
            # counted (the persister counts it at its next commit).
            in_db = stored_by_sim(stored)
            acked = usage_by_sim([sent[rid] for rid in acks.statuses])
            for iccid in sims:
                assert acked.get(iccid, 0) <= counters_while_down[iccid] <= in_db.get(iccid, 0)

            # The same service, without a restart: retrying everything succeeds at once.
            again = await resend_all(stubs, [*per_stream, unary])
            assert again.statuses.keys() == sent.keys()
            for record_id, status in again.statuses.items():
                assert status == (DUPLICATE if record_id in stored else RATED), record_id
            assert await health_status(channel) == "SERVING"

            stored = await stored_records(pg.uri)
            assert stored.keys() == sent.keys()
            counters = await data_counters(stubs, sims)
            assert counters == {s: stored_by_sim(stored).get(s, 0) for s in sims}
            assert counters == {s: usage_by_sim(list(sent.values())).get(s, 0) for s in sims}
        print(
            f"PostgreSQL stop: {len(acks.statuses)} records acknowledged,"
            f" {stored_before_retry} stored; health while down: {health_while_down}"
        )
    finally:
        if app is not None:
            await app.stop()
        await asyncio.to_thread(pg.cleanup)


# --- 3. PostgreSQL crashed twice while streams send ---------------------------------------------

CRASH_STREAMS = 4
# Each stream sends more than HTTP/2 flow control lets through at once, so the clients are
# still writing when their streams fail: the case where a grpc client reported INTERNAL.
CRASH_BATCHES_PER_STREAM = 30
CRASH_BATCH_SIZE = 2_000
CRASH_AFTER_BATCHES = 8  # acknowledged batches, all streams together, in each round


async def crash_round(
    stubs: Stubs, pg: StoppablePostgres, per_stream: Sequence[Sequence[Batch]]
) -> Acks:
    """Send on every stream; once some batches are acknowledged, crash PostgreSQL (stop -m
    immediate) while they are still sending; wait for every stream to end, send again while
    it is down, then start it again. Returns the acknowledgements and errors of all."""
    acks = Acks()
    senders = [asyncio.create_task(stream(stubs, batches, acks)) for batches in per_stream]
    await acks.wait_for_batches(CRASH_AFTER_BATCHES)
    await asyncio.to_thread(pg.stop, "immediate")
    await asyncio.wait_for(asyncio.gather(*senders), CALL_TIMEOUT * 2)
    # A caller retries UNAVAILABLE at once: while PostgreSQL is down, every stream fails
    # again, early, while the client is still sending its batches.
    retried = Acks()
    async with asyncio.timeout(CALL_TIMEOUT * 2):
        await asyncio.gather(*(stream(stubs, batches, retried) for batches in per_stream))
    assert retried.statuses == {}
    acks.errors += retried.errors
    acks.details += retried.details
    await asyncio.to_thread(pg.start)
    return acks


async def test_postgres_crashed_twice_while_streams_send() -> None:
    """A crash of PostgreSQL is an outage: every error a stream sees is UNAVAILABLE (never
    INTERNAL: a mediation platform retries UNAVAILABLE and pages someone on INTERNAL), and
    once PostgreSQL is back, retrying stores and counts every record exactly once. The
    service runs in its own process, as in production."""
    pg = await asyncio.to_thread(StoppablePostgres)
    server = ServerProcess(
        {"RATING_DATABASE_URL": pg.uri, "RATING_CLOCK": "test:2026-01-01T00:00:00Z"}
    )
    try:
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs = Stubs(channel)
            sims = await account_with_sims(stubs, 100, start=11_000)
            per_stream = [
                make_batches(f"c{s}", sims, CRASH_BATCHES_PER_STREAM, CRASH_BATCH_SIZE)
                for s in range(CRASH_STREAMS)
            ]
            sent = {rec.record_id: rec for batches in per_stream for b in batches for rec in b}
            rounds = [await crash_round(stubs, pg, per_stream) for _ in range(2)]
            errors = [
                (code.name, detail)
                for acks in rounds
                for code, detail in zip(acks.errors, acks.details, strict=True)
            ]
            print(f"PostgreSQL crashed twice: stream errors {errors}")
            assert errors, "every stream finished before PostgreSQL crashed"
            assert {code for code, _ in errors} == {"UNAVAILABLE"}, errors
            stored = await stored_records(pg.uri)
            assert_stored_as_sent(stored, sent)
            for acks in rounds:
                assert acks.with_status(RATED) <= stored.keys(), "RATED but not stored"

            # Retrying everything succeeds, without a restart; nothing is lost or doubled.
            again = await resend_all(stubs, per_stream)
            assert again.statuses.keys() == sent.keys()
            for record_id, status in again.statuses.items():
                assert status == (DUPLICATE if record_id in stored else RATED), record_id
            stored = await stored_records(pg.uri)
            assert stored.keys() == sent.keys()
            counters = await data_counters(stubs, sims)
            assert counters == {s: stored_by_sim(stored).get(s, 0) for s in sims}
    finally:
        if server.proc is not None:
            await server.stop()
        await asyncio.to_thread(pg.cleanup)
