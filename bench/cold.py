"""The session-start handlers without gRPC, with the CPU caches as cold as in the server.

    python -m bench.cold [--sims 1000000] [--calls 10000] [--rounds 5]

Not in the registry (a measuring tool for docs/performance.md). In a fresh database,
the hot benchmark's set-up (`bench.hot`: `--sims` SIMs provisioned and as many usage
records streamed), then the service started again in this process, its cache loaded from
PostgreSQL. AuthorizeSession and GetSimStatus are then called directly, `--calls` times
per variant and round, each in two forms: `wrapped`, the handler every gRPC call of the
method runs (the interceptor around the servicer's method, as the server's generic
handler gives it), and `bare`, the servicer's method alone. Three ways of asking:

- `one SIM`: the same SIM every time, everything in the CPU caches (a warm loop);
- `random`: random SIMs (fixed seed);
- `random, cold`: random SIMs, with FLUSH_BYTES written between two calls, as gRPC's C
  core and the event loop leave the caches between two calls of the running server.

Printed: µs per call, the median and the lowest over `--rounds` rounds. The variants
alternate within each round, so a busy moment of the machine falls on all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from bench.context import BenchContext, Progress
from bench.hot import HotOptions, load, settings
from bench.hot_traffic import REQUESTED_QUANTITY
from bench.workload import Workload, sim_iccids
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import Application
from service.ops.logs import configure_logging
from service.ops.metrics import Metrics
from service.ops.runtime import tune_gc

FLUSH_BYTES = 4 << 20  # more than the L2 caches of this machine's cores
SEED = 5


class _Details(NamedTuple):  # what a generic handler is asked with (grpc.HandlerCallDetails)
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class _Context:
    """What the handlers read of a grpc.aio ServicerContext on a successful call."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def code(self) -> None:
        return None


def _request(method: str, iccid: str) -> Any:
    if method == "AuthorizeSession":
        return r.AuthorizeSessionRequest(
            iccid=iccid, usage_type=t.USAGE_TYPE_DATA, requested_quantity=REQUESTED_QUANTITY
        )
    return r.GetSimStatusRequest(iccid=iccid)


def _timed(handler: Callable[..., Any], requests: list[Any], flush: bytearray | None) -> float:
    """µs per call of `handler` (a coroutine is run to its end: it never waits)."""
    context = _Context()
    ones = b"\1" * (len(flush) // 64) if flush is not None else b""
    clock = time.perf_counter_ns
    total = 0
    for request in requests:
        if flush is not None:
            flush[::64] = ones  # one write per cache line
        started = clock()
        answer = handler(request, context)
        if asyncio.iscoroutine(answer):
            try:
                answer.send(None)
            except StopIteration:
                pass
            else:
                raise RuntimeError("a hot handler waited")
        total += clock() - started
    return total / len(requests) / 1000


async def measure(url: str, sims: int, calls: int, rounds: int) -> None:
    app = Application(settings(url), Metrics())
    await app.start()
    try:
        assert app.handlers is not None and app.rating is not None
        iccids = sim_iccids(Workload(records=1, sims=sims))
        rng = random.Random(SEED)
        flush = bytearray(FLUSH_BYTES)
        for method in ("AuthorizeSession", "GetSimStatus"):
            path = f"/rating.v1.RatingService/{method}"
            wrapped = app.handlers.service(_Details(path, ())).unary_unary
            forms = {"wrapped": wrapped, "bare": getattr(app.rating, method)}
            times: dict[str, list[float]] = {}
            for _ in range(rounds):
                same = [_request(method, iccids[0])] * calls
                spread = [_request(method, iccids[rng.randrange(sims)]) for _ in range(calls)]
                asks: dict[str, tuple[list[Any], bytearray | None]] = {
                    "one SIM": (same, None),
                    "random": (spread, None),
                    "random, cold": (spread, flush),
                }
                for form, handler in forms.items():
                    for ask, (requests, flushing) in asks.items():
                        took = _timed(handler, requests, flushing)
                        times.setdefault(f"{form:8s} {ask}", []).append(took)
            for name, values in times.items():
                print(
                    f"{method:17s} {name:22s} median {statistics.median(values):6.2f} µs"
                    f"  lowest {min(values):6.2f} µs",
                    flush=True,
                )
    finally:
        await app.stop()


async def main(args: argparse.Namespace) -> None:
    ctx = BenchContext(workload=Workload(), progress=Progress())
    options = HotOptions(sims=args.sims, records=args.sims)
    try:
        async with ctx.fresh_database() as url:
            await load(ctx, url, options)
            await measure(url, args.sims, args.calls, args.rounds)
    finally:
        await ctx.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    tune_gc()  # as `python -m service` does
    with tempfile.TemporaryFile("w+") as log:  # the service's JSON log, as in the benchmarks
        configure_logging("json", logging.INFO, stream=log)
        asyncio.run(main(parser.parse_args()))
