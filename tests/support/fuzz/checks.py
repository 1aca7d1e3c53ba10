"""The fuzz test's set-up, and its checks over a whole run: the known-good tour, records in
doubt sent again, the state against the model, the server still serving (see
tests/test_fuzz.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import clock_service_pb2 as k
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import SERVICE_NAMES, Application
from tests.support import T0, Stubs
from tests.support.fuzz.driver import Fuzzer
from tests.support.fuzz.model import (
    MESSAGE_LIMIT,
    PROTECTED,
    SETUP_ACCOUNT,
    SETUP_PLAN,
    SETUP_SIMS,
    SUSPENDABLE,
    TERMINABLE,
    Model,
    every_method,
)
from tests.support.fuzz.strategies import build_account, setup_plan, timestamp
from tests.support.usage_state import (
    cache_state,
    check_checkpoint,
    expected_state,
    open_part,
    stored_state,
)


async def set_up(fuzzer: Fuzzer) -> None:
    methods = {m.name: m for m in every_method()}
    provision = p.ProvisionSimsRequest(
        account_id=SETUP_ACCOUNT, plan_id=SETUP_PLAN, iccids=SETUP_SIMS
    )
    provision.provisioned_at.FromDatetime(T0 - timedelta(days=1))
    for name, request in (
        ("PutPlan", c.PutPlanRequest(plan=setup_plan())),
        (
            "PutAccount",
            c.PutAccountRequest(account=build_account(SETUP_ACCOUNT, "EUR", "UTC", 1, None)),
        ),
        ("ProvisionSims", provision),
    ):
        answer = await fuzzer.call(methods[name], request)
        assert answer.code == grpc.StatusCode.OK, (name, answer.details)
        fuzzer.check(methods[name], request, answer)


async def known_good_tour(fuzzer: Fuzzer) -> None:
    """One call per RPC that must succeed whatever the fuzz did, checked like the others."""
    from rating.v1 import billing_service_pb2 as b

    record = t.UsageRecord(
        record_id="fz-tour", iccid=PROTECTED[1], usage_type=t.USAGE_TYPE_DATA, quantity=7
    )
    record.event_time.FromDatetime(fuzzer.model.now)
    requests: dict[str, Any] = {
        "PutPlan": c.PutPlanRequest(plan=setup_plan()),
        "GetPlan": c.GetPlanRequest(plan_id=SETUP_PLAN),
        "ListPlans": c.ListPlansRequest(),
        "PutAccount": c.PutAccountRequest(account=fuzzer.model.accounts[SETUP_ACCOUNT]),
        "GetAccount": c.GetAccountRequest(account_id=SETUP_ACCOUNT),
        "ProvisionSims": p.ProvisionSimsRequest(
            account_id=SETUP_ACCOUNT, plan_id=SETUP_PLAN, iccids=PROTECTED
        ),
        "SuspendSim": p.SuspendSimRequest(iccid=SUSPENDABLE[0]),
        "ResumeSim": p.ResumeSimRequest(iccid=SUSPENDABLE[0]),
        "TerminateSim": p.TerminateSimRequest(iccid=TERMINABLE[0]),
        "AuthorizeSession": r.AuthorizeSessionRequest(
            iccid=PROTECTED[0], usage_type=t.USAGE_TYPE_DATA, requested_quantity=1
        ),
        "GetSimStatus": r.GetSimStatusRequest(iccid=PROTECTED[0]),
        "RateUsage": r.RateUsageRequest(records=[record]),
        "StreamUsage": [r.StreamUsageRequest(batch_id="tour")],
        "GetBillPreview": b.GetBillPreviewRequest(account_id=SETUP_ACCOUNT),
        "SettlePeriod": b.SettlePeriodRequest(account_id=SETUP_ACCOUNT, period="2025-12"),
        "GetInvoice": b.GetInvoiceRequest(account_id=SETUP_ACCOUNT, period="2025-12"),
        "ListInvoices": b.ListInvoicesRequest(account_id=SETUP_ACCOUNT),
        "GetTime": k.GetTimeRequest(),
        "AdvanceTime": k.AdvanceTimeRequest(to=timestamp(fuzzer.model.now_seconds(), 0)),
    }
    for method in every_method():
        request = requests[method.name]
        answer = await fuzzer.call(method, request)
        fuzzer.check(method, request, answer)
        assert answer.code == grpc.StatusCode.OK, (method.name, answer.details)


async def resolve_in_doubt(fuzzer: Fuzzer, app: Application) -> None:
    """Send the records in doubt again, in the order they were first sent."""
    rate_usage = next(m for m in every_method() if m.name == "RateUsage")
    doubt = fuzzer.model.in_doubt
    stored = await stored_in_doubt(app, doubt, fuzzer.model)
    for records in retry_batches(doubt):
        request = r.RateUsageRequest(records=records)
        answer = await fuzzer.call(rate_usage, request)
        assert answer.code == grpc.StatusCode.OK, answer.details
        fuzzer._learn_results(records, list(answer.responses[0].results), stored)


async def stored_in_doubt(
    app: Application, doubt: list[t.UsageRecord], model: Model
) -> dict[tuple[str, str], t.UsageRecord]:
    """Of the records in doubt whose key (id, period) is not counted (answered RATED), the
    one stored with each key stored now: read from PostgreSQL, as no answer tells which of
    several records sent with an id a failed stream stored. Each must be one of those."""
    sent: dict[tuple[str, str], list[t.UsageRecord]] = defaultdict(list)
    for record in doubt:
        key = model.key(record)
        # An id with a NUL is never stored (PostgreSQL text cannot hold it).
        if key is not None and key not in model.rated_ids and "\x00" not in record.record_id:
            sent[key].append(record)
    async with app.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT record_id, period, iccid, usage_type, quantity, event_time FROM usage_records"
            " WHERE record_id = ANY($1::text[])",
            list({key[0] for key in sent}),
        )
    stored = {}
    for row in rows:
        key = (row["record_id"], row["period"])
        if key not in sent:
            continue  # stored in another period, by a record not in doubt
        content = (row["iccid"], row["usage_type"], row["quantity"], row["event_time"])
        matches = [x for x in sent[key] if record_content(x) == content]
        assert matches, f"stored {key!r} as no record sent with that id: {content}"
        stored[key] = matches[0]
    return stored


def record_content(record: t.UsageRecord) -> tuple[str, int, int, datetime]:
    return (record.iccid, record.usage_type, record.quantity, record.event_time.ToDatetime(UTC))


def retry_batches(records: list[t.UsageRecord]) -> Iterator[list[t.UsageRecord]]:
    """Batches of at most 5,000 records and half the message limit, in order."""
    batch: list[t.UsageRecord] = []
    size = 0
    for record in records:
        record_size = record.ByteSize() + 8  # with its tag and length
        if batch and (len(batch) == 5_000 or size + record_size > MESSAGE_LIMIT // 2):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += record_size
    if batch:
        yield batch


async def check_state(fuzzer: Fuzzer, stubs: Stubs) -> None:
    model = fuzzer.model
    listed = (await stubs.catalog.ListPlans(c.ListPlansRequest())).plans
    assert {plan.plan_id: plan for plan in listed} == model.plans
    assert len(listed) == len(model.plans)
    for account_id, account in model.accounts.items():
        got = await stubs.catalog.GetAccount(c.GetAccountRequest(account_id=account_id))
        assert got.account == account
    for account_id in sorted(model.asked_accounts - set(model.accounts))[:200]:
        if account_id:
            code = await code_of(
                stubs.catalog.GetAccount(c.GetAccountRequest(account_id=account_id))
            )
            assert code == grpc.StatusCode.NOT_FOUND, account_id[:50]
    for iccid in sorted(model.asked_iccids - set(model.sims))[:300]:
        if iccid:
            code = await code_of(stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid)))
            assert code == grpc.StatusCode.NOT_FOUND, iccid[:50]
    for iccid, (account_id, plan_id) in model.sims.items():
        status = (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))).status
        assert (status.account_id, status.plan_id) == (account_id, plan_id)
        shown = {u.usage_type: u.quantity for u in status.period_usage if u.quantity}
        expected = {
            usage_type: quantity
            for usage_type, quantity in model.rated.get((iccid, status.current_period), {}).items()
            if quantity
        }
        assert shown == expected, (iccid, status.current_period)


async def check_usage_state(app: Application) -> None:
    """After a checkpoint, the stored aggregates, uncharged records and settled totals are
    what the stored records imply, and memory holds exactly the open periods' part of
    them."""
    assert await app.checkpoint.run_once() is not None
    async with app.state_lock:
        app.persister.count_committed()  # what the persister committed last (see StateLock)
        memory = cache_state(app.cache)
    async with app.pool.acquire() as conn:
        assert await check_checkpoint(conn) == app.persister.committed_seq
        stored = await stored_state(conn)
        assert stored == await expected_state(conn)
    assert memory == open_part(stored, app.cache)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def check_still_serving(stubs: Stubs, model: Model) -> None:
    health = health_pb2_grpc.HealthStub(stubs.channel)
    for service in ("", *SERVICE_NAMES):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    record = t.UsageRecord(
        record_id="fz-known-good", iccid=PROTECTED[0], usage_type=t.USAGE_TYPE_DATA, quantity=5
    )
    record.event_time.FromDatetime(model.now)
    results = (await stubs.rating.RateUsage(r.RateUsageRequest(records=[record]))).results
    assert [x.status for x in results] == [t.RECORD_STATUS_RATED]
    await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id=SETUP_PLAN))


def report(model: Model, calls: int, seconds: float) -> None:
    print(f"\nfuzz: {calls} calls in {seconds:.1f} s")
    for method in every_method():
        codes = ", ".join(f"{code} {n}" for code, n in sorted(model.codes[method.name].items()))
        print(f"  {method.name:<17} {codes}")
    print(
        "  record statuses: "
        + ", ".join(f"{s} {n}" for s, n in sorted(model.record_statuses.items()))
    )
