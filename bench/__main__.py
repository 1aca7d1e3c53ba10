"""`python -m bench`: run the registered benchmarks, print the table, write results.json.

python -m bench                                  # full size (1M records, 100k SIMs)
python -m bench --records 100000 --sims 10000    # a quick run
python -m bench --only ingestion --profile /tmp/bench   # cProfile of the server side
python -m bench --only soak --minutes 10         # the soak (never in the default list)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from bench import registry, report
from bench.context import BenchContext, Progress
from bench.registry import Figure, VerificationFailed
from bench.workload import Workload
from service.ops.logs import configure_logging
from service.ops.runtime import tune_gc

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"


def parse_args(
    argv: list[str] | None, benchmarks: dict[str, registry.Benchmark]
) -> argparse.Namespace:
    """The run's options (the workload most benchmarks share, which to run, where to write),
    then every benchmark's own (declared in its module)."""
    defaults = Workload()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=defaults.records, help="usage records")
    parser.add_argument(
        "--sims",
        type=int,
        help=f"SIMs to provision (default {defaults.sims:,}; history: 1,000,000)",
    )
    parser.add_argument("--streams", type=int, default=defaults.streams, help="concurrent streams")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="records per batch")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(registry.MODULES),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="cProfile this process during each timed window; writes PROFILE.<name>.pstats",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON path")
    registry.add_options(parser, benchmarks.values())
    args = parser.parse_args(argv)
    for name in ("records", "sims", "streams", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.batch > 10_000:
        parser.error("--batch must be <= 10000 (the service's limit per batch)")
    return args


async def run(
    args: argparse.Namespace,
    benchmarks: dict[str, registry.Benchmark],
    selected: list[registry.Benchmark],
    log: TextIO,
) -> int:
    sims = args.sims if args.sims is not None else Workload().sims
    workload = Workload(args.records, sims, args.streams, args.batch)
    options = registry.options_from(args, benchmarks.values())
    ctx = BenchContext(
        workload,
        Progress(),
        args.profile,
        service_log=log,
        sims_option=args.sims,
        options=options,
    )
    ctx.progress.line(f"workload: {asdict(workload)}; benchmarks: {[b.name for b in selected]}")
    figures: list[Figure] = []
    try:
        for bench in selected:
            figures.extend(await bench.run(ctx))
        postgres = await ctx.server_info() if ctx.has_server else None
    except VerificationFailed as exc:
        print(f"verification failed: {exc}", file=sys.stderr)
        return 1
    finally:
        await ctx.close()
    print(report.table(figures))
    chosen = {"only": args.only, "profile": bool(args.profile), **registry.option_values(options)}
    report.write_json(args.output, figures, workload, chosen, postgres)
    ctx.progress.line(f"results written to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    tune_gc()  # as `python -m service` does: the service runs in this process
    # Only the modules of the benchmarks named with --only are imported (all without it).
    only = argparse.ArgumentParser(add_help=False)
    only.add_argument("--only", action="append", choices=list(registry.MODULES))
    benchmarks = registry.load(only.parse_known_args(argv)[0].only)
    args = parse_args(argv, benchmarks)
    selected = [
        b for name, b in benchmarks.items() if (name in args.only if args.only else b.default)
    ]
    # The service logs as in production (JSON lines at INFO), into a file: its loggers keep
    # the configuration of their first use, so this is set once, before any service runs.
    with tempfile.TemporaryFile("w+", prefix="simrating-bench-log-") as log:
        configure_logging("json", logging.INFO, stream=log)
        return asyncio.run(run(args, benchmarks, selected, log))


if __name__ == "__main__":
    sys.exit(main())
