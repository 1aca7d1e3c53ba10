"""A restart between a grace-period billing start and a late record that moves the start
earlier changes no bill (clean stop and kill -9)."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta

import grpc
import pytest

from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from tests.support import T0, ServerProcess, Stubs, first_use_plan
from tests.support.billing import advance, preview
from tests.support.usage import account_with_sims, rate, record

pytestmark = pytest.mark.slow

DAY = timedelta(days=1)


def pooled_plan() -> t.Plan:
    plan = first_use_plan("FU", grace_days=10, threshold=1_048_576)
    plan.usage_rates[0].included_quantity = 1_048_576
    plan.usage_rates[0].pooled = True
    return plan


async def server_at(database_url: str, clock: datetime) -> tuple[ServerProcess, Stubs]:
    server = ServerProcess(
        {"RATING_DATABASE_URL": database_url, "RATING_CLOCK": f"test:{clock.isoformat()}"}
    )
    port = await server.start()
    return server, Stubs(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))


async def chargeable_data(stubs: Stubs) -> int:
    invoice = await preview(stubs, "2026-01")
    return sum(
        line.quantity
        for line in invoice.lines
        if line.kind == t.LINE_KIND_USAGE and line.usage_type == t.USAGE_TYPE_DATA
    )


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["clean", "kill-9"])
async def test_late_record_after_restart_moves_billing_start_as_without(
    database_url: str, stop: signal.Signals
) -> None:
    server, stubs = await server_at(database_url, T0 + 7 * DAY)
    [sim] = await account_with_sims(stubs, 1, plan=pooled_plan(), provisioned_at=T0)
    [early] = await rate(stubs, record("jan-8", sim, 600_000, when=T0 + 7 * DAY))
    assert not early.charged
    await advance(stubs, T0 + 11 * DAY)  # Jan 12: the grace period ended on Jan 11
    status = (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=sim))).status
    assert status.billing_start_reason == t.BILLING_START_REASON_GRACE_EXPIRED
    await stubs.channel.close()
    await server.stop(stop)

    server, stubs = await server_at(database_url, T0 + 12 * DAY)
    try:
        [late] = await rate(stubs, record("jan-5", sim, 600_000, when=T0 + 4 * DAY))
        assert not late.charged
        status = (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=sim))).status
        assert status.billing_started_at.ToDatetime() == (T0 + 7 * DAY).replace(tzinfo=None)
        assert await chargeable_data(stubs) == 600_064
    finally:
        await stubs.channel.close()
        await server.stop()
