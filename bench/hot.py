"""Session-start calls against the transport limit: AuthorizeSession and GetSimStatus.

In this process: a fresh database and the real service (`Application`, test clock at
`hot_traffic.CLOCK`, 2026-01-29), `--hot-sims` SIMs in accounts of 1,000 on two plans (a
per-SIM allowance and a pooled one, `bench/hot_traffic.py`) provisioned through
ProvisionSims, and `--hot-records` usage records (DATA and SMS of 2026-01-01..28) streamed
over random SIMs: January is the **open** period, so every call finds the SIM's counters
(or its pool's) and answers with a real allowance position, tier price and estimate, and
the heap holds what a loaded service holds. Then the service is restarted on the same
database: the timed calls are answered by a service whose cache was loaded from
PostgreSQL, as in production after a deploy.

Beside it, in the same process, a no-op `grpc.aio` server (no interceptor, no cache) whose
AuthorizeSession and GetSimStatus parse the request and answer a response of the size the
service gives for a SIM with usage (one real response, taken before the timer): what gRPC
and protobuf alone cost for the same messages in one Python process.

In a child process (like bench.client): `--hot-calls` requests per method over random
SIMs (fixed seed), built and serialized before any timer (at concurrency 1 the first
fifth of them); sent as raw bytes by `concurrency` coroutines on one channel per server;
each call timed from handing it to gRPC to its answer. For each method and concurrency the
client holds a channel to each server, makes `WARMUP` untimed calls on each, then sends
the calls in blocks of `BLOCK`, each block to both servers in turn (the order swapped
every block): the machine is shared, and a burst of other work then falls on both sides
alike. Per side, QPS = calls / the summed seconds of its blocks; the percentiles are over
all its calls. Figures: QPS, p50 and p99 in ms; `vs baseline` compares each service
figure with the no-op figure of the same run.

After the timer every answer of the service is compared, field by field (protobuf message
equality), with the answer `hot_traffic.Expected` computed in the child from the records
it sent: one wrong answer fails the benchmark. The no-op's answers are only parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import random
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TextIO

import grpc

from bench import hot_traffic
from bench.client import StreamClient, close_child, receive
from bench.context import BenchContext
from bench.hot_traffic import REQUESTED_QUANTITY, Expected
from bench.ingestion import provision_sims
from bench.registry import Figure, VerificationFailed, benchmark, option
from bench.workload import Workload, service_settings, sim_iccids
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import catalog_service_pb2_grpc as c_grpc
from rating.v1 import provisioning_service_pb2_grpc as p_grpc
from rating.v1 import rating_service_pb2 as r
from rating.v1 import rating_service_pb2_grpc as r_grpc
from rating.v1 import types_pb2 as t
from service.app import Application
from service.ops.metrics import Metrics
from service.ops.settings import Settings

METHODS = ("AuthorizeSession", "GetSimStatus")
CONCURRENCIES = (1, 50)
WARMUP = 500  # untimed calls to each server before the timed blocks
BLOCK = 1_000  # calls per block; each block is sent to both servers in turn
# At concurrency 1 a call takes ~4x the time it takes at 50: a fifth of the calls there.
CALLS_AT_1 = 5
SEED = 12
CALLS_UNIT = "calls/s"
MS = "ms"
PROBLEMS_SHOWN = 5


@dataclass(frozen=True, slots=True)
class HotOptions:
    sims: int = field(default=1_000_000, metadata=option("--hot-sims", "SIMs loaded", minimum=1))
    records: int = field(
        default=1_000_000,
        metadata=option("--hot-records", "usage records loaded", minimum=0),
    )
    # At concurrency 50 (a fifth at concurrency 1). At 20,000 the same-run QPS ratio of
    # identical code ranged from 0.86 to 0.97 between runs on this 2-core machine; more
    # calls, in more blocks, average out the machine's other work (docs/performance.md).
    calls: int = field(
        default=100_000,
        metadata=option("--hot-calls", "timed calls per method at concurrency 50", minimum=1),
    )


def settings(url: str) -> Settings:
    """The service of this benchmark: the test clock inside the open period."""
    return service_settings(url, clock_start=hot_traffic.CLOCK)


def _path(method: str) -> str:
    return f"/rating.v1.RatingService/{method}"


@dataclass(frozen=True, slots=True)
class Requests:
    """`calls` random SIMs (indexes) and, per method, their serialized requests."""

    sims: list[int]
    by_method: dict[str, list[bytes]]

    @classmethod
    def build(cls, sims: int, calls: int, seed: int) -> Requests:
        iccids = sim_iccids(Workload(records=1, sims=sims))
        rng = random.Random(seed)
        picks = [rng.randrange(sims) for _ in range(calls)]
        return cls(
            picks,
            {
                "AuthorizeSession": [
                    r.AuthorizeSessionRequest(
                        iccid=iccids[sim],
                        usage_type=t.USAGE_TYPE_DATA,
                        requested_quantity=REQUESTED_QUANTITY,
                    ).SerializeToString()
                    for sim in picks
                ],
                "GetSimStatus": [
                    r.GetSimStatusRequest(iccid=iccids[sim]).SerializeToString() for sim in picks
                ],
            },
        )


# --- the no-op server ---------------------------------------------------------------------


class NoOpSessionServicer(r_grpc.RatingServiceServicer):
    """Parses each request, answers a fixed response of the service's size."""

    def __init__(
        self, authorize: r.AuthorizeSessionResponse, status: r.GetSimStatusResponse
    ) -> None:
        self._authorize = authorize
        self._status = status

    async def AuthorizeSession(
        self, request: r.AuthorizeSessionRequest, context: grpc.aio.ServicerContext
    ) -> r.AuthorizeSessionResponse:
        return self._authorize

    async def GetSimStatus(
        self, request: r.GetSimStatusRequest, context: grpc.aio.ServicerContext
    ) -> r.GetSimStatusResponse:
        return self._status


