"""History: restart and memory after 1 and after 12 settled months; ingestion into a
database that already holds 20M records.

Everything goes through a real `python -m service` child process (its own database on
the run's PostgreSQL, `RATING_CLOCK=test:<time>`, port 0) and its gRPC API, and measures
what an operator sees; nothing here depends on how the service keeps its state.

Part 1, restart (`sims` SIMs, full size 1,000,000, in `ACCOUNTS` accounts, the ingestion
benchmark's plan: 2.00 EUR a month and a DATA rate). The SIMs are provisioned at
2026-01-01 on a fresh database; the service is restarted (R0: no usage). Month m gets its
traffic: the clock moves to day 16 of the month and `RECORDS_PER_SIM` records per SIM
(every SIM, random order, random seconds of the first 15 days, random UUIDs as record
ids) are streamed from the child-process client; then the clock moves to the month's end
+ the late-usage window (`LATE_WINDOW_S`), the settlement worker settles it inside that
AdvanceTime, and ListInvoices must show the month's invoice for every account. After
month 1 is settled and month 2 got its traffic (half a month, open), SIGTERM and restart:
A. Months 2..12 are then settled the same way, month 13 gets the same open traffic as
month 2 did, SIGTERM and restart: B. Restart seconds run from starting the process to its
`serving` log line (health SERVING); RSS is VmRSS from /proc/<pid>/status once a
Health.Check and a GetTime have been answered after that line (VmHWM, the peak, is in the
details).

Part 2, ingestion with history (`sims` SIMs as above). The SIMs are provisioned into one
database, which is then copied (CREATE DATABASE ... TEMPLATE) into a second. The same
`INGEST_PER_SIM` x sims records (at least `INGEST_MIN`; in 2026-04; 500k at full size)
are streamed into each by a fresh service process: into the first with no usage, into the
second after `STORED_PER_SIM` x sims rows (20M at full size) were written into its
usage_records behind the running service's back (see `load_history`), then VACUUM
ANALYZE and CHECKPOINT. The same rows are also COPYed into a fresh table, as the `copy`
baseline does. Every streamed record must come back RATED. Part 2's services write usage
checkpoints only at their stop (`PART2_CHECKPOINT_INTERVAL_S`), so neither timed stream
holds one (checked from their logs)."""

from __future__ import annotations

import functools
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc

from bench.client import ClientResult, StreamClient
from bench.context import BenchContext
from bench.ingestion import PLAN, provision_sims
from bench.registry import THROUGHPUT_UNIT, Figure, VerificationFailed, benchmark
from bench.service_process import MIB, Measured, ServiceProcess, running, service_rss_limit
from bench.storage import CopyOptions, timed_copy
from bench.workload import (
    MAX_QUANTITY,
    USAGE_TYPE_DATA,
    Record,
    UsageRow,
    Workload,
    rated_quantity,
    serialized_requests,
    sim_iccids,
)
from rating.v1 import billing_service_pb2 as b
from rating.v1 import billing_service_pb2_grpc as b_grpc
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import catalog_service_pb2_grpc as c_grpc
from rating.v1 import clock_service_pb2 as k
from rating.v1 import clock_service_pb2_grpc as k_grpc
from rating.v1 import provisioning_service_pb2_grpc as p_grpc
from rating.v1 import types_pb2 as t
from service.storage.partitions import create_partitions

FULL_SIMS = 1_000_000
ACCOUNTS = 100
START = datetime(2026, 1, 1, tzinfo=UTC)  # SIMs provisioned; month 1 is 2026-01
MONTHS = 13  # 12 settled, the 13th open
SETTLED_A = 1
TRAFFIC_SPAN = timedelta(days=15)  # a month's traffic: its first half
RECORDS_PER_SIM = 1
LATE_WINDOW_S = 3600
# Part 2: stored history in 2026-01 .. 2026-03, new records in the open 2026-04.
STORED_PER_SIM = 20
INGEST_PER_SIM = 0.5
INGEST_MIN = 100_000  # so that a quick run still streams for seconds, not milliseconds
INGEST_MONTH = datetime(2026, 4, 1, tzinfo=UTC)
STORED_FROM = START
STORED_SPAN = INGEST_MONTH - START
NO_SETTLEMENT_WINDOW_S = 365 * 86400  # nothing is settled in part 2
# Part 2's services checkpoint only at their stop: a checkpoint writes the counters of
# every SIM counted since the last one (hundreds of thousands of rows at full size, seconds
# of PostgreSQL's CPU), and at the default 30 s one fell inside the stored side's
# stream or not depending on when that service happened to start (it runs while the
# history is loaded): 0.85 in one run, 0.91 in another. What it costs is measured apart
# (docs/storage.md, checkpoint write rate); part 2 compares the look-up and the insert.
PART2_CHECKPOINT_INTERVAL_S = 86_400
LOAD_CHUNK = 1_000_000  # rows per INSERT of the stored history


