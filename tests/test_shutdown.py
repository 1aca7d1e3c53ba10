"""Stopping the service: in process, and `python -m service` as a real child process.

1. Stop with batches in the persister (in process): they are committed and answered
   before the persister ends, and later ones are refused.
2. SIGTERM while a stream is sending: every batch the service read is committed and
   acknowledged, the stream ends UNAVAILABLE, the process exits 0, and what is stored is
   exactly what was acknowledged (and what a restart counts).
3. A worker that crashes stops the service with exit status 70 (EX_SOFTWARE), its cause
   logged once. The crash is real: a CHECK constraint added to `sims` behind the service's
   back makes the activation worker's UPDATE fail with an error that is not an outage.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.api.convert import records_from_proto
from service.domain.errors import ShuttingDown
from tests.conftest import AppFactory
from tests.support import ServerProcess, Stubs, first_use_plan, iccids, until
from tests.support.usage import account_with_sims, record

CALL_TIMEOUT = 20.0  # seconds; a hang fails the test instead of blocking it
SIMS = 100
BATCH_SIZE = 500
SIGTERM_AFTER_ACKS = 5
EX_SOFTWARE = 70


async def stored_records(url: str) -> dict[str, tuple[str, int]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT record_id, iccid, quantity FROM usage_records")
    finally:
        await conn.close()
    return {row["record_id"]: (row["iccid"], row["quantity"]) for row in rows}


@pytest.mark.slow
async def test_sigterm_acknowledges_every_batch_it_read(database_url: str) -> None:
    env = {"RATING_DATABASE_URL": database_url, "RATING_CLOCK": "test:2026-01-01T00:00:00Z"}
    server = ServerProcess(env)
    port = await server.start()
    sent: dict[str, t.UsageRecord] = {}
    acked: dict[str, int] = {}
    sigterm_sent, not_serving, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()
    late = [f"late-{i}" for i in range(BATCH_SIZE)]
    error: grpc.StatusCode | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs = Stubs(channel)
            sims = await account_with_sims(stubs, SIMS)
            health = health_pb2_grpc.HealthStub(channel)

            async def watch_health() -> None:
                """Until the service says it is stopping: NOT_SERVING, or calls refused."""
                await sigterm_sent.wait()
                async with asyncio.timeout(CALL_TIMEOUT):
                    while True:
                        try:
                            answer = await health.Check(health_pb2.HealthCheckRequest())
                        except grpc.aio.AioRpcError:
                            break
                        if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                            break
                        await asyncio.sleep(0.01)  # polling an observable state
                not_serving.set()

            watching = asyncio.create_task(watch_health())

            async def requests() -> AsyncIterator[r.StreamUsageRequest]:
                n = 0
                while not sigterm_sent.is_set():  # as fast as the service reads
                    batch = [
                        record(f"b{n}-{i}", sims[(n + i) % SIMS], quantity=1 + (n * 31 + i) % 997)
                        for i in range(BATCH_SIZE)
                    ]
                    sent.update((x.record_id, x) for x in batch)
                    yield r.StreamUsageRequest(batch_id=str(n), records=batch)
                    n += 1
                # One more batch once the service says it is stopping: it must not be read.
                await not_serving.wait()
                yield r.StreamUsageRequest(
                    batch_id=str(n), records=[record(x, sims[0]) for x in late]
                )
                await ended.wait()  # the stream stays open: the service ends it

            call = stubs.rating.StreamUsage(requests())
            expected = 0
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    async for ack in call:
                        assert ack.batch_id == str(expected), "acknowledgements out of order"
                        expected += 1
                        for result in ack.results:
                            assert result.record_id not in acked, "acknowledged twice"
                            acked[result.record_id] = result.status
                        if expected == SIGTERM_AFTER_ACKS:
                            assert server.proc is not None
                            server.proc.terminate()  # SIGTERM while the stream is sending
                            sigterm_sent.set()
            except grpc.aio.AioRpcError as exc:
                error = exc.code()
            ended.set()
            await asyncio.wait_for(watching, CALL_TIMEOUT)
        assert sigterm_sent.is_set(), "the stream ended before SIGTERM"
        code = await server.stop(within=CALL_TIMEOUT)  # SIGTERM again is harmless
    finally:
        if server.proc is not None and server.proc.poll() is None:  # the test failed early
            server.proc.kill()

    assert code == 0, "".join(server.log_lines)
    assert error == grpc.StatusCode.UNAVAILABLE
    assert not_serving.is_set()
    assert acked.keys().isdisjoint(late), "a batch sent after health NOT_SERVING was read"
    assert set(acked.values()) == {t.RECORD_STATUS_RATED}
    stored = await stored_records(database_url)
    print(f"SIGTERM: {len(acked)} records acknowledged, {len(stored)} stored")
    assert acked.keys() <= stored.keys(), "an acknowledged record was lost"
    # Every batch the service read was acknowledged: nothing is stored unacknowledged.
    assert stored.keys() == acked.keys()
    for record_id, (iccid, quantity) in stored.items():
        assert (iccid, quantity) == (sent[record_id].iccid, sent[record_id].quantity)

    restarted = ServerProcess(env)
    port = await restarted.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs = Stubs(channel)
            expected_usage: dict[str, int] = defaultdict(int)
            for iccid, quantity in stored.values():
                expected_usage[iccid] += quantity
            for iccid in sims:
                got = await stubs.rating.GetSimStatus(
                    r.GetSimStatusRequest(iccid=iccid), timeout=CALL_TIMEOUT
                )
                usage = {u.usage_type: u.quantity for u in got.status.period_usage}
                assert usage.get(t.USAGE_TYPE_DATA, 0) == expected_usage[iccid], iccid
    finally:
        assert await restarted.stop() == 0


@pytest.mark.slow
async def test_a_crashed_worker_exits_non_zero_with_its_cause_logged_once(
    database_url: str,
) -> None:
    # An account whose time zone the host's tz database does not know (a hand edit, or
    # tzdata downgraded under a running fleet): the settlement worker cannot compute the
    # account's periods, an error no retry cures, and the worker crashes.
    zone = "Nowhere/Atlantis"
    server = ServerProcess({"RATING_DATABASE_URL": database_url})  # the system clock
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stubs = Stubs(channel)
        await stubs.catalog.PutPlan(c.PutPlanRequest(plan=first_use_plan("FU")))
        await stubs.catalog.PutAccount(
            c.PutAccountRequest(account=t.Account(account_id="A", currency="EUR"))
        )
        request = p.ProvisionSimsRequest(account_id="A", plan_id="FU", iccids=iccids(1, 1))
        await stubs.provisioning.ProvisionSims(request, timeout=CALL_TIMEOUT)
    assert await server.stop() == 0
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE accounts SET timezone = $1", zone)
    finally:
        await conn.close()

    server = ServerProcess({"RATING_DATABASE_URL": database_url})
    try:
        await server.start()
        code = await server.exited(within=CALL_TIMEOUT)
    finally:
        if server.proc is not None and server.proc.poll() is None:  # the test failed early
            server.proc.kill()

    logs = "".join(server.log_lines)
    assert code == EX_SOFTWARE, logs
    assert sum(zone in line for line in server.log_lines) == 1, logs
    assert "never retrieved" not in logs
    events = [json.loads(line) for line in server.log_lines if line.startswith("{")]
    crashed = [e for e in events if e.get("event") == "worker crashed; stopping the service"]
    assert [e["worker"] for e in crashed] == ["settlement"]
    assert zone in str(crashed[0]["exception"])
    assert events[-1]["event"] == "stopped"


async def test_stop_commits_and_answers_the_batches_the_persister_holds(
    start_app: AppFactory, database_url: str
) -> None:
    app, stubs = await start_app()
    sim = (await account_with_sims(stubs, 1))[0]
    depth = app.metrics.registry.get_sample_value
    async with app.state_lock:  # the persister takes batch A, then waits for this lock
        held = asyncio.ensure_future(
            app.persister.submit(records_from_proto([record("a", sim, 3)]), wait=True)
        )
        await until(lambda: app.persister.busy)
        queued = asyncio.ensure_future(
            app.persister.submit(records_from_proto([record("b", sim, 4)]), wait=True)
        )
        await until(lambda: depth("rating_persist_queue_depth") == 1)
        stopping = asyncio.ensure_future(app.stop())
        await until(lambda: app.persister.stopping)
        with pytest.raises(ShuttingDown):
            await app.persister.submit(records_from_proto([record("c", sim, 5)]), wait=True)
    await asyncio.wait_for(stopping, CALL_TIMEOUT)
    assert held.done() and queued.done(), "stop() returned before the batches were answered"
    assert [x.status.name for x in held.result() + queued.result()] == ["RATED", "RATED"]
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetch("SELECT record_id FROM usage_records ORDER BY record_id")
    finally:
        await conn.close()
    assert [row["record_id"] for row in stored] == ["a", "b"]
