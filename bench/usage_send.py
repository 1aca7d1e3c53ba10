"""`simrating usage send` end to end: the CLI reads a CDR file and streams it to the real
service; records per second from the command's start to its exit.

The workload's records are written to a CSV file first (not timed), the service starts
in this process on a fresh database with the SIMs provisioned (as for `ingestion`), then
`python -m service.cli usage send FILE` runs as a child process with the run's
`--streams` and `--batch`. The time includes the CLI's start, parsing every line and
building every request while sending: what an operator waits for. Compare it with the
`ingestion` figure of the same run (`vs ingestion`), whose client sends pre-built
requests. Afterwards: exit status 0, usage_records holds `records` rows, no rejects file.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.context import BenchContext
from bench.ingestion import provision
from bench.registry import THROUGHPUT_UNIT, Figure, VerificationFailed, benchmark
from bench.workload import Workload, records, service_settings, sim_iccids
from service.app import Application
from service.ops.metrics import Metrics

REPO = Path(__file__).resolve().parents[1]


def write_cdr_file(path: Path, workload: Workload) -> None:
    iccids = sim_iccids(workload)
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(
            ("record_id", "iccid", "usage_type", "quantity", "event_time", "session_id")
        )
        for rec in records(workload):
            when = datetime.fromtimestamp(rec.event_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.writerow(
                (rec.record_id, iccids[rec.sim], "DATA", rec.quantity, when, rec.session_id)
            )


@benchmark("usage_send", "simrating usage send of a CSV file through the real service")
async def usage_send(ctx: BenchContext) -> list[Figure]:
    workload = ctx.workload
    progress = ctx.progress
    with tempfile.TemporaryDirectory(prefix="simrating-bench-cdrs-") as tmp:
        path = Path(tmp) / "cdrs.csv"
        with progress.phase(f"usage_send: write {workload.records:,} CDRs to a CSV file"):
            await asyncio.to_thread(write_cdr_file, path, workload)
        async with ctx.fresh_database() as url:
            app = Application(service_settings(url), Metrics())
            with progress.phase("usage_send: start service"):
                await app.start()
            try:
                address = f"127.0.0.1:{app.port}"
                with progress.phase(f"usage_send: provision {workload.sims:,} SIMs"):
                    await provision(address, workload)
                await ctx.checkpoint(url)
                with (
                    progress.phase(f"usage_send: simrating usage send ({path.stat().st_size:,} B)"),
                    ctx.cpu_meter() as cpu,
                ):
                    started = time.perf_counter()
                    child = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "service.cli",
                        "--addr",
                        address,
                        "usage",
                        "send",
                        str(path),
                        "--streams",
                        str(workload.streams),
                        "--batch-size",
                        str(workload.batch),
                        cwd=REPO,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                    )
                    out, err = await child.communicate()
                    seconds = time.perf_counter() - started
            finally:
                await app.stop()
            conn = await asyncpg.connect(url)
            try:
                stored = await conn.fetchval("SELECT count(*) FROM usage_records")
            finally:
                await conn.close()
        rejects = path.with_name("cdrs.rejected.csv")
        if child.returncode != 0 or stored != workload.records or rejects.exists():
            raise VerificationFailed(
                f"usage_send: exit {child.returncode}, {stored} rows stored of"
                f" {workload.records}; stdout {out.decode()[-500:]!r}"
                f" stderr {err.decode()[-500:]!r}"
            )
    value = workload.records / seconds
    progress.line(f"usage_send: {value:,.0f} records/s")
    return [
        Figure(
            "usage_send",
            "simrating usage send (CSV file, CLI process)",
            round(value, 1),
            THROUGHPUT_UNIT,
            {
                "seconds": round(seconds, 3),
                "records": workload.records,
                "file_bytes": path.stat().st_size if path.exists() else None,
                "usage_records_rows": stored,
                "cli_summary": err.decode().strip().splitlines()[-1:],
                **cpu,
            },
        )
    ]
