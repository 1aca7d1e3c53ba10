"""ProvisioningService through a real channel: bulk results, lifecycle rules, status."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from tests.support import T0, Stubs, data_plan, first_use_plan, iccids
from tests.test_catalog import expect_error


async def setup_catalog(stubs: Stubs) -> None:
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P")))
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=first_use_plan("FU")))
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("USD", currency="USD")))
    await stubs.catalog.PutAccount(
        c.PutAccountRequest(account=t.Account(account_id="A", currency="EUR"))
    )
    await stubs.catalog.PutAccount(
        c.PutAccountRequest(account=t.Account(account_id="B", currency="EUR"))
    )


async def status(stubs: Stubs, iccid: str) -> t.SimStatus:
    return (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))).status


async def test_provision_results_per_iccid(stubs: Stubs) -> None:
    await setup_catalog(stubs)
    good = iccids(1, 3)
    first = await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=good)
    )
    assert [x.status for x in first.results] == [p.PROVISION_STATUS_CREATED] * 3
    bad_luhn = good[0][:-1] + str((int(good[0][-1]) + 1) % 10)
    mixed = [good[0], iccids(10, 1)[0], "8912", "1" + good[1][1:], bad_luhn, iccids(10, 1)[0]]
    second = await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=mixed)
    )
    assert [x.status for x in second.results] == [
        p.PROVISION_STATUS_ALREADY_PROVISIONED,
        p.PROVISION_STATUS_CREATED,
        p.PROVISION_STATUS_INVALID_ICCID,
        p.PROVISION_STATUS_INVALID_ICCID,
        p.PROVISION_STATUS_INVALID_ICCID,
        p.PROVISION_STATUS_ALREADY_PROVISIONED,
    ]
    third = await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="B", plan_id="P", iccids=good[:1])
    )
    assert third.results[0].status == p.PROVISION_STATUS_CONFLICT
    assert (await status(stubs, good[0])).account_id == "A"


async def test_immediate_plan_starts_billing_at_provisioning(stubs: Stubs) -> None:
    await setup_catalog(stubs)
    at = T0 - timedelta(days=2)
    request = p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=iccids(1, 1))
    request.provisioned_at.FromDatetime(at)
    await stubs.provisioning.ProvisionSims(request)
    got = await status(stubs, iccids(1, 1)[0])
    assert got.state == t.SIM_STATE_ACTIVE
    assert got.billing_start_reason == t.BILLING_START_REASON_IMMEDIATE
    assert (
        got.billing_started_at.ToDatetime()
        == got.provisioned_at.ToDatetime()
        == at.replace(tzinfo=None)
    )
    assert got.current_period == "2026-01"


async def test_first_use_plan_waits_for_first_use(stubs: Stubs) -> None:
    await setup_catalog(stubs)
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="FU", iccids=iccids(1, 1))
    )
    got = await status(stubs, iccids(1, 1)[0])
    assert got.state == t.SIM_STATE_PROVISIONED
    assert not got.HasField("billing_started_at")
    assert got.activation_deadline.ToDatetime() == (T0 + timedelta(days=30)).replace(tzinfo=None)
    assert [(x.usage_type, x.quantity, x.threshold) for x in got.first_use_progress] == [
        (t.USAGE_TYPE_DATA, 0, 1_048_576)
    ]


async def test_provisioning_errors(stubs: Stubs) -> None:
    await setup_catalog(stubs)
    cases = [
        (p.ProvisionSimsRequest(account_id="nope", plan_id="P"), grpc.StatusCode.NOT_FOUND, "nope"),
        (p.ProvisionSimsRequest(account_id="A", plan_id="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
        (
            p.ProvisionSimsRequest(account_id="A", plan_id="USD", iccids=iccids(1, 1)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "currency",
        ),
        (
            p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=iccids(1, 10_001)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "iccids",
        ),
        (p.ProvisionSimsRequest(plan_id="P"), grpc.StatusCode.INVALID_ARGUMENT, "account_id"),
    ]
    for request, code, text in cases:
        await expect_error(stubs.provisioning.ProvisionSims(request), code, text)
    future = p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=iccids(1, 1))
    future.provisioned_at.FromDatetime(T0 + timedelta(hours=1))
    await expect_error(
        stubs.provisioning.ProvisionSims(future), grpc.StatusCode.INVALID_ARGUMENT, "provisioned_at"
    )
    await expect_error(
        stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccids(1, 1)[0])),
        grpc.StatusCode.NOT_FOUND,
        iccids(1, 1)[0],
    )


async def test_ten_thousand_in_one_call(stubs: Stubs) -> None:
    await setup_catalog(stubs)
    batch = iccids(100_000, 10_000)
    response = await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=batch)
    )
    assert len(response.results) == 10_000
    assert {x.status for x in response.results} == {p.PROVISION_STATUS_CREATED}
    assert (await status(stubs, batch[-1])).state == t.SIM_STATE_ACTIVE


async def test_lifecycle_rules(stubs: Stubs) -> None:
    await setup_catalog(stubs)
    active, fresh = iccids(1, 1)[0], iccids(2, 1)[0]
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=[active])
    )
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="FU", iccids=[fresh])
    )

    suspended = await stubs.provisioning.SuspendSim(p.SuspendSimRequest(iccid=active))
    assert suspended.status.state == t.SIM_STATE_SUSPENDED
    again = await stubs.provisioning.SuspendSim(p.SuspendSimRequest(iccid=active))
    assert again.status.state == t.SIM_STATE_SUSPENDED
    resumed = await stubs.provisioning.ResumeSim(p.ResumeSimRequest(iccid=active))
    assert resumed.status.state == t.SIM_STATE_ACTIVE

    await expect_error(
        stubs.provisioning.SuspendSim(p.SuspendSimRequest(iccid=fresh)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVISIONED",
    )
    await expect_error(
        stubs.provisioning.ResumeSim(p.ResumeSimRequest(iccid=fresh)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROVISIONED",
    )
    future = p.TerminateSimRequest(iccid=active)
    future.effective_at.FromDatetime(T0 + timedelta(days=1))
    await expect_error(
        stubs.provisioning.TerminateSim(future), grpc.StatusCode.INVALID_ARGUMENT, "effective_at"
    )
    terminated = await stubs.provisioning.TerminateSim(p.TerminateSimRequest(iccid=active))
    assert terminated.status.state == t.SIM_STATE_TERMINATED
    assert terminated.status.terminated_at.ToDatetime() == T0.replace(tzinfo=None)
    retried = await stubs.provisioning.TerminateSim(p.TerminateSimRequest(iccid=active))
    assert retried.status == terminated.status
    for call in (
        stubs.provisioning.SuspendSim(p.SuspendSimRequest(iccid=active)),
        stubs.provisioning.ResumeSim(p.ResumeSimRequest(iccid=active)),
    ):
        await expect_error(call, grpc.StatusCode.FAILED_PRECONDITION, "TERMINATED")
    await expect_error(
        stubs.provisioning.SuspendSim(p.SuspendSimRequest(iccid=iccids(50, 1)[0])),
        grpc.StatusCode.NOT_FOUND,
        "SIM",
    )


@pytest.mark.parametrize("iccid", ["", "x"])
async def test_status_of_bad_iccid(stubs: Stubs, iccid: str) -> None:
    code = grpc.StatusCode.INVALID_ARGUMENT if not iccid else grpc.StatusCode.NOT_FOUND
    await expect_error(
        stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid)),
        code,
        "iccid" if not iccid else "x",
    )
