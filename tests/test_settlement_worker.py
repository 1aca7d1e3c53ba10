"""The settlement worker: automatic settlement once `now >= period end + late usage window`,
driven by ClockService.AdvanceTime, and the closed period afterwards."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import grpc

from rating.v1 import types_pb2 as t
from service.app import Application
from tests.conftest import AppFactory
from tests.support import T0, Stubs, data_plan, iccids
from tests.support.billing import (
    EUR,
    advance,
    amounts,
    failure,
    get_invoice,
    list_invoices,
    provision,
    put_account,
    put_plans,
    settle,
    utc,
)
from tests.support.usage import rate, record

FEB_1 = utc(2026, 2, 1)


async def test_period_is_settled_once_the_late_usage_window_has_passed(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    [sim] = iccids(1, 1)
    await provision(stubs, [sim], T0)
    await advance(stubs, FEB_1 + timedelta(hours=23, minutes=59))
    code, _ = await failure(get_invoice(stubs, "2026-01"))
    assert code == grpc.StatusCode.NOT_FOUND  # inside the default one-day window
    [late] = await rate(stubs, record("late", sim, 1_000, when=utc(2026, 1, 31, 23)))
    assert late.status == t.RECORD_STATUS_RATED  # late usage is still welcome
    await advance(stubs, FEB_1 + timedelta(days=1))
    invoice = await get_invoice(stubs, "2026-01")
    assert invoice.final and amounts(invoice) == [("SUBSCRIPTION", 2 * EUR), ("USAGE", 0)]
    assert invoice.settled_at.ToDatetime() == (FEB_1 + timedelta(days=1)).replace(tzinfo=None)
    sample = app.metrics.registry.get_sample_value
    assert sample("rating_settlements_total", {"result": "settled"}) == 1
    await advance(stubs, utc(2026, 3, 5))
    assert [x.period for x in await list_invoices(stubs)] == ["2026-01", "2026-02"]
    assert sample("rating_settlements_total", {"result": "settled"}) == 2


async def test_usage_of_a_settled_period_is_closed(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    [sim] = iccids(1, 1)
    await provision(stubs, [sim], T0)
    await advance(stubs, utc(2026, 1, 31))
    await rate(stubs, record("counted", sim, 100, when=utc(2026, 1, 30)))
    await advance(stubs, utc(2026, 2, 2))
    results = await rate(
        stubs,
        record("counted", sim, 100, when=utc(2026, 1, 30)),
        record("too-late", sim, 100, when=utc(2026, 1, 31)),
        record("february", sim, 100, when=utc(2026, 2, 1)),
    )
    assert [x.status for x in results] == [
        t.RECORD_STATUS_DUPLICATE,
        t.RECORD_STATUS_PERIOD_CLOSED,
        t.RECORD_STATUS_RATED,
    ]
    assert "2026-01" in results[1].detail
    usage = [x for x in (await get_invoice(stubs, "2026-01")).lines if x.kind == t.LINE_KIND_USAGE]
    assert usage[0].quantity == 1_024  # only the record counted before the close


async def test_window_setting_and_every_account_in_period_order(start_app: AppFactory) -> None:
    _, stubs = await start_app(late_usage_window=timedelta(hours=6))
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs, "A")
    await put_account(stubs, "B", billing_day=15)
    await put_account(stubs, "EMPTY")  # no SIMs: never settled automatically
    await provision(stubs, iccids(1, 1), T0, account_id="A")
    await provision(stubs, iccids(2, 1), T0, account_id="B")  # in B's 2025-12 period
    await advance(stubs, utc(2026, 3, 1, 5, 59))
    assert [x.period for x in await list_invoices(stubs, "A")] == ["2026-01"]
    assert [x.period for x in await list_invoices(stubs, "B")] == ["2025-12", "2026-01"]
    await advance(stubs, utc(2026, 3, 1, 6))  # February's end + 6 hours
    assert [x.period for x in await list_invoices(stubs, "A")] == ["2026-01", "2026-02"]
    assert await list_invoices(stubs, "EMPTY") == []


async def test_worker_skips_periods_settled_on_demand(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    await provision(stubs, iccids(1, 1), T0)
    await advance(stubs, FEB_1)
    on_demand = await settle(stubs, "2026-01")
    await advance(stubs, utc(2026, 2, 5))
    assert await list_invoices(stubs) == [on_demand]
    sample = app.metrics.registry.get_sample_value
    assert sample("rating_settlements_total", {"result": "settled"}) == 1
    assert sample("rating_settlements_total", {"result": "already_settled"}) is None
    assert app.settlement.next_due() == utc(2026, 3, 2)  # February's end + 1 day


async def test_sim_provisioned_back_dated_reopens_the_walk(stubs: Stubs) -> None:
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    await advance(stubs, utc(2026, 3, 20))
    await provision(stubs, iccids(1, 1), utc(2026, 3, 1))
    await advance(stubs, utc(2026, 3, 20, 0, 1))
    assert await list_invoices(stubs) == []  # nothing before March to settle
    # A SIM provisioned back-dated into January: January and February become due.
    await provision(stubs, iccids(2, 1), utc(2026, 1, 10))
    await advance(stubs, utc(2026, 3, 20, 1))
    assert [x.period for x in await list_invoices(stubs)] == ["2026-01", "2026-02"]
    await advance(stubs, utc(2026, 4, 3))
    periods = [x.period for x in await list_invoices(stubs)]
    assert periods == ["2026-01", "2026-02", "2026-03"]
    # Now nothing may be provisioned into (or before) a settled period.
    code, details = await failure(provision(stubs, iccids(3, 1), utc(2026, 2, 10)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("provisioned_at") and "2026-02" in details
    await provision(stubs, iccids(3, 1), utc(2026, 4, 1))


async def test_overdue_gauge_counts_periods_a_failed_settlement_holds_back(
    app_stubs: tuple[Application, Stubs], database_url: str
) -> None:
    """`rating_settlement_overdue_periods`: a January that cannot be stored (a CHECK added
    behind the service's back) keeps January and February overdue; once it can, none."""
    app, stubs = app_stubs
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    await provision(stubs, iccids(1, 1), T0)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "ALTER TABLE invoices ADD CONSTRAINT no_january CHECK (period <> '2026-01')"
        )
        await advance(stubs, utc(2026, 3, 5))  # January and February are due
        sample = app.metrics.registry.get_sample_value
        assert sample("rating_settlements_total", {"result": "failed"}) == 1
        assert sample("rating_settlement_overdue_periods") == 2
        await conn.execute("ALTER TABLE invoices DROP CONSTRAINT no_january")
    finally:
        await conn.close()
    await advance(stubs, utc(2026, 3, 5, 0, 1))
    assert [x.period for x in await list_invoices(stubs)] == ["2026-01", "2026-02"]
    assert sample("rating_settlement_overdue_periods") == 0


