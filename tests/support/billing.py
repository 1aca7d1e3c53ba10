"""Builders for billing tests: accounts with contracts, SIMs at given times, the clock,
and short calls to BillingService."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import grpc
import pytest

from rating.v1 import billing_service_pb2 as b
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import clock_service_pb2 as k
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import types_pb2 as t
from tests.support import T0, Stubs, first_use_plan, iccids
from tests.support.builders import EUR, utc
from tests.support.usage import rate, record

MiB = 1_048_576
KINDS = {
    t.LINE_KIND_SUBSCRIPTION: "SUBSCRIPTION",
    t.LINE_KIND_USAGE: "USAGE",
    t.LINE_KIND_SIM_COMMITMENT_SHORTFALL: "SHORTFALL",
    t.LINE_KIND_MINIMUM_SPEND_TRUE_UP: "TRUE_UP",
}


SIM1, SIM2, SIM3 = iccids(1, 3)


def step(
    effective_period: str, min_sims: int, plan_id: str = "P", min_spend_micros: int = 0
) -> t.CommitmentStep:
    return t.CommitmentStep(
        effective_period=effective_period,
        min_billable_sims=min_sims,
        sim_commitment_plan_id=plan_id,
        min_spend_micros=min_spend_micros,
    )


async def put_plans(stubs: Stubs, *plans: t.Plan) -> None:
    for plan in plans:
        await stubs.catalog.PutPlan(c.PutPlanRequest(plan=plan))


async def put_account(
    stubs: Stubs,
    account_id: str = "A",
    currency: str = "EUR",
    timezone: str = "UTC",
    billing_day: int = 1,
    schedule: Sequence[t.CommitmentStep] = (),
) -> None:
    account = t.Account(
        account_id=account_id,
        currency=currency,
        timezone=timezone,
        billing_day=billing_day,
        commitment_schedule=schedule,
    )
    await stubs.catalog.PutAccount(c.PutAccountRequest(account=account))


async def provision(
    stubs: Stubs, sims: Sequence[str], at: datetime, plan_id: str = "P", account_id: str = "A"
) -> None:
    request = p.ProvisionSimsRequest(account_id=account_id, plan_id=plan_id, iccids=sims)
    request.provisioned_at.FromDatetime(at)
    response = await stubs.provisioning.ProvisionSims(request)
    assert all(r.status == p.PROVISION_STATUS_CREATED for r in response.results), response


async def terminate(stubs: Stubs, iccid: str, at: datetime) -> None:
    request = p.TerminateSimRequest(iccid=iccid)
    request.effective_at.FromDatetime(at)
    await stubs.provisioning.TerminateSim(request)


async def advance(stubs: Stubs, to: datetime) -> None:
    request = k.AdvanceTimeRequest()
    request.to.FromDatetime(to)
    await stubs.clock.AdvanceTime(request)


async def settle(stubs: Stubs, period: str, account_id: str = "A") -> t.Invoice:
    request = b.SettlePeriodRequest(account_id=account_id, period=period)
    return (await stubs.billing.SettlePeriod(request)).invoice


async def preview(stubs: Stubs, period: str = "", account_id: str = "A") -> t.Invoice:
    request = b.GetBillPreviewRequest(account_id=account_id, period=period)
    return (await stubs.billing.GetBillPreview(request)).invoice


async def get_invoice(stubs: Stubs, period: str, account_id: str = "A") -> t.Invoice:
    request = b.GetInvoiceRequest(account_id=account_id, period=period)
    return (await stubs.billing.GetInvoice(request)).invoice


async def list_invoices(stubs: Stubs, account_id: str = "A") -> list[t.Invoice]:
    request = b.ListInvoicesRequest(account_id=account_id)
    return list((await stubs.billing.ListInvoices(request)).invoices)


def amounts(invoice: t.Invoice) -> list[tuple[str, int]]:
    """(kind, amount_micros) per line, in invoice order."""
    return [(KINDS[line.kind], line.amount_micros) for line in invoice.lines]


def line(invoice: t.Invoice, kind: int, plan_id: str | None = None) -> t.InvoiceLine:
    found = [x for x in invoice.lines if x.kind == kind and plan_id in (None, x.plan_id)]
    assert len(found) == 1, invoice
    return found[0]


async def failure(call: object) -> tuple[grpc.StatusCode, str]:
    """(status code, details) of an awaited call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code(), err.value.details() or ""


async def worked_example(stubs: Stubs) -> None:
    """docs/settlement.md's worked example, account A through January; the clock ends at
    2026-02-01 00:00."""
    await put_plans(stubs, first_use_plan("P"))
    await put_account(stubs, schedule=[step("2026-01", 3, "P", 10 * EUR)])
    await provision(stubs, [SIM1, SIM2], T0)
    await advance(stubs, utc(2026, 1, 2, 12))
    [free] = await rate(stubs, record("s1-a", SIM1, 500_000, when=utc(2026, 1, 2)))
    assert not free.charged
    await advance(stubs, utc(2026, 1, 5, 10))
    [first] = await rate(stubs, record("s1-b", SIM1, 600_000, when=utc(2026, 1, 5, 10)))
    assert first.charged and first.started_billing
    await advance(stubs, utc(2026, 1, 20))
    await provision(stubs, [SIM3], utc(2026, 1, 20))
    await rate(stubs, record("s1-c", SIM1, 20_971_520, when=utc(2026, 1, 20)))
    await advance(stubs, utc(2026, 2, 1))  # SIM 2's grace expired on Jan 31 00:00