# --- the client (child process) -----------------------------------------------------------


@dataclass
class CallsResult:
    calls: int
    seconds: float
    latencies_ns: list[int]  # sorted
    problems: list[str] = field(default_factory=list)
    # The service side only: its answers by kind (with an estimate, inside the allowance,
    # ...), all of them equal to the expected ones, or `problems` says which were not.
    answers: dict[str, int] = field(default_factory=dict)
    gc: dict[str, Any] = field(default_factory=dict)  # this process's, during both sides
    # The service side only: its own time per call, as its grpc_server_handling_seconds
    # counted it (the wrapper and handler, inside the server), in µs.
    server_us: float | None = None

    @property
    def qps(self) -> float:
        return self.calls / self.seconds

    def percentile_ms(self, share: float) -> float:
        ordered = self.latencies_ns
        return ordered[min(len(ordered) - 1, int(len(ordered) * share))] / 1e6

    def added_us(self, noop: CallsResult) -> float:
        """The time each call adds to the no-op's, in µs: 1/QPS - 1/QPS(no-op). Steadier
        than the QPS ratio, which also depends on how fast the no-op is at the time."""
        return (1 / self.qps - 1 / noop.qps) * 1e6

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(0.50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(0.99)


class HotClient:
    """Parent side: start the child (it builds its requests), then `run(...)` per phase."""

    def __init__(self, options: HotOptions) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_child_main, args=(child_conn, options), name="bench-hot", daemon=True
        )
        self._process.start()
        child_conn.close()

    async def ready(self) -> dict[str, Any]:
        return await self._receive("ready")  # type: ignore[no-any-return]

    async def run(
        self, address: str, noop_address: str, method: str, concurrency: int
    ) -> tuple[CallsResult, CallsResult]:
        """Time the calls against the service and the no-op server, in alternating blocks;
        the service's answers are checked (the no-op's only parsed)."""
        self._conn.send(("go", address, noop_address, method, concurrency))
        service, noop = await self._receive("done")
        return CallsResult(**service), CallsResult(**noop)

    async def _receive(self, expected: str) -> Any:
        return await receive(self._conn, expected)

    def close(self) -> None:
        close_child(self._conn, self._process, ("stop",))


