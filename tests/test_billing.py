"""BillingService through a real channel: docs/settlement.md's worked example, previews,
settling on demand, idempotence, errors, invoices across a restart, and the settlement metrics."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc

from rating.v1 import billing_service_pb2 as b
from rating.v1 import types_pb2 as t
from service.app import Application
from tests.conftest import AppFactory
from tests.support import T0, Stubs, data_plan
from tests.support.billing import (
    EUR,
    SIM1,
    MiB,
    advance,
    amounts,
    failure,
    get_invoice,
    list_invoices,
    preview,
    provision,
    put_account,
    put_plans,
    settle,
    utc,
    worked_example,
)
from tests.support.usage import rate, record


async def test_worked_example_is_ten_euros(stubs: Stubs) -> None:
    await worked_example(stubs)
    invoice = await settle(stubs, "2026-01")
    assert amounts(invoice) == [
        ("SUBSCRIPTION", 1_810_000),
        ("USAGE", 1_060_000),
        ("SHORTFALL", 2_000_000),
        ("TRUE_UP", 5_130_000),
    ]
    assert invoice.total_micros == 10 * EUR
    assert invoice.final and invoice.currency == "EUR" and invoice.billable_sims == 2
    subscription, usage, shortfall, _ = invoice.lines
    assert (subscription.quantity, subscription.plan_id) == (2, "P")
    assert usage.usage_type == t.USAGE_TYPE_DATA
    assert (usage.quantity, usage.chargeable_quantity) == (21_571_584, 11_085_824)
    assert shortfall.quantity == 1
    assert invoice.period == "2026-01"
    assert invoice.period_start.ToDatetime() == utc(2026, 1, 1).replace(tzinfo=None)
    assert invoice.period_end.ToDatetime() == utc(2026, 2, 1).replace(tzinfo=None)
    assert invoice.settled_at.ToDatetime() == utc(2026, 2, 1).replace(tzinfo=None)


async def test_preview_just_before_settlement_equals_the_invoice(stubs: Stubs) -> None:
    await worked_example(stubs)
    before = await preview(stubs, "2026-01")
    assert not before.final and not before.HasField("settled_at")
    invoice = await settle(stubs, "2026-01")
    assert list(before.lines) == list(invoice.lines)
    assert before.total_micros == invoice.total_micros == 10 * EUR
    assert before.billable_sims == invoice.billable_sims
    # A settled period's preview is its invoice.
    assert await preview(stubs, "2026-01") == invoice


async def test_preview_of_the_open_period_follows_usage(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    await provision(stubs, [SIM1], T0)
    await advance(stubs, utc(2026, 1, 10))
    empty_usage = await preview(stubs)  # empty period: the one containing now
    assert empty_usage.period == "2026-01" and not empty_usage.final
    assert amounts(empty_usage) == [("SUBSCRIPTION", 2 * EUR)]  # the whole month so far
    await rate(stubs, record("u", SIM1, 11 * MiB, when=utc(2026, 1, 9)))
    used = await preview(stubs)
    assert amounts(used) == [("SUBSCRIPTION", 2 * EUR), ("USAGE", 100_000)]
    february = await preview(stubs, "2026-02")
    assert amounts(february) == [("SUBSCRIPTION", 2 * EUR)]


async def test_settle_is_idempotent_even_when_concurrent(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    await worked_example(stubs)
    together = await asyncio.gather(*(settle(stubs, "2026-01") for _ in range(5)))
    assert all(invoice == together[0] for invoice in together)
    await advance(stubs, utc(2026, 2, 20))
    assert await settle(stubs, "2026-01") == together[0]  # settled_at does not move
    assert await get_invoice(stubs, "2026-01") == together[0]
    sample = app.metrics.registry.get_sample_value
    assert sample("rating_settlements_total", {"result": "settled"}) == 1
    assert sample("rating_settlements_total", {"result": "already_settled"}) == 5
    assert sample("rating_settlement_seconds_count") == 1
    for kind, micros in (
        ("SUBSCRIPTION", 1_810_000),
        ("USAGE", 1_060_000),
        ("SIM_COMMITMENT_SHORTFALL", 2_000_000),
        ("MINIMUM_SPEND_TRUE_UP", 5_130_000),
    ):
        labels = {"currency": "EUR", "kind": kind}
        assert sample("rating_invoice_amount_micros_total", labels) == micros


async def test_settling_before_the_period_ended_is_refused(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    await provision(stubs, [SIM1], T0)
    await advance(stubs, utc(2026, 1, 31, 23, 59))
    for period in ("2026-01", "2026-02", "2030-01"):
        code, details = await failure(settle(stubs, period))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, period
        assert period in details
    await advance(stubs, utc(2026, 2, 1))  # the period end itself is enough
    assert (await settle(stubs, "2026-01")).final


async def test_bad_requests_name_the_field(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    billing = stubs.billing
    cases = [
        (billing.SettlePeriod(b.SettlePeriodRequest(period="2026-01")), "account_id"),
        (billing.SettlePeriod(b.SettlePeriodRequest(account_id="A")), "period"),
        (billing.SettlePeriod(b.SettlePeriodRequest(account_id="A", period="2026-13")), "period"),
        (billing.GetInvoice(b.GetInvoiceRequest(account_id="A", period="26-01")), "period"),
        (billing.GetInvoice(b.GetInvoiceRequest(account_id="A")), "period"),
        (billing.GetBillPreview(b.GetBillPreviewRequest(account_id="A", period="x")), "period"),
        (billing.GetBillPreview(b.GetBillPreviewRequest()), "account_id"),
        (billing.ListInvoices(b.ListInvoicesRequest()), "account_id"),
    ]
    for call, field in cases:
        code, details = await failure(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(field), details


async def test_unknown_account_and_unsettled_period_are_not_found(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    billing = stubs.billing
    for call in (
        billing.GetInvoice(b.GetInvoiceRequest(account_id="nobody", period="2026-01")),
        billing.SettlePeriod(b.SettlePeriodRequest(account_id="nobody", period="2025-12")),
        billing.GetBillPreview(b.GetBillPreviewRequest(account_id="nobody")),
        billing.ListInvoices(b.ListInvoicesRequest(account_id="nobody")),
        billing.GetInvoice(b.GetInvoiceRequest(account_id="A", period="2025-12")),
    ):
        code, _ = await failure(call)
        assert code == grpc.StatusCode.NOT_FOUND
    assert await list_invoices(stubs) == []


async def test_invoices_survive_a_restart(start_app: AppFactory) -> None:
    app, stubs = await start_app()
    await worked_example(stubs)
    await rate(stubs, record("jan-late", SIM1, 1_000, when=utc(2026, 1, 31, 23)))
    january = await settle(stubs, "2026-01")
    await app.stop()
    _, stubs = await start_app()  # the test clock starts at T0 again; invoices are stored
    assert await get_invoice(stubs, "2026-01") == january
    assert await list_invoices(stubs) == [january]
    assert await preview(stubs, "2026-01") == january
    await advance(stubs, utc(2026, 2, 1, 1))
    assert await settle(stubs, "2026-01") == january
    results = await rate(
        stubs,
        record("jan-late", SIM1, 1_000, when=utc(2026, 1, 31, 23)),
        record("jan-later", SIM1, 1_000, when=utc(2026, 1, 31, 23)),
    )
    assert [x.status for x in results] == [
        t.RECORD_STATUS_DUPLICATE,
        t.RECORD_STATUS_PERIOD_CLOSED,
    ]


async def test_list_invoices_in_period_order(start_app: AppFactory) -> None:
    _, stubs = await start_app(late_usage_window=timedelta(days=365))  # no auto-settlement
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    await provision(stubs, [SIM1], T0)
    await advance(stubs, utc(2026, 4, 1))
    for period in ("2026-03", "2026-01", "2026-02"):  # settled out of order on purpose
        await settle(stubs, period)
    listed = await list_invoices(stubs)
    assert [x.period for x in listed] == ["2026-01", "2026-02", "2026-03"]
    assert all(x.final and x.total_micros == 2 * EUR for x in listed)
