"""`simrating catalog apply` against a real service: JSON and YAML files, created /
unchanged / updated, and a bad document refused with its file, index and field."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from rating.v1 import catalog_service_pb2 as c
from tests.conftest import AppFactory
from tests.support import Stubs
from tests.support.cli import simrating

PLAN = {
    "plan_id": "basic",
    "currency": "EUR",
    "subscription_fee_micros": "2000000",
    "activation": {
        "mode": "ACTIVATION_MODE_FIRST_USE",
        "thresholds": [{"usage_type": "USAGE_TYPE_DATA", "quantity": "1048576"}],
        "grace_period": "2592000s",
    },
    "billingMode": "BILLING_MODE_ALWAYS",
    "proration": "PRORATION_DAILY",
    "usage_rates": [
        {
            "usage_type": "USAGE_TYPE_DATA",
            "unit_quantity": 1048576,
            "rounding_increment": 1024,
            "tiers": [{"up_to_quantity": 0, "price_micros": 100000}],
        }
    ],
}
YAML = """\
plan:
  plan_id: other
  currency: EUR
  activation: {mode: ACTIVATION_MODE_IMMEDIATE}
  billing_mode: BILLING_MODE_WHEN_USED
  proration: PRORATION_NONE
---
account:
  account_id: acme
  currency: EUR
  timezone: Europe/Paris
"""


async def exists(stubs: Stubs, kind: str, object_id: str) -> bool:
    try:
        if kind == "plan":
            await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id=object_id))
        else:
            await stubs.catalog.GetAccount(c.GetAccountRequest(account_id=object_id))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() is grpc.StatusCode.NOT_FOUND
        return False
    return True


def results(out: str) -> list[tuple[str, str, str]]:
    """(document, id, result) rows of the catalog table."""
    rows = []
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip("│| ").split("│")]
        if len(cells) == 4 and cells[3] in ("created", "unchanged", "updated", "refused"):
            rows.append((Path(cells[0]).name, cells[2], cells[3]))
    return rows


async def test_created_then_unchanged_then_updated(start_app: AppFactory, tmp_path: Path) -> None:
    app, stubs = await start_app()
    addr = f"127.0.0.1:{app.port}"
    (tmp_path / "plans.json").write_text(json.dumps([{"plan": PLAN}]))
    (tmp_path / "more.yaml").write_text(YAML)
    files = ("plans.json", "more.yaml")

    first = await simrating(addr, "catalog", "apply", *files, cwd=tmp_path)
    assert first.code == 0, first.err
    assert results(first.out) == [
        ("plans.json[0]", "basic", "created"),
        ("more.yaml[0]", "other", "created"),
        ("more.yaml[1]", "acme", "created"),
    ]
    plan = (await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id="basic"))).plan
    assert plan.subscription_fee_micros == 2_000_000
    assert plan.activation.grace_period.seconds == 30 * 86_400

    again = await simrating(addr, "catalog", "apply", *files, cwd=tmp_path)
    assert again.code == 0, again.err
    assert [r[2] for r in results(again.out)] == ["unchanged"] * 3

    (tmp_path / "more.yaml").write_text(YAML.replace("Europe/Paris", "Europe/Berlin"))
    changed = await simrating(addr, "catalog", "apply", *files, cwd=tmp_path)
    assert changed.code == 0, changed.err
    assert [r[2] for r in results(changed.out)] == ["unchanged", "unchanged", "updated"]
    account = (await stubs.catalog.GetAccount(c.GetAccountRequest(account_id="acme"))).account
    assert account.timezone == "Europe/Berlin"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        # json_format refuses it: the path down to the field, with list indexes.
        (
            {"usage_rates": [{"tiers": [{"price_micros": "ten"}]}]},
            "plan.usage_rates[0].tiers[0].price_micros",
        ),
        ({"billing_mode": "MONTHLY"}, "plan.billing_mode"),
        ({"colour": "red"}, "plan.colour"),
        # The catalog's rules refuse it (before anything is sent).
        ({"currency": "EURO"}, "plan.currency"),
    ],
)
async def test_a_bad_document_is_refused_and_nothing_is_applied(
    start_app: AppFactory, tmp_path: Path, document: dict[str, object], field: str
) -> None:
    app, stubs = await start_app()
    bad = {**PLAN, "plan_id": "bad", **document}
    path = tmp_path / "catalog.json"
    path.write_text(
        json.dumps(
            [
                {"plan": PLAN},
                {"account": {"account_id": "a", "currency": "EUR"}},
                {"plan": bad},
                {"account": {"account_id": "b", "currency": "EUR"}},
            ]
        )
    )
    run = await simrating(f"127.0.0.1:{app.port}", "catalog", "apply", path.name, cwd=tmp_path)
    assert run.code == 2
    assert f"catalog.json[2]: {field}:" in run.err, run.err
    assert "nothing applied" in run.err
    for kind, object_id in (("plan", "basic"), ("account", "a"), ("plan", "bad"), ("account", "b")):
        assert not await exists(stubs, kind, object_id), object_id


async def test_a_document_the_service_refuses_stops_the_apply_there(
    start_app: AppFactory, tmp_path: Path
) -> None:
    app, stubs = await start_app()
    addr = f"127.0.0.1:{app.port}"
    (tmp_path / "v1.json").write_text(json.dumps({"plan": PLAN}))
    assert (await simrating(addr, "catalog", "apply", "v1.json", cwd=tmp_path)).code == 0
    # Plans are immutable: a new fee for an existing plan is refused by the service.
    changed = {**PLAN, "subscription_fee_micros": "3000000"}
    (tmp_path / "v2.yaml").write_text(
        "account: {account_id: first, currency: EUR}\n---\n"
        + json.dumps({"plan": changed})
        + "\n---\naccount: {account_id: after, currency: EUR}\n"
    )
    run = await simrating(addr, "catalog", "apply", "v2.yaml", cwd=tmp_path)
    assert run.code == 2
    assert results(run.out) == [
        ("v2.yaml[0]", "first", "created"),
        ("v2.yaml[1]", "basic", "refused"),
    ]
    assert "v2.yaml[1]" in run.err and "ALREADY_EXISTS" in run.err
    assert await exists(stubs, "account", "first")
    assert not await exists(stubs, "account", "after")
    plan = (await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id="basic"))).plan
    assert plan.subscription_fee_micros == 2_000_000