def _child_main(conn: Connection, options: HotOptions) -> None:
    try:
        started = time.perf_counter()
        requests = Requests.build(options.sims, options.calls, SEED)
        warmup = Requests.build(options.sims, WARMUP, SEED + 1)
        expected = Expected.of(options.sims, options.records)
        conn.send(("ready", {"build_seconds": round(time.perf_counter() - started, 2)}))
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            _go, address, noop_address, method, concurrency = message
            service, noop = asyncio.run(
                _drive(address, noop_address, method, concurrency, requests, warmup, expected)
            )
            conn.send(("done", (asdict(service), asdict(noop))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


async def _drive(
    address: str,
    noop_address: str,
    method: str,
    concurrency: int,
    sent: Requests,
    warmup_requests: Requests,
    expected: Expected,
) -> tuple[CallsResult, CallsResult]:
    """Both servers on their own channel; after WARMUP calls on each, the calls in blocks
    of BLOCK, each block sent to one server then the other (the order swapped every block),
    so a burst of the machine's other work falls on both sides alike. After the timer the
    service's answers are checked against `expected`."""
    requests = sent.by_method[method]
    warmup = warmup_requests.by_method[method]
    channels = [grpc.aio.insecure_channel(a) for a in (address, noop_address)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        # raw bytes both ways
        calls = [channel.unary_unary(_path(method)) for channel in channels]

        async def drive(call: Any, batch: list[bytes]) -> tuple[float, list[bytes], list[int]]:
            answers: list[bytes] = [b""] * len(batch)
            latencies = [0] * len(batch)
            position = iter(range(len(batch)))

            async def worker() -> None:
                clock = time.perf_counter_ns
                for index in position:
                    started = clock()
                    answers[index] = await call(batch[index])
                    latencies[index] = clock() - started

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started, answers, latencies

        for call in calls:
            await drive(call, warmup)
        seconds = [0.0, 0.0]
        answers: list[list[bytes]] = [[], []]
        latencies: list[list[int]] = [[], []]
        if concurrency == 1:
            requests = requests[: max(1, len(requests) // CALLS_AT_1)]
        for block, first in enumerate(range(0, len(requests), BLOCK)):
            batch = requests[first : first + BLOCK]
            for side in (0, 1) if block % 2 == 0 else (1, 0):
                took, got, timed = await drive(calls[side], batch)
                seconds[side] += took
                answers[side].extend(got)
                latencies[side].extend(timed)
    finally:
        for channel in channels:
            await channel.close()
    service = CallsResult(len(requests), seconds[0], sorted(latencies[0]))
    service.problems, service.answers = check(method, sent.sims, answers[0], expected)
    noop = CallsResult(len(requests), seconds[1], sorted(latencies[1]))
    noop.problems = _parses(method, answers[1])
    return service, noop


def check(
    method: str, sims: list[int], answers: list[bytes], expected: Expected
) -> tuple[list[str], dict[str, int]]:
    """Every answer against the expected one for its SIM (whole-message equality): the
    first PROBLEMS_SHOWN differences and how many answers differ, and the answers counted
    by kind (`hot_traffic.describe`)."""
    parse = (
        r.AuthorizeSessionResponse.FromString
        if method == "AuthorizeSession"
        else r.GetSimStatusResponse.FromString
    )
    build = expected.authorization if method == "AuthorizeSession" else expected.status
    wanted: dict[int, Any] = {}
    problems: list[str] = []
    wrong = 0
    kinds: Counter[str] = Counter()
    for sim, raw in zip(sims, answers, strict=False):
        answer = parse(raw)
        want = wanted.get(sim)
        if want is None:
            want = wanted[sim] = build(sim)
        if answer != want:
            wrong += 1
            if len(problems) < PROBLEMS_SHOWN:
                problems.append(
                    f"{method} for SIM {expected.iccids[sim]}: answered {{{_line(answer)}}},"
                    f" expected {{{_line(want)}}}"
                )
        kinds.update(hot_traffic.describe(method, answer))
    if wrong:
        problems.append(f"{wrong} of {len(answers)} {method} answers differ from the expected")
    return problems, {"checked": len(answers), **kinds}


def _line(message: Any) -> str:
    return " ".join(str(message).split())


def _parses(method: str, answers: list[bytes]) -> list[str]:
    """The no-op's answers: each parses (they are its one fixed response)."""
    parse = (
        r.AuthorizeSessionResponse.FromString
        if method == "AuthorizeSession"
        else r.GetSimStatusResponse.FromString
    )
    for raw in answers:
        parse(raw)
    return []


# --- the benchmark ------------------------------------------------------------------------


@contextlib.contextmanager
def lines_logged(log: TextIO | None) -> Any:
    """Yields a dict that gets the lines and bytes the service logged meanwhile."""
    figures: dict[str, int] = {}
    start = log.tell() if log is not None else 0
    yield figures
    if log is not None:
        log.flush()
        log.seek(start)
        written = log.read()
        figures["bytes"] = len(written)
        figures["lines"] = written.count("\n")
        figures["rpc_lines"] = written.count('"event": "rpc"')


async def provision(address: str, sims: int) -> None:
    """Both plans; per account the account and its SIMs, provisioned at PROVISIONED_AT."""
    iccids = sim_iccids(Workload(records=1, sims=sims))
    async with grpc.aio.insecure_channel(address) as channel:
        catalog = c_grpc.CatalogServiceStub(channel)
        provisioning = p_grpc.ProvisioningServiceStub(channel)
        for plan in (hot_traffic.PER_SIM_PLAN, hot_traffic.POOLED_PLAN):
            await catalog.PutPlan(c.PutPlanRequest(plan=plan))
        for n in range(hot_traffic.accounts(sims)):
            account = hot_traffic.account_proto(n)
            await catalog.PutAccount(c.PutAccountRequest(account=account))
            members = hot_traffic.sims_of(n, sims)
            await provision_sims(
                provisioning,
                account.account_id,
                hot_traffic.plan_of(n).plan_id,
                iccids[members.start : members.stop],
                hot_traffic.PROVISIONED_AT,
            )


async def load(ctx: BenchContext, url: str, options: HotOptions) -> None:
    """SIMs provisioned and usage streamed through the service's own API, then stopped."""
    progress = ctx.progress
    workload = Workload(records=max(1, options.records), sims=options.sims)
    app = Application(settings(url), Metrics())
    with progress.phase("hot: start service (empty)"):
        await app.start()
    usage = StreamClient(workload, hot_traffic.serialized_requests) if options.records else None
    try:
        address = f"127.0.0.1:{app.port}"
        with progress.phase(f"hot: provision {options.sims:,} SIMs"):
            await provision(address, options.sims)
        if usage is not None:
            await usage.ready()
            with progress.phase(f"hot: stream {options.records:,} usage records"):
                result = await usage.run(address)
            rated = result.statuses.get("RECORD_STATUS_RATED", 0)
            if result.problems or rated != options.records:
                raise VerificationFailed(f"hot: {rated} RATED; {result.problems}")
    finally:
        if usage is not None:
            usage.close()
        await app.stop()


async def _samples(address: str, iccid: str) -> tuple[Any, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = r_grpc.RatingServiceStub(channel)
        authorize = await stub.AuthorizeSession(
            r.AuthorizeSessionRequest(
                iccid=iccid, usage_type=t.USAGE_TYPE_DATA, requested_quantity=REQUESTED_QUANTITY
            )
        )
        status = await stub.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))
    return authorize, status


def _figures(
    method: str, concurrency: int, service: CallsResult, noop: CallsResult
) -> list[Figure]:
    key = f"hot_{method}_c{concurrency}"
    base = f"noop_{method}_c{concurrency}"
    what = f"{method} c={concurrency}"
    details = {
        "calls": service.calls,
        "seconds": round(service.seconds, 3),
        "noop_seconds": round(noop.seconds, 3),
        "gc": service.gc,
        "server_us": round(service.server_us or 0, 1),
        "added_us": round(service.added_us(noop), 1),
        "answers_as_expected": service.answers,
    }
    return [
        Figure(
            f"{key}_qps", f"{what} QPS", service.qps, CALLS_UNIT, details, baseline=f"{base}_qps"
        ),
        Figure(f"{key}_p50", f"{what} p50", service.p50_ms, MS, baseline=f"{base}_p50"),
        Figure(f"{key}_p99", f"{what} p99", service.p99_ms, MS, baseline=f"{base}_p99"),
        Figure(f"{base}_qps", f"  no-op {what} QPS", noop.qps, CALLS_UNIT),
        Figure(f"{base}_p50", f"  no-op {what} p50", noop.p50_ms, MS),
        Figure(f"{base}_p99", f"  no-op {what} p99", noop.p99_ms, MS),
    ]


class GcMeter:
    """Collections of the cyclic garbage collector (this process) and their seconds, by
    generation, while it is attached (gc.callbacks)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._started

    @contextlib.contextmanager
    def attached(self) -> Any:
        gc.callbacks.append(self)
        try:
            yield
        finally:
            gc.callbacks.remove(self)

    def figures(self) -> dict[str, Any]:
        return {"collections": self.collections, "seconds": [round(x, 4) for x in self.seconds]}


def markdown(rows: list[tuple[str, int, CallsResult, CallsResult]]) -> str:
    """The figures as the issue tables them: service and no-op rows, then the ratios, the
    service's own time per call (its grpc_server_handling_seconds) and the time each call
    adds to the no-op's (1/QPS - 1/QPS(no-op))."""
    lines = [
        "| call | concurrency | QPS | p50 ms | p99 ms | QPS / no-op | p99 / no-op"
        " | µs in server | µs added |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, concurrency, service, noop in rows:
        lines.append(
            f"| {method} | {concurrency} | {service.qps:,.0f} | {service.p50_ms:.2f}"
            f" | {service.p99_ms:.2f} | {service.qps / noop.qps:.2f}"
            f" | {service.p99_ms / noop.p99_ms:.2f} | {service.server_us or 0:.1f}"
            f" | {service.added_us(noop):.1f} |"
        )
        lines.append(
            f"| no-op {method} | {concurrency} | {noop.qps:,.0f} | {noop.p50_ms:.2f}"
            f" | {noop.p99_ms:.2f} | | | | |"
        )
    return "\n".join(lines)


@benchmark(
    "hot",
    "AuthorizeSession and GetSimStatus at concurrency 1 and 50 beside a no-op server",
    options=HotOptions,
)
async def hot(ctx: BenchContext) -> list[Figure]:
    options = ctx.options_of(HotOptions)
    progress = ctx.progress
    client = HotClient(options)
    rows: list[tuple[str, int, CallsResult, CallsResult]] = []
    try:
        async with ctx.fresh_database() as url:
            await load(ctx, url, options)
            rows, logged = await _measure(ctx, client, url, options)
    finally:
        client.close()
    progress.line("hot:\n" + markdown(rows))
    figures: list[Figure] = []
    for method, concurrency, service, noop in rows:
        figures.extend(_figures(method, concurrency, service, noop))
    figures[0].details.update(sims=options.sims, records=options.records, service_log=logged)
    return figures


async def _measure(
    ctx: BenchContext, client: HotClient, url: str, options: HotOptions
) -> tuple[list[tuple[str, int, CallsResult, CallsResult]], dict[str, int]]:
    progress = ctx.progress
    rows: list[tuple[str, int, CallsResult, CallsResult]] = []
    app = Application(settings(url), Metrics())
    with progress.phase(f"hot: restart the service ({options.sims:,} SIMs loaded)"):
        await app.start()
    noop_server = grpc.aio.server()
    try:
        address = f"127.0.0.1:{app.port}"
        # A SIM with usage (the first record's, if any): the no-op answers its responses.
        first = next(hot_traffic.records(options.sims, min(1, options.records)), None)
        iccids = sim_iccids(Workload(records=1, sims=options.sims))
        authorize, status = await _samples(address, iccids[first.sim if first else 0])
        r_grpc.add_RatingServiceServicer_to_server(
            NoOpSessionServicer(authorize, status),  # type: ignore[abstract]
            noop_server,
        )
        noop_address = f"127.0.0.1:{noop_server.add_insecure_port('127.0.0.1:0')}"
        await noop_server.start()
        with progress.phase(f"hot: client builds {options.calls:,} requests per method"):
            await client.ready()
        await ctx.checkpoint(url)
        with lines_logged(ctx.service_log) as logged:
            for concurrency in CONCURRENCIES:
                for method in METHODS:
                    with (
                        progress.phase(f"hot: {method} c={concurrency}, service and no-op"),
                        ctx.profiled(f"hot_{method}_c{concurrency}"),
                    ):
                        gc_meter = GcMeter()
                        counts = app.metrics.rpc.method("unary", "rating.v1.RatingService", method)
                        calls, seconds = sum(counts.handled.values()), counts.seconds_sum
                        with gc_meter.attached():
                            service, noop = await client.run(
                                address, noop_address, method, concurrency
                            )
                        collections = gc_meter.figures()
                        calls = sum(counts.handled.values()) - calls
                        service.server_us = (counts.seconds_sum - seconds) / calls * 1e6
                    for result in (service, noop):
                        if result.problems:
                            raise VerificationFailed(
                                f"hot {method} c={concurrency}: " + "; ".join(result.problems)
                            )
                    rows.append((method, concurrency, service, noop))
                    service.gc = collections
                    progress.line(
                        f"hot: {method} c={concurrency}: {service.qps:,.0f} QPS"
                        f" (no-op {noop.qps:,.0f}), p99 {service.p99_ms:.2f} ms"
                        f" (no-op {noop.p99_ms:.2f}); {service.server_us:.1f} µs in the server,"
                        f" {service.added_us(noop):.1f} µs added; gc seconds {collections};"
                        f" answers as expected: {service.answers}"
                    )
    finally:
        await noop_server.stop(1)
        await app.stop()
    return rows, logged
