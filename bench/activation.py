"""Grace-deadline activation: 100,000 never-used FIRST_USE SIMs, a month of deadlines.

Part 1, throughput (test clock). A fresh database, `Application` on the test clock at
`CLOCK_START` (2026-01-30), one account and a FIRST_USE plan (threshold 1 MiB of DATA,
grace 30 days). `sims` SIMs are provisioned back-dated over 29 days (`PROVISION_CALLS`
ProvisionSims calls, call k at 2026-01-01 + k x 29 days / calls), so their deadlines
spread over 2026-01-31 .. 2026-03-01. No usage is ever sent. Then ClockService.AdvanceTime
moves the clock day by day to 2026-03-02; each call returns after the activation worker
started billing for every SIM whose deadline passed. The figure: SIMs / seconds spent
inside the AdvanceTime calls that activated something. The late-usage window is set to
365 days so that no settlement runs inside these calls (it would time invoicing, not
activation). Afterwards: rating_activations_total{reason="GRACE_EXPIRED"} = sims, nothing
pending, and every SIM in the database has billing_started_at = provisioned_at + 30
days, reason GRACE_EXPIRED, state ACTIVE.

Part 2, idle cost (system clock). A second fresh database and a second `Application` on
the SYSTEM clock; `sims` SIMs provisioned now (deadlines 30 days ahead). With every
client channel closed, the process CPU time (getrusage, all threads) is measured over
`IDLE_SECONDS` of wall time while the activation loop sleeps until its earliest
deadline. `run_once` of the activation worker is wrapped to count its wake-ups in the
window (expected 0), and /proc/self/task gives the CPU per thread. The rest of the
service (gRPC server threads, settlement loop, persister, asyncpg pool) idles in the same
process and is included in the figure.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from bench.context import BenchContext
from bench.ingestion import PLAN as INGESTION_PLAN
from bench.registry import Figure, VerificationFailed, benchmark
from bench.workload import service_settings, sim_iccids
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import catalog_service_pb2_grpc as c_grpc
from rating.v1 import clock_service_pb2 as k
from rating.v1 import clock_service_pb2_grpc as k_grpc
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import provisioning_service_pb2_grpc as p_grpc
from rating.v1 import types_pb2 as t
from service.app import Application
from service.ops.metrics import Metrics

ACCOUNT_ID = "bench-activation"
GRACE = timedelta(days=30)
FIRST_PROVISIONED = datetime(2026, 1, 1, tzinfo=UTC)
PROVISION_SPAN = timedelta(days=29)
PROVISION_CALLS = 100
CLOCK_START = FIRST_PROVISIONED + PROVISION_SPAN + timedelta(hours=1)
DAY = timedelta(days=1)
# Far beyond the timed month: no period is settled inside an AdvanceTime call.
NO_SETTLEMENT_WINDOW = timedelta(days=365)
IDLE_SETTLE_SECONDS = 2.0
IDLE_SECONDS = 10.0
IDLE_PROVISION_CALL = 10_000
GRACE_EXPIRED = 3  # service.domain.model.BillingStartReason.GRACE_EXPIRED
ACTIVE = 2  # service.domain.model.SimState.ACTIVE

PLAN = t.Plan()
PLAN.CopyFrom(INGESTION_PLAN)  # the same prices, but billing starts on first use
PLAN.plan_id = "bench-first-use"
PLAN.activation.mode = t.ACTIVATION_MODE_FIRST_USE
PLAN.activation.thresholds.add(usage_type=t.USAGE_TYPE_DATA, quantity=1_048_576)
PLAN.activation.grace_period.FromSeconds(int(GRACE.total_seconds()))


async def provision(
    channel: grpc.aio.Channel, iccids: list[str], calls: list[tuple[int, datetime | None]]
) -> None:
    """The plan, the account, then one ProvisionSims per (first SIM index, provisioned_at):
    each call provisions the SIMs up to the next call's first index."""
    catalog = c_grpc.CatalogServiceStub(channel)
    await catalog.PutPlan(c.PutPlanRequest(plan=PLAN))
    await catalog.PutAccount(
        c.PutAccountRequest(account=t.Account(account_id=ACCOUNT_ID, currency="EUR"))
    )
    provisioning = p_grpc.ProvisioningServiceStub(channel)
    ends = [start for start, _ in calls[1:]] + [len(iccids)]
    for (start, at), end in zip(calls, ends, strict=True):
        request = p.ProvisionSimsRequest(
            account_id=ACCOUNT_ID, plan_id=PLAN.plan_id, iccids=iccids[start:end]
        )
        if at is not None:
            request.provisioned_at.FromDatetime(at)
        response = await provisioning.ProvisionSims(request, timeout=120)
        created = sum(1 for x in response.results if x.status == p.PROVISION_STATUS_CREATED)
        if created != end - start:
            raise VerificationFailed(f"provisioned {created} of {end - start} SIMs")


