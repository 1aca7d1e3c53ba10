"""The real service, end to end: StreamUsage records durably acknowledged per second.

In this process: a fresh database, `Application` on port 0 with the test clock at
`CLOCK_START`, one plan and one account, `sims` SIMs provisioned in calls of 10,000.
In a child process (bench.client): the same workload over `streams` pipelined streams.
The timer runs in the client, from the first request to the last acknowledgement; the
service acknowledges a batch only after its group commit, so every counted record is
in PostgreSQL. Afterwards every result must be RATED and usage_records must hold
exactly `records` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import grpc

from bench.client import ClientResult, StreamClient
from bench.context import BenchContext
from bench.registry import Figure, VerificationFailed, benchmark
from bench.workload import (
    PROVISIONED_AT,
    ROUNDING_INCREMENT,
    Workload,
    service_settings,
    sim_iccids,
)
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import catalog_service_pb2_grpc as c_grpc
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import provisioning_service_pb2_grpc as p_grpc
from rating.v1 import types_pb2 as t
from service.app import Application
from service.ops.metrics import Metrics

PROVISION_CALL = 10_000
ACCOUNT_ID = "bench-account"
# IMMEDIATE, ALWAYS, DAILY: 2.00 EUR a month, DATA at 0.10 EUR per MiB after 10 MiB.
PLAN = t.Plan(
    plan_id="bench-plan",
    currency="EUR",
    subscription_fee_micros=2_000_000,
    activation=t.Activation(mode=t.ACTIVATION_MODE_IMMEDIATE),
    billing_mode=t.BILLING_MODE_ALWAYS,
    proration=t.PRORATION_DAILY,
    usage_rates=[
        t.UsageRate(
            usage_type=t.USAGE_TYPE_DATA,
            unit_quantity=1_048_576,
            rounding_increment=ROUNDING_INCREMENT,
            included_quantity=10_485_760,
            tiers=[t.Tier(up_to_quantity=0, price_micros=100_000)],
        )
    ],
)


async def provision_sims(
    provisioning: p_grpc.ProvisioningServiceStub,
    account_id: str,
    plan_id: str,
    iccids: Sequence[str],
    provisioned_at: datetime = PROVISIONED_AT,
    deadline_s: float = 120,
) -> None:
    """`iccids` into `account_id` on `plan_id`, provisioned at `provisioned_at`, in calls of
    PROVISION_CALL, each with a deadline of `deadline_s`; every SIM must come back CREATED."""
    for start in range(0, len(iccids), PROVISION_CALL):
        request = p.ProvisionSimsRequest(
            account_id=account_id, plan_id=plan_id, iccids=iccids[start : start + PROVISION_CALL]
        )
        request.provisioned_at.FromDatetime(provisioned_at)
        response = await provisioning.ProvisionSims(request, timeout=deadline_s)
        created = sum(1 for x in response.results if x.status == p.PROVISION_STATUS_CREATED)
        if created != len(request.iccids):
            raise VerificationFailed(f"provisioned {created} of {len(request.iccids)} SIMs")


async def provision(address: str, workload: Workload) -> None:
    """One plan, one account, every SIM provisioned at PROVISIONED_AT in calls of 10,000."""
    async with grpc.aio.insecure_channel(address) as channel:
        catalog = c_grpc.CatalogServiceStub(channel)
        await catalog.PutPlan(c.PutPlanRequest(plan=PLAN))
        await catalog.PutAccount(
            c.PutAccountRequest(account=t.Account(account_id=ACCOUNT_ID, currency="EUR"))
        )
        provisioning = p_grpc.ProvisioningServiceStub(channel)
        await provision_sims(provisioning, ACCOUNT_ID, PLAN.plan_id, sim_iccids(workload))


def verify(result: ClientResult, stored: int, workload: Workload) -> None:
    problems = list(result.problems)
    rated = result.statuses.get("RECORD_STATUS_RATED", 0)
    if rated != workload.records:
        problems.append(f"{rated} of {workload.records} results RATED: {result.statuses}")
    if stored != workload.records:
        problems.append(f"usage_records holds {stored} rows, expected {workload.records}")
    if problems:
        raise VerificationFailed("; ".join(problems))


def commit_figures(metrics: Metrics) -> dict[str, float]:
    """What the persister did: group commits, their mean size, and the summed time from
    taking a group to answering it (groups overlap: one is counted while the next is
    written, so this can exceed the wall time)."""
    sample = metrics.registry.get_sample_value
    commits = sample("rating_persist_batch_records_count") or 0.0
    records = sample("rating_persist_batch_records_sum") or 0.0
    return {
        "group_commits": commits,
        "mean_records_per_commit": round(records / commits, 1) if commits else 0.0,
        "group_seconds_sum": round(sample("rating_persist_batch_seconds_sum") or 0.0, 2),
        # Usage checkpoints (during the run if the interval allows, and the one at stop).
        "checkpoints": sample("rating_checkpoints_total", {"result": "written"}) or 0.0,
        "checkpoint_rows": sample("rating_checkpoint_rows_total") or 0.0,
        "checkpoint_seconds_sum": round(sample("rating_checkpoint_seconds_sum") or 0.0, 3),
    }


@benchmark("ingestion", "StreamUsage through the real service, records durably acknowledged")
async def ingestion(ctx: BenchContext) -> list[Figure]:
    workload = ctx.workload
    progress = ctx.progress
    client = StreamClient(workload)  # builds its requests while we set the service up
    try:
        async with ctx.fresh_database() as url:
            metrics = Metrics()
            app = Application(service_settings(url), metrics)
            with progress.phase("ingestion: start service"):
                await app.start()
            try:
                address = f"127.0.0.1:{app.port}"
                with progress.phase(f"ingestion: provision {workload.sims:,} SIMs"):
                    await provision(address, workload)
                with progress.phase(f"ingestion: client builds {workload.records:,} records"):
                    built = await client.ready()
                await ctx.checkpoint(url)
                with (
                    progress.phase(
                        f"ingestion: stream {workload.records:,} records"
                        f" over {workload.streams} streams"
                    ),
                    ctx.profiled("ingestion"),
                    ctx.cpu_meter() as cpu,
                ):
                    result = await client.run(address)
            finally:
                await app.stop()
            with progress.phase("ingestion: verify"):
                conn = await asyncpg.connect(url)
                try:
                    stored = await conn.fetchval("SELECT count(*) FROM usage_records")
                finally:
                    await conn.close()
                verify(result, stored, workload)
    finally:
        client.close()
    progress.line(f"ingestion: {result.records_per_second:,.0f} records/s")
    return [
        result.figure(
            "ingestion",
            "StreamUsage ingestion (durably acknowledged)",
            built["build_seconds"],
            statuses=result.statuses,
            usage_records_rows=stored,
            **commit_figures(metrics),
            **cpu,
        )
    ]
