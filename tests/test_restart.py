"""Durability of provisioning: 10,000 SIMs survive SIGTERM and kill -9 unchanged, and their
statuses are those recomputed from the stored facts (tests/support/usage_state.py)."""

from __future__ import annotations

import signal

import grpc
import pytest

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from tests.support import ServerProcess, Stubs, data_plan, first_use_plan, iccids
from tests.support.usage_state import recompute_at, sim_status_problems

pytestmark = pytest.mark.slow


async def snapshot(stubs: Stubs, which: list[str]) -> list[bytes]:
    statuses = []
    for iccid in which:
        got = await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))
        statuses.append(got.status.SerializeToString(deterministic=True))
    return statuses


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_sims_survive_restart(database_url: str, sig: signal.Signals) -> None:
    env = {"RATING_DATABASE_URL": database_url, "RATING_CLOCK": "test:2026-01-01T00:00:00Z"}
    server = ServerProcess(env)
    port = await server.start()
    sims = iccids(1_000_000, 10_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stubs = Stubs(channel)
        await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P")))
        await stubs.catalog.PutPlan(c.PutPlanRequest(plan=first_use_plan("FU")))
        await stubs.catalog.PutAccount(
            c.PutAccountRequest(account=t.Account(account_id="A", currency="EUR"))
        )
        half = len(sims) // 2
        for plan_id, part in (("P", sims[:half]), ("FU", sims[half:])):
            done = await stubs.provisioning.ProvisionSims(
                p.ProvisionSimsRequest(account_id="A", plan_id=plan_id, iccids=part)
            )
            assert all(x.status == p.PROVISION_STATUS_CREATED for x in done.results)
        await stubs.provisioning.SuspendSim(p.SuspendSimRequest(iccid=sims[0]))
        await stubs.provisioning.TerminateSim(p.TerminateSimRequest(iccid=sims[1]))
        before = await snapshot(stubs, sims)
    await server.stop(sig)

    restarted = ServerProcess(env)
    port = await restarted.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stubs = Stubs(channel)
        after = await snapshot(stubs, sims)
        expected = await recompute_at(database_url, stubs)
    await restarted.stop()
    assert after == before
    problems = []
    for shown in after:
        problems += sim_status_problems(t.SimStatus.FromString(shown), expected)
    assert problems == []