def spread_calls(sims: int) -> list[tuple[int, datetime | None]]:
    """PROVISION_CALLS calls (fewer for few SIMs), provisioned_at evenly over the span."""
    calls = min(PROVISION_CALLS, sims)
    return [
        (n * sims // calls, FIRST_PROVISIONED + n * PROVISION_SPAN / calls) for n in range(calls)
    ]


async def advance(clock: k_grpc.ClockServiceStub, to: datetime) -> None:
    request = k.AdvanceTimeRequest()
    request.to.FromDatetime(to)
    await clock.AdvanceTime(request, timeout=600)


async def count_exact(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM sims"
            " WHERE billing_started_at = provisioned_at + $1::interval"
            " AND billing_start_reason = $2 AND state = $3",
            GRACE,
            GRACE_EXPIRED,
            ACTIVE,
        )
        return count
    finally:
        await conn.close()


async def throughput(ctx: BenchContext) -> Figure:
    sims = ctx.workload.sims
    progress = ctx.progress
    async with ctx.fresh_database() as url:
        metrics = Metrics()
        app = Application(
            service_settings(url, clock_start=CLOCK_START, late_usage_window=NO_SETTLEMENT_WINDOW),
            metrics,
        )
        with progress.phase("activation: start service (test clock)"):
            await app.start()
        sample = metrics.registry.get_sample_value

        def activated() -> int:
            return int(sample("rating_activations_total", {"reason": "GRACE_EXPIRED"}) or 0)

        advances: list[tuple[str, float, int]] = []  # (day, seconds, SIMs activated)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                calls = spread_calls(sims)
                with progress.phase(
                    f"activation: provision {sims:,} FIRST_USE SIMs in {len(calls)} calls"
                    f" over {PROVISION_SPAN.days} days"
                ):
                    await provision(channel, sim_iccids(ctx.workload), calls)
                if app.activation.pending != sims:
                    raise VerificationFailed(
                        f"{app.activation.pending} deadlines tracked, expected {sims}"
                    )
                await ctx.checkpoint(url)
                clock = k_grpc.ClockServiceStub(channel)
                last_deadline = calls[-1][1]
                assert last_deadline is not None
                day = CLOCK_START.replace(hour=0) + DAY
                with (
                    progress.phase("activation: advance the clock day by day"),
                    ctx.profiled("activation"),
                    ctx.cpu_meter() as cpu,
                ):
                    while day <= last_deadline + GRACE + DAY:
                        before = activated()
                        started = time.perf_counter()
                        await advance(clock, day)
                        seconds = time.perf_counter() - started
                        advances.append((day.date().isoformat(), seconds, activated() - before))
                        day += DAY
        finally:
            await app.stop()
        with progress.phase("activation: verify"):
            exact = await count_exact(url)
        problems = []
        if activated() != sims:
            problems.append(f"rating_activations_total{{GRACE_EXPIRED}} = {activated()}")
        if app.activation.pending or sample("rating_activation_pending"):
            problems.append(f"{app.activation.pending} deadlines still pending")
        if exact != sims:
            problems.append(f"{exact} SIMs with billing_started_at = provisioned_at + 30 days")
        if problems:
            raise VerificationFailed(f"activation of {sims} SIMs: " + "; ".join(problems))
    busy = [(s, n) for _, s, n in advances if n]
    busy_seconds = sum(s for s, _ in busy)
    rate = sims / busy_seconds
    progress.line(
        f"activation: {rate:,.0f} SIMs/s ({sims:,} SIMs in {len(busy)} advances,"
        f" {busy_seconds:.2f}s)"
    )
    return Figure(
        name="activation",
        label="grace-deadline activations (AdvanceTime)",
        value=rate,
        unit="SIMs/s",
        details={
            "sims": sims,
            "activating_advances": len(busy),
            "activating_seconds": round(busy_seconds, 3),
            "all_advances": len(advances),
            "all_advances_seconds": round(sum(s for _, s, _ in advances), 3),
            "max_advance_seconds": round(max(s for s, _ in busy), 3),
            "max_sims_per_advance": max(n for _, n in busy),
            "idle_advance_mean_seconds": _mean([s for _, s, n in advances if not n]),
            "grace_expired_total": activated(),
            "db_exact_billing_start": exact,
            "per_day": [[d, round(s, 4), n] for d, s, n in advances],
            **cpu,
        },
    )


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _thread_ticks() -> dict[str, int]:
    """CPU clock ticks (user + system) per thread of this process, keyed 'tid comm'."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                line = stat.read()
        except OSError:
            continue
        comm = line[line.index("(") + 1 : line.rindex(")")]
        fields = line[line.rindex(")") + 2 :].split()
        out[f"{tid} {comm}"] = int(fields[11]) + int(fields[12])  # utime, stime
    return out


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def idle(ctx: BenchContext) -> Figure:
    sims = ctx.workload.sims
    progress = ctx.progress
    async with ctx.fresh_database() as url:
        app = Application(service_settings(url, test_clock=False, clock_start=None), Metrics())
        with progress.phase("activation idle: start service (system clock)"):
            await app.start()
        try:
            calls: list[tuple[int, datetime | None]] = [
                (start, None) for start in range(0, sims, IDLE_PROVISION_CALL)
            ]
            with progress.phase(f"activation idle: provision {sims:,} SIMs now (grace 30 days)"):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
                    await provision(channel, sim_iccids(ctx.workload), calls)
            pending = app.activation.pending
            if pending != sims:
                raise VerificationFailed(f"{pending} deadlines tracked, expected {sims}")
            loop_task = next((x for x in asyncio.all_tasks() if x.get_name() == "activation"), None)
            if loop_task is None or loop_task.done():
                raise VerificationFailed("the activation loop is not running")
            wakeups = 0
            run_once: Callable[[datetime], Awaitable[int]] = app.activation.run_once

            async def counted(now: datetime) -> int:
                nonlocal wakeups
                wakeups += 1
                return await run_once(now)

            app.activation.run_once = counted  # type: ignore[method-assign]
            await asyncio.sleep(IDLE_SETTLE_SECONDS)  # let the provisioning's echoes die down
            with progress.phase(f"activation idle: measure CPU over {IDLE_SECONDS:.0f}s"):
                threads_before, cpu_before = _thread_ticks(), _process_cpu()
                started = time.perf_counter()
                await asyncio.sleep(IDLE_SECONDS)
                wall = time.perf_counter() - started
                cpu_seconds, threads_after = _process_cpu() - cpu_before, _thread_ticks()
            earliest = min(
                (d for sim in app.cache.sims.values() if (d := app.activation.deadline_of(sim))),
                default=None,
            )
            if loop_task.done():
                raise VerificationFailed("the activation loop ended during the idle window")
        finally:
            await app.stop()
    tick = os.sysconf("SC_CLK_TCK")
    per_thread = {
        name: round((ticks - threads_before.get(name, 0)) / tick, 3)
        for name, ticks in threads_after.items()
        if ticks - threads_before.get(name, 0) > 0
    }
    rate = 1_000_000 * cpu_seconds / wall
    progress.line(
        f"activation idle: {cpu_seconds:.3f} CPU s in {wall:.1f}s wall"
        f" ({rate:,.0f} CPU us/s), activation wake-ups: {wakeups}"
    )
    details: dict[str, Any] = {
        "pending_sims": pending,
        "earliest_deadline": earliest.isoformat() if earliest else None,
        "wall_seconds": round(wall, 3),
        "process_cpu_seconds": round(cpu_seconds, 4),
        "cpu_seconds_per_wall_second": round(cpu_seconds / wall, 5),
        "activation_wakeups": wakeups,
        "cpu_seconds_by_thread": per_thread,
        "scope": "whole service process: gRPC threads, settlement, persister, pool idle too",
    }
    return Figure(
        name="activation_idle_cpu",
        label=f"idle service CPU, {pending:,} deadlines pending",
        value=rate,
        unit="CPU us/s",
        details=details,
    )


@benchmark("activation", "grace-deadline activations per second; idle CPU with deadlines pending")
async def activation(ctx: BenchContext) -> list[Figure]:
    return [await throughput(ctx), await idle(ctx)]
