"""CatalogService through a real channel: plans, accounts and every validation rule."""

from __future__ import annotations

import grpc
import pytest

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import types_pb2 as t
from tests.support import Stubs, data_plan, first_use_plan, iccids


async def expect_error(call: object, code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    assert field in (err.value.details() or ""), err.value.details()


async def test_put_plan_is_idempotent_for_identical_content(stubs: Stubs) -> None:
    first = await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P1")))
    again = await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P1")))
    assert first.created and not again.created
    assert again.plan == data_plan("P1")
    changed = data_plan("P1", subscription_fee_micros=3_000_000)
    await expect_error(
        stubs.catalog.PutPlan(c.PutPlanRequest(plan=changed)), grpc.StatusCode.ALREADY_EXISTS, "P1"
    )
    got = await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id="P1"))
    assert got.plan.subscription_fee_micros == 2_000_000


async def test_get_and_list_plans(stubs: Stubs) -> None:
    for plan_id in ("B", "A"):
        await stubs.catalog.PutPlan(c.PutPlanRequest(plan=first_use_plan(plan_id)))
    listed = await stubs.catalog.ListPlans(c.ListPlansRequest())
    assert [plan.plan_id for plan in listed.plans] == ["A", "B"]
    assert listed.plans[0] == first_use_plan("A")
    await expect_error(
        stubs.catalog.GetPlan(c.GetPlanRequest(plan_id="nope")), grpc.StatusCode.NOT_FOUND, "nope"
    )


async def test_put_account_creates_then_updates_schedule(stubs: Stubs) -> None:
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P")))
    account = t.Account(account_id="A", currency="EUR", timezone="Europe/Berlin", billing_day=5)
    created = await stubs.catalog.PutAccount(c.PutAccountRequest(account=account))
    assert created.created
    account.commitment_schedule.append(
        t.CommitmentStep(
            effective_period="2026-01",
            min_billable_sims=3,
            sim_commitment_plan_id="P",
            min_spend_micros=10_000_000,
        )
    )
    updated = await stubs.catalog.PutAccount(c.PutAccountRequest(account=account))
    assert not updated.created
    got = await stubs.catalog.GetAccount(c.GetAccountRequest(account_id="A"))
    assert got.account == account


async def test_account_defaults_to_utc_and_day_one(stubs: Stubs) -> None:
    await stubs.catalog.PutAccount(
        c.PutAccountRequest(account=t.Account(account_id="A", currency="JPY"))
    )
    got = await stubs.catalog.GetAccount(c.GetAccountRequest(account_id="A"))
    assert (got.account.timezone, got.account.billing_day) == ("UTC", 1)


async def test_account_terms_are_fixed_once_it_has_sims(stubs: Stubs) -> None:
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P")))
    account = t.Account(account_id="A", currency="EUR")
    await stubs.catalog.PutAccount(c.PutAccountRequest(account=account))
    account.timezone = "Asia/Tokyo"
    await stubs.catalog.PutAccount(c.PutAccountRequest(account=account))  # no SIMs yet: fine
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=iccids(1, 1))
    )
    for name, value in (("currency", "USD"), ("timezone", "UTC"), ("billing_day", 2)):
        changed = t.Account()
        changed.CopyFrom(account)
        setattr(changed, name, value)
        await expect_error(
            stubs.catalog.PutAccount(c.PutAccountRequest(account=changed)),
            grpc.StatusCode.FAILED_PRECONDITION,
            name,
        )
    await expect_error(
        stubs.catalog.GetAccount(c.GetAccountRequest(account_id="zz")),
        grpc.StatusCode.NOT_FOUND,
        "zz",
    )


def _plan_with(mutate: object) -> t.Plan:
    plan = data_plan("V")
    mutate(plan)  # type: ignore[operator]
    return plan


def _set_tiers(plan: t.Plan, *tiers: tuple[int, int]) -> None:
    del plan.usage_rates[0].tiers[:]
    plan.usage_rates[0].tiers.extend(t.Tier(up_to_quantity=u, price_micros=p) for u, p in tiers)


