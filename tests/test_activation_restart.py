"""Activations, billing start changes and pending deadlines survive kill -9; 100,000 SIMs
with deadlines spread over a month each activate exactly once."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta

import asyncpg
import grpc
import pytest

from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import types_pb2 as t
from service.app import Application
from tests.conftest import AppFactory
from tests.support import T0, ServerProcess, Stubs, first_use_plan, iccids
from tests.support.usage import account_with_sims, rate, record
from tests.test_activation import DEADLINE, advance, naive, status

pytestmark = pytest.mark.slow


async def with_server(database_url: str, clock: datetime) -> tuple[ServerProcess, grpc.aio.Channel]:
    server = ServerProcess(
        {"RATING_DATABASE_URL": database_url, "RATING_CLOCK": f"test:{clock.isoformat()}"}
    )
    port = await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_activation_state_survives_kill_9(database_url: str) -> None:
    server, channel = await with_server(database_url, T0 + timedelta(days=1))
    stubs = Stubs(channel)
    waiting, used = await account_with_sims(stubs, 2, plan=first_use_plan("FU"), provisioned_at=T0)
    await rate(stubs, record("u1", used, 2_000_000, when=T0 + timedelta(hours=5)))
    before_used = await status(stubs, used)
    await channel.close()
    await server.stop(signal.SIGKILL)  # between provisioning and the deadline

    server, channel = await with_server(database_url, T0 + timedelta(days=2))
    stubs = Stubs(channel)
    assert await status(stubs, used) == before_used
    pending = await status(stubs, waiting)
    assert pending.state == t.SIM_STATE_PROVISIONED
    assert pending.activation_deadline.ToDatetime() == naive(DEADLINE)
    await advance(stubs, DEADLINE + timedelta(hours=2))
    activated = await status(stubs, waiting)
    assert activated.billing_started_at.ToDatetime() == naive(DEADLINE)
    await channel.close()
    await server.stop(signal.SIGKILL)  # after the deadline

    # Restarted after the deadline: the activation is there, once, unchanged.
    server, channel = await with_server(database_url, DEADLINE + timedelta(hours=3))
    stubs = Stubs(channel)
    assert await status(stubs, waiting) == activated
    await channel.close()
    await server.stop()


async def test_deadline_passed_while_stopped_activates_at_the_deadline(
    start_app: AppFactory,
) -> None:
    app, stubs = await start_app(clock_start=T0 + timedelta(days=1))
    [sim] = await account_with_sims(stubs, 1, plan=first_use_plan("FU"), provisioned_at=T0)
    await app.stop()
    _, stubs = await start_app(clock_start=DEADLINE + timedelta(days=4))
    got = await status(stubs, sim)
    assert got.billing_start_reason == t.BILLING_START_REASON_GRACE_EXPIRED
    assert got.billing_started_at.ToDatetime() == naive(DEADLINE)


async def test_hundred_thousand_deadlines_over_a_month_activate_once_each(
    app_stubs: tuple[Application, Stubs], database_url: str
) -> None:
    app, stubs = app_stubs
    await account_with_sims(stubs, 0, plan=first_use_plan("FU"))
    day = timedelta(days=1)
    await advance(stubs, T0 + 28 * day)
    for n in range(10):  # 10,000 SIMs provisioned on each of 10 days: deadlines over a month
        request = p.ProvisionSimsRequest(
            account_id="A", plan_id="FU", iccids=iccids(1_000_000 + n * 10_000, 10_000)
        )
        request.provisioned_at.FromDatetime(T0 + n * 3 * day)
        await stubs.provisioning.ProvisionSims(request)
    metric = app.metrics.registry.get_sample_value
    assert metric("rating_activation_pending") == 100_000
    for days in range(29, 62):
        await advance(stubs, T0 + days * day)
    assert metric("rating_activations_total", {"reason": "GRACE_EXPIRED"}) == 100_000
    assert metric("rating_activation_pending") == 0
    assert app.activation.pending == 0
    conn = await asyncpg.connect(database_url)
    try:
        exact = await conn.fetchval(
            "SELECT count(*) FROM sims"
            " WHERE billing_started_at = provisioned_at + interval '30 days'"
            " AND billing_start_reason = 3 AND state = 2"
        )
    finally:
        await conn.close()
    assert exact == 100_000
