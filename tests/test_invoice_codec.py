"""Invoice documents and exports: the stored JSON round-trips exactly; CSV and JSON exports
carry the lines, the per-SIM breakdown and the total; the export command reads PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

from service.domain.model import Invoice, UsageType
from service.domain.periods import period_named
from service.domain.settlement import compute_invoice
from service.storage.invoice_codec import invoice_from_json, invoice_to_json
from service.usecases.invoice_export import CSV_COLUMNS, decimal_amount, export_csv, export_json
from tests.conftest import AppFactory
from tests.support.billing import settle, worked_example
from tests.support.builders import SIM1, SIM2, SIM3, account_a, plan_p, utc, worked_example_facts
from tests.support.cli import simrating


def january(final: bool = True) -> Invoice:
    return compute_invoice(
        account_a(),
        {"P": plan_p()},
        period_named("2026-01", "UTC", 1),
        worked_example_facts(),
        final=final,
        settled_at=utc(2026, 2, 2) if final else None,
    )


def test_stored_document_round_trips_exactly() -> None:
    for invoice in (january(), january(final=False)):
        doc = json.loads(json.dumps(invoice_to_json(invoice)))  # as jsonb gives it back
        assert invoice_from_json(doc) == invoice


def test_json_export_has_lines_and_breakdown() -> None:
    doc = json.loads(export_json(january()))
    assert doc["total_micros"] == 10_000_000 and doc["currency"] == "EUR"
    assert [line["amount_micros"] for line in doc["lines"]] == [
        1_810_000,
        1_060_000,
        2_000_000,
        5_130_000,
    ]
    by_sim = {sim["iccid"]: sim for sim in doc["sims"]}
    assert by_sim[SIM1]["billed_days"] == 27 and by_sim[SIM1]["billable"]
    assert by_sim[SIM1]["usage"]["DATA"]["charged_rated_quantity"] == 21_571_584
    assert by_sim[SIM2]["billed_days"] == 1
    assert by_sim[SIM2]["subscription_micros_exact"] == "2000000/31"
    assert not by_sim[SIM3]["billable"] and by_sim[SIM3]["usage"] == {}


def test_csv_export_rows() -> None:
    rows = list(csv.DictReader(io.StringIO(export_csv(january()))))
    assert tuple(rows[0]) == CSV_COLUMNS
    sections = [row["section"] for row in rows]
    assert sections == ["line"] * 4 + ["sim"] * 3 + ["total"]
    assert [row["amount"] for row in rows[:4]] == ["1.81", "1.06", "2.00", "5.13"]
    assert [row["kind"] for row in rows[:4]] == [
        "SUBSCRIPTION",
        "USAGE",
        "SIM_COMMITMENT_SHORTFALL",
        "MINIMUM_SPEND_TRUE_UP",
    ]
    sim1 = next(row for row in rows if row["iccid"] == SIM1)
    assert (sim1["usage_type"], sim1["quantity"], sim1["raw_quantity"]) == (
        UsageType.DATA.name,
        "21571584",
        str(500_000 + 600_000 + 20_971_520),
    )
    assert (sim1["billable"], sim1["billed_days"]) == ("true", "27")
    sim3 = next(row for row in rows if row["iccid"] == SIM3)
    assert (sim3["billable"], sim3["usage_type"], sim3["amount"]) == ("false", "", "")
    total = rows[-1]
    assert (total["amount"], total["amount_micros"], total["quantity"]) == (
        "10.00",
        "10000000",
        "2",
    )


def test_decimal_amounts_follow_the_currency() -> None:
    assert decimal_amount(10_000_000, "EUR") == "10.00"
    assert decimal_amount(715_000_000, "JPY") == "715"
    assert decimal_amount(1_250_000, "BHD") == "1.250"
    assert decimal_amount(-50_000, "USD") == "-0.05"


async def test_export_command_reads_the_settled_invoice(
    start_app: AppFactory, database_url: str
) -> None:
    _, stubs = await start_app()
    await worked_example(stubs)
    settled = await settle(stubs, "2026-01")

    async def export(*args: str) -> tuple[int, str, str]:
        run = await simrating(
            None, "invoices", "export", *args, env={"RATING_DATABASE_URL": database_url}
        )
        return run.code, run.out, run.err

    code, out, _ = await export("--account", "A", "--period", "2026-01", "--format", "json")
    assert code == 0
    assert json.loads(out)["total_micros"] == settled.total_micros
    code, out, _ = await export("--account", "A", "--period", "2026-01", "--format", "csv")
    assert code == 0 and out.splitlines()[-1].startswith("total,A,2026-01,EUR")
    assert [row.split(",")[0] for row in out.splitlines()[1:]].count("sim") == 3
    code, _, err = await export("--account", "A", "--period", "2026-02")
    assert code == 1 and "no invoice" in err