PLAN_RULES = [
    ("currency not ISO 4217", lambda p: setattr(p, "currency", "EURO"), "plan.currency"),
    ("currency unknown", lambda p: setattr(p, "currency", "XYZ"), "plan.currency"),
    (
        "tiers descending",
        lambda p: _set_tiers(p, (2000, 1), (1000, 1), (0, 1)),
        "tiers[1].up_to_quantity",
    ),
    (
        "unbounded tier not last",
        lambda p: _set_tiers(p, (0, 1), (1000, 1)),
        "tiers[0].up_to_quantity",
    ),
    (
        "unit_quantity zero",
        lambda p: setattr(p.usage_rates[0], "unit_quantity", 0),
        "plan.usage_rates[0].unit_quantity",
    ),
    (
        "rounding_increment zero",
        lambda p: setattr(p.usage_rates[0], "rounding_increment", 0),
        "plan.usage_rates[0].rounding_increment",
    ),
    (
        "first use without threshold",
        lambda p: setattr(p.activation, "mode", t.ACTIVATION_MODE_FIRST_USE),
        "plan.activation.thresholds",
    ),
    ("missing plan id", lambda p: setattr(p, "plan_id", ""), "plan.plan_id"),
    ("unspecified billing mode", lambda p: setattr(p, "billing_mode", 0), "plan.billing_mode"),
    (
        "unknown activation mode",
        lambda p: setattr(p.activation, "mode", 99),
        "plan.activation.mode",
    ),
    (
        "negative fee",
        lambda p: setattr(p, "subscription_fee_micros", -1),
        "plan.subscription_fee_micros",
    ),
]


@pytest.mark.parametrize(("rule", "mutate", "field"), PLAN_RULES, ids=[r[0] for r in PLAN_RULES])
async def test_plan_validation_names_the_field(
    stubs: Stubs, rule: str, mutate: object, field: str
) -> None:
    await expect_error(
        stubs.catalog.PutPlan(c.PutPlanRequest(plan=_plan_with(mutate))),
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
    )
    listed = await stubs.catalog.ListPlans(c.ListPlansRequest())
    assert not listed.plans, "a rejected plan must not be stored"


def _account(**fields: object) -> t.Account:
    account = t.Account(account_id="A", currency="EUR")
    for name, value in fields.items():
        setattr(account, name, value)
    return account


def _with_steps(*steps: tuple[str, str]) -> t.Account:
    account = _account()
    account.commitment_schedule.extend(
        t.CommitmentStep(effective_period=period, min_billable_sims=1, sim_commitment_plan_id=plan)
        for period, plan in steps
    )
    return account


ACCOUNT_RULES = [
    ("currency", _account(currency="eur"), "account.currency"),
    ("timezone", _account(timezone="Mars/Olympus"), "account.timezone"),
    ("billing day 29", _account(billing_day=29), "account.billing_day"),
    ("billing day negative", _account(billing_day=-1), "account.billing_day"),
    (
        "steps out of order",
        _with_steps(("2026-04", "P"), ("2026-01", "P")),
        "commitment_schedule[1].effective_period",
    ),
    (
        "bad period",
        _with_steps(
            ("2026-13", "P"),
        ),
        "commitment_schedule[0].effective_period",
    ),
    (
        "unknown plan",
        _with_steps(
            ("2026-01", "nope"),
        ),
        "commitment_schedule[0].sim_commitment_plan_id",
    ),
    (
        "plan of another currency",
        _with_steps(
            ("2026-01", "USDPLAN"),
        ),
        "commitment_schedule[0].sim_commitment_plan_id",
    ),
]


@pytest.mark.parametrize(
    ("rule", "account", "field"), ACCOUNT_RULES, ids=[r[0] for r in ACCOUNT_RULES]
)
async def test_account_validation_names_the_field(
    stubs: Stubs, rule: str, account: t.Account, field: str
) -> None:
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P")))
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("USDPLAN", currency="USD")))
    await expect_error(
        stubs.catalog.PutAccount(c.PutAccountRequest(account=account)),
        grpc.StatusCode.INVALID_ARGUMENT,
        field,
    )
    await expect_error(
        stubs.catalog.GetAccount(c.GetAccountRequest(account_id="A")),
        grpc.StatusCode.NOT_FOUND,
        "A",
    )


async def test_missing_plan_message_is_invalid(stubs: Stubs) -> None:
    await expect_error(
        stubs.catalog.PutPlan(c.PutPlanRequest()), grpc.StatusCode.INVALID_ARGUMENT, "plan"
    )
