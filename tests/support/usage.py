"""Builders for usage tests: records, batches and a ready account with SIMs."""

from __future__ import annotations

from datetime import datetime, timedelta

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.domain.model import UsageRecord
from service.ingestion.engine import UsageEngine
from service.ingestion.records import Candidate
from tests.support import T0, Stubs, data_plan, iccids


def record(
    record_id: str,
    iccid: str,
    quantity: int = 1_000,
    when: datetime | None = T0,
    usage_type: int = t.USAGE_TYPE_DATA,
) -> t.UsageRecord:
    out = t.UsageRecord(record_id=record_id, iccid=iccid, usage_type=usage_type, quantity=quantity)  # type: ignore[arg-type]
    if when is not None:
        out.event_time.FromDatetime(when)
    return out


async def rate(stubs: Stubs, *records: t.UsageRecord) -> list[t.RecordResult]:
    response = await stubs.rating.RateUsage(r.RateUsageRequest(records=records))
    return list(response.results)


async def account_with_sims(
    stubs: Stubs,
    count: int = 3,
    plan: t.Plan | None = None,
    start: int = 1,
    provisioned_at: datetime = T0 - timedelta(days=1),
    account_id: str = "A",
) -> list[str]:
    plan = plan or data_plan("P")
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=plan))
    await stubs.catalog.PutAccount(
        c.PutAccountRequest(account=t.Account(account_id=account_id, currency=plan.currency))
    )
    sims = iccids(start, count)
    request = p.ProvisionSimsRequest(account_id=account_id, plan_id=plan.plan_id, iccids=sims)
    request.provisioned_at.FromDatetime(provisioned_at)
    await stubs.provisioning.ProvisionSims(request)
    return sims


async def period_usage(stubs: Stubs, iccid: str) -> dict[int, int]:
    status = (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))).status
    return {u.usage_type: u.quantity for u in status.period_usage}


def replay(engine: UsageEngine, records: list[UsageRecord], batches: list[int]) -> None:
    """Feed records to the engine in batches of the given sizes, exactly as the persister
    does (check, plan_starts, apply), with the database commit left out."""
    position = 0
    for size in batches:
        checked = engine.check_all(records[position : position + size])
        position += size
        candidates = [c for c in checked if isinstance(c, Candidate)]
        engine.apply(candidates, engine.plan_starts(candidates))
