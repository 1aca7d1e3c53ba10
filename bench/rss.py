"""RSS of a real `python -m service` holding many SIMs with usage, before and after a restart.

    python -m bench.rss [--sims 1000000] [--database-url URL] [--tree DIR]

Not in the registry (it takes minutes at full size). In a fresh database
(`simrating_rss_<random>`, dropped at the end) a child `python -m service`
(bench.service_process.ServiceProcess: test clock at 2026-01-20, so 2026-01 is the open period; run
from `--tree`, default this checkout; killed if its RSS passes 70% of the memory available
at the start):

1. `--sims` SIMs in 100 accounts on 2 plans (the ingestion benchmark's plan with an SMS
   rate, one of them pooled), through ProvisionSims in calls of 10,000;
2. one DATA record for 90% of the SIMs and one SMS record for 10% (RateUsage, 10,000 a
   call): one open SIM-period for 90% of the SIMs;
3. VmRSS of the child (after a full collection is not possible from outside: the figure
   is what the operating system sees), then SIGTERM (the final checkpoint), a start, time
   from exec to health SERVING, and VmRSS again; one SIM's status is checked against
   what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc

from bench.ingestion import PLAN, PROVISION_CALL, provision_sims
from bench.service_process import MIB, REPO, ServiceProcess, running, service_rss_limit
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import catalog_service_pb2_grpc as c_grpc
from rating.v1 import provisioning_service_pb2_grpc as p_grpc
from rating.v1 import rating_service_pb2 as r
from rating.v1 import rating_service_pb2_grpc as r_grpc
from rating.v1 import types_pb2 as t
from service.domain.iccid import make_iccid

ACCOUNTS = 100
CALL = 10_000  # records per RateUsage
CLOCK = datetime(2026, 1, 20, tzinfo=UTC)
LATE_WINDOW_S = 86_400  # the service's default
PROVISIONED_AT = datetime(2025, 12, 1, tzinfo=UTC)
EVENT = datetime(2026, 1, 10, tzinfo=UTC)


def plan(plan_id: str, pooled: bool) -> t.Plan:
    """The ingestion benchmark's plan under `plan_id` with an SMS rate (10 included, then
    0.05 EUR each), every rate `pooled` or not."""
    result = t.Plan()
    result.CopyFrom(PLAN)
    result.plan_id = plan_id
    sms = result.usage_rates.add(
        usage_type=t.USAGE_TYPE_SMS, unit_quantity=1, rounding_increment=1, included_quantity=10
    )
    sms.tiers.add(up_to_quantity=0, price_micros=50_000)
    for rate in result.usage_rates:
        rate.pooled = pooled
    return result


async def fill(port: int, sims: int) -> tuple[str, int]:
    """Provision and send usage; returns one SIM with DATA usage and its quantity."""
    iccids = [make_iccid(7_000_000_000 + n) for n in range(sims)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        catalog = c_grpc.CatalogServiceStub(channel)
        for plan_id, pooled in (("iot-basic", False), ("iot-pool", True)):
            await catalog.PutPlan(c.PutPlanRequest(plan=plan(plan_id, pooled)))
        for a in range(ACCOUNTS):
            account = t.Account(account_id=f"account-{a:03d}", currency="EUR")
            await catalog.PutAccount(c.PutAccountRequest(account=account))
        provisioning = p_grpc.ProvisioningServiceStub(channel)
        for k, start in enumerate(range(0, sims, PROVISION_CALL)):
            await provision_sims(
                provisioning,
                f"account-{k % ACCOUNTS:03d}",
                ("iot-basic", "iot-pool")[k % 2],
                iccids[start : start + PROVISION_CALL],
                PROVISIONED_AT,
                deadline_s=300,
            )
        rng = random.Random(2026)
        users = rng.sample(iccids, sims * 9 // 10)
        records = [
            (f"d-{iccid}", iccid, t.USAGE_TYPE_DATA, rng.randrange(1, 4_194_304)) for iccid in users
        ]
        records += [(f"s-{iccid}", iccid, t.USAGE_TYPE_SMS, 1) for iccid in users[: sims // 10]]
        rating = r_grpc.RatingServiceStub(channel)
        for start in range(0, len(records), CALL):
            batch = []
            for record_id, iccid, kind, quantity in records[start : start + CALL]:
                record = t.UsageRecord(
                    record_id=record_id, iccid=iccid, usage_type=kind, quantity=quantity
                )
                record.event_time.FromDatetime(EVENT + timedelta(seconds=start % 86_400))
                batch.append(record)
            response = await rating.RateUsage(r.RateUsageRequest(records=batch), timeout=300)
            rated = sum(1 for x in response.results if x.status == t.RECORD_STATUS_RATED)
            if rated != len(batch):
                raise RuntimeError(f"{rated} of {len(batch)} records rated")
        return records[0][1], records[0][3]


async def data_usage(port: int, iccid: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        rating = r_grpc.RatingServiceStub(channel)
        status = (await rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))).status
        return sum(u.quantity for u in status.period_usage if u.usage_type == t.USAGE_TYPE_DATA)


async def main(args: argparse.Namespace) -> None:
    admin = await asyncpg.connect(args.database_url)
    name = f"simrating_rss_{random.randrange(16**8):08x}"
    await admin.execute(f"CREATE DATABASE {name}")
    url = args.database_url.rsplit("/", 1)[0] + "/" + name
    child = ServiceProcess(url, LATE_WINDOW_S, service_rss_limit(), tree=args.tree)
    try:
        async with running(child):
            await child.start(CLOCK)
            empty = child.memory("VmRSS")
            began = time.perf_counter()
            iccid, quantity = await fill(child.port, args.sims)
            print(f"filled {args.sims:,} SIMs in {time.perf_counter() - began:.0f} s", flush=True)
            filled = child.memory("VmRSS")
            await child.stop()
            seconds = await child.start(CLOCK)
            restarted = child.memory("VmRSS")
            assert await data_usage(child.port, iccid) == quantity
            await child.stop()
        print(
            json.dumps(
                {
                    "tree": str(args.tree),
                    "sims": args.sims,
                    "sim_periods": args.sims * 9 // 10,
                    "rss_mib_empty": round(empty / MIB, 1),
                    "rss_mib_filled": round(filled / MIB, 1),
                    "restart_to_serving_s": round(seconds, 2),
                    "rss_mib_after_restart": round(restarted / MIB, 1),
                }
            )
        )
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=int, default=1_000_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout to run the service from")
    asyncio.run(main(parser.parse_args()))