# --- the traffic --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Traffic:
    """`records` DATA records in the first 15 days of `month`: every SIM in turn, in a
    random order (so with records = sims every SIM has exactly one), random UUID ids."""

    tag: str  # seeds the generator; prefixes the session ids
    month: datetime
    records: int


def month_start(index: int) -> datetime:
    """The first instant of month `index` (0: 2026-01)."""
    year, month = divmod(START.month - 1 + index, 12)
    return START.replace(year=START.year + year, month=month + 1)


def period_name(at: datetime) -> str:
    return f"{at.year:04d}-{at.month:02d}"  # UTC accounts, billing day 1


def traffic_records(sims: int, seed: int, traffic: Traffic) -> Iterator[Record]:
    rng = random.Random(f"{seed}-{traffic.tag}")
    order = list(range(sims)) * -(-traffic.records // sims)
    rng.shuffle(order)
    base = int(traffic.month.timestamp())
    span = int(TRAFFIC_SPAN.total_seconds()) - 60
    for n, sim in enumerate(order[: traffic.records]):
        yield Record(
            record_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            sim=sim,
            quantity=rng.randrange(1, MAX_QUANTITY),
            event_seconds=base + rng.randrange(span),
            session_id=f"{traffic.tag}-{n // 4:08d}",
        )


def traffic_requests(workload: Workload, traffic: Traffic) -> list[list[bytes]]:
    """The client's requests (bench.client.RequestBuilder)."""
    return serialized_requests(workload, traffic_records(workload.sims, workload.seed, traffic))


def traffic_rows(workload: Workload, traffic: Traffic, chunk: int) -> list[list[UsageRow]]:
    """The usage_records rows the service writes for `traffic`, in chunks of `chunk`."""
    iccids = sim_iccids(workload)
    chunks: list[list[UsageRow]] = [[]]
    for rec in traffic_records(workload.sims, workload.seed, traffic):
        if len(chunks[-1]) == chunk:
            chunks.append([])
        at = datetime.fromtimestamp(rec.event_seconds, UTC)
        chunks[-1].append(
            (
                rec.record_id,
                iccids[rec.sim],
                USAGE_TYPE_DATA,
                rec.quantity,
                rated_quantity(rec.quantity),
                at,
                rec.session_id,
                period_name(at),
            )
        )
    return chunks


def client_for(ctx: BenchContext, sims: int, traffic: Traffic) -> StreamClient:
    """A client process that starts building `traffic`'s requests now."""
    workload = Workload(traffic.records, sims, ctx.workload.streams, ctx.workload.batch)
    return StreamClient(workload, functools.partial(traffic_requests, traffic=traffic))


def check_stream(what: str, result: ClientResult, expected: int) -> None:
    rated = result.statuses.get("RECORD_STATUS_RATED", 0)
    if result.problems or rated != expected:
        raise VerificationFailed(
            f"{what}: {rated} of {expected} RATED: {result.statuses} {result.problems}"
        )


# --- the API calls ------------------------------------------------------------------------


def account_id(n: int) -> str:
    return f"bench-history-{n:03d}"


async def provision(channel: grpc.aio.Channel, sims: int) -> None:
    """The plan; ACCOUNTS accounts, each with its share of the SIMs, provisioned at START in
    calls of up to PROVISION_CALL."""
    catalog = c_grpc.CatalogServiceStub(channel)
    provisioning = p_grpc.ProvisioningServiceStub(channel)
    await catalog.PutPlan(c.PutPlanRequest(plan=PLAN))
    iccids = sim_iccids(Workload(sims=sims))
    for n in range(ACCOUNTS):
        account = t.Account(account_id=account_id(n), currency="EUR")
        await catalog.PutAccount(c.PutAccountRequest(account=account))
        mine = iccids[n * sims // ACCOUNTS : (n + 1) * sims // ACCOUNTS]
        await provision_sims(
            provisioning, account.account_id, PLAN.plan_id, mine, START, deadline_s=300
        )


async def advance(channel: grpc.aio.Channel, to: datetime) -> None:
    """Move the test clock; returns after the workers did what became due (settlement)."""
    request = k.AdvanceTimeRequest()
    request.to.FromDatetime(to)
    await k_grpc.ClockServiceStub(channel).AdvanceTime(request, timeout=3600)


async def check_settled(channel: grpc.aio.Channel, period: str) -> None:
    """Every account has its invoice of `period` (final)."""
    billing = b_grpc.BillingServiceStub(channel)
    missing = []
    for n in range(ACCOUNTS):
        listed = await billing.ListInvoices(b.ListInvoicesRequest(account_id=account_id(n)))
        if not any(i.period == period and i.final for i in listed.invoices):
            missing.append(account_id(n))
    if missing:
        raise VerificationFailed(f"{period} not settled for {len(missing)} accounts: {missing[:5]}")


async def db_count(url: str, query: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(query)
        return count
    finally:
        await conn.close()


# --- part 1: restart after 1 and after 12 settled months -------------------------------------


@dataclass
class RestartRun:
    ctx: BenchContext
    sims: int
    service: ServiceProcess
    per_month: int
    clients: dict[int, StreamClient] = field(default_factory=dict)
    now: datetime = START
    stream_seconds: list[float] = field(default_factory=list)

    def prepare(self, month: int) -> None:
        """Start building month `month`'s traffic in a client process."""
        if month < MONTHS and month not in self.clients:
            traffic = Traffic(f"m{month + 1:02d}", month_start(month), self.per_month)
            self.clients[month] = client_for(self.ctx, self.sims, traffic)

    async def traffic(self, channel: grpc.aio.Channel, month: int) -> None:
        """The clock to day 16 of the month, then its records streamed; all RATED."""
        self.now = month_start(month) + TRAFFIC_SPAN
        await advance(channel, self.now)
        self.prepare(month)
        client = self.clients.pop(month)
        try:
            await client.ready()
            with self.ctx.progress.phase(
                f"history: stream {self.per_month:,} records into {period_name(self.now)}"
            ):
                result = await client.run(self.service.address)
        finally:
            client.close()
        self.prepare(month + 1)  # builds while this month is settled
        check_stream(f"history {period_name(self.now)}", result, self.per_month)
        self.stream_seconds.append(round(result.seconds, 2))

    async def settle(self, channel: grpc.aio.Channel, month: int) -> None:
        """The clock past the month's end + the late-usage window: the settlement worker
        settles it inside that call; ListInvoices shows it for every account."""
        period = period_name(month_start(month))
        with self.ctx.progress.phase(f"history: settle {period} ({ACCOUNTS} accounts)"):
            self.now = month_start(month + 1) + timedelta(seconds=LATE_WINDOW_S)
            await advance(channel, self.now)
            await check_settled(channel, period)

    async def restart(self, what: str) -> Measured:
        """SIGTERM, then start again and measure (no client builds meanwhile)."""
        for client in self.clients.values():
            await client.ready()
        await self.service.stop()
        with self.ctx.progress.phase(f"history: restart ({what})"):
            measured = await self.service.measure(self.now)
        self.ctx.progress.line(
            f"history: {what}: serving after {measured.seconds:.2f}s,"
            f" RSS {measured.rss / MIB:,.0f} MiB (peak {measured.peak / MIB:,.0f} MiB)"
        )
        return measured

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


async def restarts(ctx: BenchContext, sims: int, rss_limit: int) -> list[Figure]:
    progress = ctx.progress
    per_month = RECORDS_PER_SIM * sims
    async with ctx.fresh_database() as url:
        service = ServiceProcess(url, LATE_WINDOW_S, rss_limit)
        run = RestartRun(ctx, sims, service, per_month)
        try:
            async with running(service):
                with progress.phase("history: start the service on an empty database"):
                    empty = await service.measure(START)
                run.prepare(0)
                async with grpc.aio.insecure_channel(service.address) as channel:
                    with progress.phase(f"history: provision {sims:,} SIMs, {ACCOUNTS} accounts"):
                        await provision(channel, sims)
                no_usage = await run.restart(f"{sims:,} SIMs, no usage")
                async with grpc.aio.insecure_channel(service.address) as channel:
                    for month in range(SETTLED_A):
                        await run.traffic(channel, month)
                        await run.settle(channel, month)
                    await run.traffic(channel, SETTLED_A)
                before_a = service.memory("VmRSS")
                a = await run.restart(f"{SETTLED_A} settled month + an open one")
                async with grpc.aio.insecure_channel(service.address) as channel:
                    await run.settle(channel, SETTLED_A)
                    for month in range(SETTLED_A + 1, MONTHS - 1):
                        await run.traffic(channel, month)
                        await run.settle(channel, month)
                    await run.traffic(channel, MONTHS - 1)
                before_b = service.memory("VmRSS")
                last = MONTHS - 1
                b_ = await run.restart(f"{last} settled months + an open one")
                await service.stop()
        finally:
            run.close()
        with progress.phase("history: verify"):
            stored = await db_count(url, "SELECT count(*) FROM usage_records")
            invoices = await db_count(url, "SELECT count(*) FROM invoices")
        if stored != MONTHS * per_month or invoices != last * ACCOUNTS:
            raise VerificationFailed(
                f"history: {stored} usage records (expected {MONTHS * per_month}),"
                f" {invoices} invoices (expected {last * ACCOUNTS})"
            )
    open_sim_periods = sims  # every SIM has usage in every month
    per_sim = (no_usage.rss - empty.rss) / sims
    per_period_a = (a.rss - no_usage.rss) / open_sim_periods
    per_period_b = (b_.rss - no_usage.rss) / open_sim_periods
    workload = {
        "sims": sims,
        "accounts": ACCOUNTS,
        "records_per_month": per_month,
        "months": MONTHS,
        "late_usage_window_s": LATE_WINDOW_S,
        "stored_records_at_b": stored,
        "invoices_at_b": invoices,
        "stream_seconds_per_month": run.stream_seconds,
    }
    starts = {
        "empty_database": empty.details(),
        "sims_no_usage": no_usage.details(),
        f"settled_{SETTLED_A}": {**a.details(), "rss_before_stop_mib": round(before_a / MIB, 1)},
        f"settled_{last}": {**b_.details(), "rss_before_stop_mib": round(before_b / MIB, 1)},
    }
    details = {**workload, "starts": starts}
    return [
        Figure(
            "history_restart_1",
            "restart to SERVING, 1 settled month",
            a.seconds,
            "s",
            {**a.details(), **workload},
        ),
        Figure(
            f"history_restart_{last}",
            f"restart to SERVING, {last} settled months",
            b_.seconds,
            "s",
            {**b_.details(), **workload},
        ),
        Figure(
            "history_restart_ratio",
            f"restart {last} months : 1 (target <= 1.25)",
            b_.seconds / a.seconds,
            "x",
            details,
        ),
        Figure(
            "history_rss_1", "RSS after restart, 1 settled month", a.rss / MIB, "MiB", a.details()
        ),
        Figure(
            f"history_rss_{last}",
            f"RSS after restart, {last} settled months",
            b_.rss / MIB,
            "MiB",
            b_.details(),
        ),
        Figure(
            "history_rss_ratio",
            f"RSS after restart {last} months : 1 (target <= 1.25)",
            b_.rss / a.rss,
            "x",
            details,
        ),
        Figure(
            "history_rss_no_usage",
            f"RSS after restart, {sims:,} SIMs, no usage",
            no_usage.rss / MIB,
            "MiB",
            {**no_usage.details(), "empty": empty.details()},
        ),
        Figure(
            "history_bytes_per_sim",
            "RSS per provisioned SIM (no usage)",
            per_sim,
            "B",
            {"formula": "(RSS no usage - RSS empty database) / SIMs"},
        ),
        Figure(
            "history_bytes_per_open_sim_period_1",
            "RSS per open SIM-period, 1 settled month",
            per_period_a,
            "B",
            {
                "formula": "(RSS A - RSS no usage) / SIMs with usage in the open period",
                "open_sim_periods": open_sim_periods,
            },
        ),
        Figure(
            f"history_bytes_per_open_sim_period_{last}",
            f"RSS per open SIM-period, {last} settled months",
            per_period_b,
            "B",
            {
                "formula": "(RSS B - RSS no usage) / SIMs with usage in the open period",
                "open_sim_periods": open_sim_periods,
            },
        ),
    ]


# --- part 2: ingestion with 20M records stored ---------------------------------------------


async def load_history(url: str, sims: int, rows: int, progress: Any) -> None:
    """`rows` usage records of 2026-01 .. 2026-03 written straight into usage_records, in
    INSERTs of LOAD_CHUNK, exactly as the service would store them: every SIM in turn
    (rows / sims each), a random second of those months, a quantity of 1 B .. 4 MiB, its
    rated quantity rounded up to the plan's 1 KiB, the period of the event in the
    accounts' (UTC, billing day 1) calendar, a random UUID as record id, received_at and
    any other column by their defaults. They go in while the service runs, so it never
    counts them: they are there to fill the storage and its indexes."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TEMP TABLE bulk_sims AS"
            " SELECT (row_number() OVER (ORDER BY iccid) - 1)::int AS n, iccid FROM sims;"
            " CREATE UNIQUE INDEX ON bulk_sims (n); ANALYZE bulk_sims"
        )
        found = await conn.fetchval("SELECT count(*) FROM bulk_sims")
        if found != sims:
            raise VerificationFailed(f"{found} SIMs in the database, expected {sims}")
        # usage_records is partitioned by period: the partitions of the stored months first.
        months, month = set(), STORED_FROM
        while month < STORED_FROM + STORED_SPAN:
            months.add(month.strftime("%Y-%m"))
            month = (month.replace(day=1) + timedelta(days=32)).replace(day=1)
        await create_partitions(conn, months)
        for first in range(0, rows, LOAD_CHUNK):
            last = min(first + LOAD_CHUNK, rows) - 1
            await conn.execute(
                """
                INSERT INTO usage_records (record_id, iccid, usage_type, quantity,
                                           rated_quantity, event_time, session_id, period)
                SELECT md5('stored-' || g)::uuid::text, s.iccid, $3, x.quantity,
                       (x.quantity + $4 - 1) / $4 * $4, x.at, 'stored-' || (g / 4),
                       to_char(x.at AT TIME ZONE 'UTC', 'YYYY-MM')
                  FROM generate_series($1::bigint, $2::bigint) AS g
                 CROSS JOIN LATERAL (
                       SELECT 1 + (hashint8(g) & 2147483647) % ($5::bigint - 1) AS quantity,
                              $6::timestamptz
                              + ((hashint8(g # 6151) & 2147483647) % $7::bigint)
                                * interval '1 second' AS at) AS x
                  JOIN bulk_sims s ON s.n = g % $8
                """,
                first,
                last,
                USAGE_TYPE_DATA,
                1_024,  # bench.workload.ROUNDING_INCREMENT
                MAX_QUANTITY,
                STORED_FROM,
                int(STORED_SPAN.total_seconds()) - 60,
                sims,
            )
            progress.line(f"history: stored {last + 1:,} of {rows:,} rows")
        with progress.phase("history: VACUUM ANALYZE usage_records"):
            await conn.execute("VACUUM ANALYZE usage_records")
    finally:
        await conn.close()


async def ingest(
    ctx: BenchContext,
    service: ServiceProcess,
    client: StreamClient,
    records: int,
    name: str,
    what: str,
) -> ClientResult:
    await client.ready()
    await ctx.checkpoint(service.url)
    checkpoints = service.checkpoints
    with (
        ctx.progress.phase(f"history: stream {records:,} records into {what}"),
        ctx.profiled(name),
    ):
        result = await client.run(service.address)
    check_stream(f"history ingestion, {what}", result, records)
    if service.checkpoints != checkpoints:
        raise VerificationFailed(f"history ingestion, {what}: a checkpoint ran in the stream")
    return result


async def stored_ingestion(ctx: BenchContext, sims: int, rss_limit: int) -> list[Figure]:
    progress = ctx.progress
    stored_rows = STORED_PER_SIM * sims
    traffic = Traffic("ingest", INGEST_MONTH, max(INGEST_MIN, int(INGEST_PER_SIM * sims)))
    clock = INGEST_MONTH + TRAFFIC_SPAN
    workload = Workload(traffic.records, sims, ctx.workload.streams, ctx.workload.batch)
    async with ctx.fresh_database() as empty_url:
        service = ServiceProcess(
            empty_url, NO_SETTLEMENT_WINDOW_S, rss_limit, PART2_CHECKPOINT_INTERVAL_S
        )
        async with running(service):
            await service.start(clock)
            async with grpc.aio.insecure_channel(service.address) as channel:
                with progress.phase(f"history: provision {sims:,} SIMs for ingestion"):
                    await provision(channel, sims)
            await service.stop()
        async with ctx.fresh_database(template=empty_url) as stored_url:
            client = client_for(ctx, sims, traffic)
            try:
                async with running(service):
                    await service.start(clock)
                    empty = await ingest(
                        ctx, service, client, traffic.records, "history_empty", "empty storage"
                    )
                    await service.stop()
            finally:
                client.close()
            client = client_for(ctx, sims, traffic)  # builds while the history is loaded
            try:
                loaded = ServiceProcess(
                    stored_url, NO_SETTLEMENT_WINDOW_S, rss_limit, PART2_CHECKPOINT_INTERVAL_S
                )
                async with running(loaded):
                    await loaded.start(clock)
                    with progress.phase(f"history: store {stored_rows:,} rows of 2026-01..03"):
                        await load_history(stored_url, sims, stored_rows, progress)
                    stored = await ingest(
                        ctx,
                        loaded,
                        client,
                        traffic.records,
                        "history_stored",
                        f"{stored_rows:,} stored records",
                    )
                    await loaded.stop()
            finally:
                client.close()
            with progress.phase("history: verify"):
                in_empty = await db_count(empty_url, "SELECT count(*) FROM usage_records")
                in_stored = await db_count(stored_url, "SELECT count(*) FROM usage_records")
    if in_empty != traffic.records or in_stored != stored_rows + traffic.records:
        raise VerificationFailed(
            f"history ingestion: {in_empty} and {in_stored} usage records, expected"
            f" {traffic.records} and {stored_rows + traffic.records}"
        )
    with progress.phase(f"history: build {traffic.records:,} rows for COPY"):
        chunks = traffic_rows(
            workload, traffic, ctx.options_of(CopyOptions).batch or traffic.records
        )
    seconds, copied, cpu = await timed_copy(ctx, "history copy", chunks)
    if copied != traffic.records:
        raise VerificationFailed(f"history copy: {copied} rows, expected {traffic.records}")
    copy_rate = traffic.records / seconds
    shape = {
        "sims": sims,
        "records": traffic.records,
        "period": period_name(INGEST_MONTH),
        "streams": workload.streams,
        "batch": workload.batch,
    }
    progress.line(
        f"history: ingestion {empty.records_per_second:,.0f} records/s empty,"
        f" {stored.records_per_second:,.0f} with {stored_rows:,} stored, COPY {copy_rate:,.0f}"
    )

    def ratio(name: str, label: str, value: float, over: float) -> Figure:
        return Figure(name, label, value / over, "x", {"of": value, "over": over}, compare=False)

    return [
        Figure(
            "history_ingest_empty",
            "ingestion, empty storage",
            empty.records_per_second,
            THROUGHPUT_UNIT,
            {**shape, "seconds": round(empty.seconds, 3), "usage_records_rows": in_empty},
            compare=False,
        ),
        Figure(
            "history_ingest_stored",
            f"ingestion, {stored_rows:,} records stored",
            stored.records_per_second,
            THROUGHPUT_UNIT,
            {
                **shape,
                "seconds": round(stored.seconds, 3),
                "stored_rows": stored_rows,
                "usage_records_rows": in_stored,
            },
            compare=False,
        ),
        Figure(
            "history_copy",
            "COPY of the same rows, empty table",
            copy_rate,
            THROUGHPUT_UNIT,
            {**shape, "seconds": round(seconds, 3), "rows_per_copy": len(chunks[0]), **cpu},
            compare=False,
        ),
        ratio(
            "history_ingest_stored_vs_empty",
            "ingestion stored : empty (target >= 0.9)",
            stored.records_per_second,
            empty.records_per_second,
        ),
        ratio(
            "history_ingest_empty_vs_copy",
            "ingestion empty : COPY",
            empty.records_per_second,
            copy_rate,
        ),
        ratio(
            "history_ingest_stored_vs_copy",
            "ingestion stored : COPY",
            stored.records_per_second,
            copy_rate,
        ),
    ]


@benchmark(
    "history",
    "restart and memory after 1 and 12 settled months; ingestion with 20M records stored",
)
async def history(ctx: BenchContext) -> list[Figure]:
    sims = ctx.sims_option or FULL_SIMS
    if sims < ACCOUNTS:
        raise VerificationFailed(f"history needs at least {ACCOUNTS} SIMs")
    rss_limit = service_rss_limit()
    ctx.progress.line(
        f"history: {sims:,} SIMs; the service is killed above {rss_limit / MIB:,.0f} MiB RSS"
    )
    return [*await restarts(ctx, sims, rss_limit), *await stored_ingestion(ctx, sims, rss_limit)]