async def test_a_settlement_run_checkpoints_the_usage_counters_first(
    app_stubs: tuple[Application, Stubs],
) -> None:
    """Each invoice's statement then reads the aggregate rows, not every record past a
    lagging watermark: after the run the watermark is the last committed record's."""
    app, stubs = app_stubs
    await put_plans(stubs, data_plan("P"))
    await put_account(stubs)
    sims = iccids(1, 3)
    await provision(stubs, sims, T0)
    sent = [record(f"r{n}", sim, 1_000 * (n + 1)) for n, sim in enumerate(sims)]
    assert [x.status for x in await rate(stubs, *sent)] == [t.RECORD_STATUS_RATED] * 3
    async with app.pool.acquire() as conn:
        last = await conn.fetchval("SELECT max(seq) FROM usage_records")
        assert await conn.fetchval("SELECT watermark FROM usage_checkpoint") < last
    await advance(stubs, FEB_1 + timedelta(days=1))
    async with app.pool.acquire() as conn:
        assert await conn.fetchval("SELECT watermark FROM usage_checkpoint") == last
    invoice = await get_invoice(stubs, "2026-01")
    assert dict(amounts(invoice))["USAGE"] == 0  # within the included quantity
    sample = app.metrics.registry.get_sample_value
    assert sample("rating_checkpoints_total", {"result": "written"}) == 1
    assert sample("rating_settlement_mismatches_total") == 0
