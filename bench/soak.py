"""Soak: StreamUsage ingestion held at half the maximum rate for minutes, minute by minute.

    python -m bench.soak --minutes 10              # measure the max with a burst, then soak
    python -m bench.soak --minutes 10 --rate 8000  # soak at 8,000 records/s, no burst
    python -m bench --only soak --minutes 10       # the same through the bench runner

Not in the default `python -m bench` list (it takes minutes); never run in CI.

In this process: a fresh database and the real service (`Application`, test clock at
`CLOCK_START`), one account with `SIMS` SIMs. In a child process (like bench.client): a
paced load generator over `STREAMS` streams that builds its batches as it goes (unique
record ids, January event times, so every record must be RATED) and times each batch from
the moment its request is handed to gRPC to the moment its acknowledgement arrives.

1. Burst (unless --rate): `BURST_SECONDS` unpaced; the maximum = records acknowledged /
   seconds. 2. Soak: batches released on a fixed schedule at `rate` (default: half the
   maximum) for `minutes`. Meanwhile this process samples its own VmRSS (the server's
   RSS: the server runs here; the client is the child) once a second.

Per minute: the server RSS (maximum of the minute), records acknowledged, and the p50 /
p99 / max acknowledgement latency of the batches sent in that minute. Printed as a table
and written to bench/soak.json. A rising RSS or latency curve at a constant rate is what
this looks for: leaks, index growth slowing commits, queues that never drain.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import multiprocessing
import random
import statistics
import sys
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench import report
from bench.client import close_child, receive
from bench.context import BenchContext, Progress
from bench.ingestion import provision
from bench.registry import (
    BENCHMARKS,
    Figure,
    VerificationFailed,
    add_options,
    benchmark,
    option,
    options_from,
)
from bench.workload import (
    CLOCK_START,
    PROVISIONED_AT,
    USAGE_TYPE_DATA,
    Workload,
    service_settings,
    sim_iccids,
)
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import Application
from service.ops.logs import configure_logging
from service.ops.metrics import Metrics
from service.ops.runtime import tune_gc

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "soak.json"
METHOD = "/rating.v1.RatingService/StreamUsage"
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
SIMS = 10_000
STREAMS = 4
BATCH = 500
BURST_SECONDS = 20.0
RSS_SAMPLE_SECONDS = 1.0
_EPOCH = int(PROVISIONED_AT.timestamp())
_SPAN = int((CLOCK_START - PROVISIONED_AT).total_seconds()) - 60


@dataclass(frozen=True, slots=True)
class SoakOptions:
    minutes: float = field(
        default=10.0, metadata=option("--minutes", "duration", minimum=0, above=True)
    )
    # records/s; None: half the maximum a burst measures
    rate: float | None = field(
        default=None,
        metadata=option("--rate", "records/s (default: half the max)", minimum=0, above=True),
    )
    output: Path = DEFAULT_OUTPUT


@dataclass
class LoadResult:
    """What the child measured: per batch (sent at, latency seconds, records, all RATED)."""

    started: float  # time.monotonic() of the first scheduled batch (system-wide clock)
    seconds: float
    batches: list[tuple[float, float, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(n for _, _, n in self.batches)


# --- the load generator (child process) ------------------------------------------------------


def _batch(prefix: str, index: int, iccids: list[str], rng: random.Random) -> bytes:
    request = r.StreamUsageRequest(
        batch_id=f"{prefix}-{index:08d}",
        records=[
            t.UsageRecord(
                record_id=f"{prefix}-{index:08d}-{k:04d}",
                iccid=iccids[rng.randrange(len(iccids))],
                usage_type=USAGE_TYPE_DATA,
                quantity=rng.randrange(1, 4_194_304),
                event_time=Timestamp(seconds=_EPOCH + rng.randrange(_SPAN)),
            )
            for k in range(BATCH)
        ],
    )
    return request.SerializeToString()


async def _load(address: str, prefix: str, rate: float | None, seconds: float) -> LoadResult:
    """Send batches for `seconds` over STREAMS streams: paced at `rate` records/s, or as fast
    as the server acknowledges (rate None); return per-batch latencies."""
    iccids = sim_iccids(Workload(sims=SIMS))
    interval = BATCH / rate if rate else 0.0
    started = time.monotonic()
    end = started + seconds
    result = LoadResult(started, 0.0)
    next_index = 0

    async def one_stream(channel: grpc.aio.Channel, stream: int) -> None:
        nonlocal next_index
        rng = random.Random(stream)
        sent: dict[str, float] = {}

        async def requests() -> AsyncIterator[bytes]:
            nonlocal next_index
            while True:
                index = next_index
                next_index += 1
                due = started + index * interval
                if due >= end or time.monotonic() >= end:
                    return
                body = _batch(prefix, index, iccids, rng)
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)  # pacing the load, not synchronisation
                sent[f"{prefix}-{index:08d}"] = time.monotonic()
                yield body

        call = channel.stream_stream(
            METHOD, request_serializer=None, response_deserializer=r.StreamUsageResponse.FromString
        )(requests())
        async for response in call:
            received = time.monotonic()
            sent_at = sent.pop(response.batch_id)
            rated = sum(1 for x in response.results if x.status == t.RECORD_STATUS_RATED)
            if rated != len(response.results) and len(result.problems) < 20:
                result.problems.append(f"{response.batch_id}: {rated}/{len(response.results)}")
            result.batches.append((sent_at, received - sent_at, len(response.results)))
        if sent:
            result.problems.append(f"stream {stream}: {len(sent)} batches never acknowledged")

    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(STREAMS)]
    try:
        await asyncio.gather(*(one_stream(c, s) for s, c in enumerate(channels)))
    finally:
        for channel in channels:
            await channel.close()
    result.seconds = time.monotonic() - started
    return result


def _child_main(conn: Connection) -> None:
    """Commands: ("load", address, prefix, rate, seconds) -> ("done", LoadResult); ("quit",)."""
    try:
        while (command := conn.recv())[0] == "load":
            _, address, prefix, rate, seconds = command
            conn.send(("done", asdict(asyncio.run(_load(address, prefix, rate, seconds)))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class LoadClient:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._process = ctx.Process(
            target=_child_main, args=(child_conn,), name="soak-client", daemon=True
        )
        self._process.start()
        child_conn.close()

    async def load(
        self, address: str, prefix: str, rate: float | None, seconds: float
    ) -> LoadResult:
        self._conn.send(("load", address, prefix, rate, seconds))
        return LoadResult(**await receive(self._conn, "done"))

    def close(self) -> None:
        close_child(self._conn, self._process, ("quit",))


# --- the server side: RSS samples, per-minute table ------------------------------------------


def rss_bytes(pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


async def sample_rss(samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append((time.monotonic(), rss_bytes()))
        try:
            await asyncio.wait_for(stop.wait(), RSS_SAMPLE_SECONDS)
        except TimeoutError:
            pass


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def per_minute(
    load: LoadResult, rss: list[tuple[float, int]], minutes: float
) -> list[dict[str, Any]]:
    rows = []
    for minute in range(max(1, int(-(-minutes // 1)))):
        low, high = load.started + 60 * minute, load.started + 60 * (minute + 1)
        span = min(high, load.started + load.seconds) - low
        latencies = [lat for sent, lat, _ in load.batches if low <= sent < high]
        records = sum(n for sent, _, n in load.batches if low <= sent < high)
        in_minute = [b for at, b in rss if low <= at < high]
        rows.append(
            {
                "minute": minute + 1,
                "records": records,
                "records_per_s": round(records / span, 1) if span > 0 else None,
                "rss_mib": round(max(in_minute) / 2**20, 1) if in_minute else None,
                "p50_ms": round(_percentile(latencies, 50) * 1000, 1) if latencies else None,
                "p99_ms": round(_percentile(latencies, 99) * 1000, 1) if latencies else None,
                "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("minute", "records/s", "RSS MiB", "p50 ms", "p99 ms", "max ms")
    keys = ("minute", "records_per_s", "rss_mib", "p50_ms", "p99_ms", "max_ms")
    cells = [head] + [tuple("-" if row[k] is None else f"{row[k]:,}" for k in keys) for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def soak_run(ctx: BenchContext, options: SoakOptions) -> dict[str, Any]:
    """Burst (unless a rate is given), then the soak; returns the soak.json document."""
    progress = ctx.progress
    client = LoadClient()
    try:
        async with ctx.fresh_database() as url:
            app = Application(service_settings(url), Metrics())
            with progress.phase("soak: start service"):
                await app.start()
            try:
                address = f"127.0.0.1:{app.port}"
                with progress.phase(f"soak: provision {SIMS:,} SIMs"):
                    await provision(address, Workload(sims=SIMS))
                await ctx.checkpoint(url)
                maximum = None
                if options.rate is None:
                    with progress.phase(f"soak: burst {BURST_SECONDS:.0f}s unpaced"):
                        burst = await client.load(address, "burst", None, BURST_SECONDS)
                    if burst.problems:
                        raise VerificationFailed("burst: " + "; ".join(burst.problems))
                    maximum = burst.records / burst.seconds
                    progress.line(f"soak: maximum {maximum:,.0f} records/s")
                rate = options.rate or maximum / 2  # type: ignore[operator]
                baseline_rss = rss_bytes()
                samples: list[tuple[float, int]] = []
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_rss(samples, stop))
                try:
                    with progress.phase(f"soak: {options.minutes:g} min at {rate:,.0f} records/s"):
                        load = await client.load(address, "soak", rate, options.minutes * 60)
                finally:
                    stop.set()
                    await sampler
            finally:
                await app.stop()
    finally:
        client.close()
    if load.problems:
        raise VerificationFailed("soak: " + "; ".join(load.problems))
    rows = per_minute(load, samples, options.minutes)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": report.machine(),
        "settings": {
            "minutes": options.minutes,
            "streams": STREAMS,
            "batch": BATCH,
            "sims": SIMS,
            "burst_seconds": None if options.rate else BURST_SECONDS,
        },
        "max_records_per_s": round(maximum, 1) if maximum else None,
        "target_records_per_s": round(rate, 1),
        "achieved_records_per_s": round(load.records / load.seconds, 1),
        "records": load.records,
        "baseline_rss_mib": round(baseline_rss / 2**20, 1),
        "per_minute": rows,
    }


@benchmark(
    "soak",
    "StreamUsage at half the max rate for minutes: RSS and ack latency",
    default=False,
    options=SoakOptions,
)
async def soak(ctx: BenchContext) -> list[Figure]:
    options = ctx.options_of(SoakOptions)
    document = await soak_run(ctx, options)
    print(table(document["per_minute"]))
    options.output.write_text(json.dumps(document, indent=2) + "\n")
    ctx.progress.line(f"soak: per-minute table written to {options.output}")
    rows = document["per_minute"]
    rss = [row["rss_mib"] for row in rows if row["rss_mib"] is not None]
    p99 = [row["p99_ms"] for row in rows if row["p99_ms"] is not None]
    return [
        Figure("soak_rate", "soak: achieved rate", document["achieved_records_per_s"], "records/s"),
        Figure("soak_rss_growth", "soak: RSS last - first minute", rss[-1] - rss[0], "MiB"),
        Figure("soak_p99_worst", "soak: worst per-minute p99 ack latency", max(p99), "ms"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="soak JSON path")
    add_options(parser, [BENCHMARKS["soak"]])
    args = parser.parse_args(argv)
    configure_logging("console", level=logging.WARNING)
    tune_gc()  # as `python -m service` does: the service runs in this process
    chosen = options_from(args, [BENCHMARKS["soak"]])[SoakOptions]
    options = dataclasses.replace(chosen, output=args.output)
    ctx = BenchContext(Workload(), Progress(), options={SoakOptions: options})

    async def run() -> dict[str, Any]:
        try:
            return await soak_run(ctx, options)
        finally:
            await ctx.close()

    try:
        document = asyncio.run(run())
    except VerificationFailed as exc:
        print(f"verification failed: {exc}", file=sys.stderr)
        return 1
    print(table(document["per_minute"]))
    options.output.write_text(json.dumps(document, indent=2) + "\n")
    ctx.progress.line(f"results written to {options.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
