"""What every benchmark receives: the options, progress lines, and fresh databases.

The PostgreSQL server is `RATING_BENCH_DATABASE_URL` if set, else the local server at
127.0.0.1:5432 if it answers, else an embedded `pgserver` under a temporary directory
(as the tests do). Each benchmark that needs storage asks for `fresh_database()`: a new
`simrating_bench_<random>` database, dropped when the benchmark ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.workload import Workload

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


class Progress:
    """One line per phase on stderr: total elapsed seconds, phase, phase seconds."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def line(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Any:
        started = time.perf_counter()
        self.line(f"{name} ...")
        yield
        self.line(f"{name}: done in {time.perf_counter() - started:.1f}s")


def _machine_busy() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


OptionsT = TypeVar("OptionsT")


@dataclass
class BenchContext:
    workload: Workload
    progress: Progress
    profile_path: Path | None = None
    sims_option: int | None = None  # --sims as given (None: each benchmark's full size)
    service_log: TextIO | None = None  # where the in-process services log (JSON lines)
    # Each benchmark's options dataclass (bench.registry.option), as the command line set it.
    options: dict[type, Any] = field(default_factory=dict)
    _server_url: str | None = None
    _embedded: Any = None
    _embedded_dir: tempfile.TemporaryDirectory[str] | None = None

    def options_of(self, kind: type[OptionsT]) -> OptionsT:
        """The options of type `kind` of this run: as given, else the dataclass's defaults."""
        chosen = self.options.get(kind)
        return chosen if chosen is not None else kind()

    @property
    def has_server(self) -> bool:
        """Whether a benchmark of this run used PostgreSQL."""
        return self._server_url is not None

    async def server_url(self) -> str:
        """URL of a maintenance database on the PostgreSQL server the benchmarks use."""
        if self._server_url is None:
            self._server_url = await self._find_server()
        return self._server_url

    async def _find_server(self) -> str:
        configured = os.environ.get("RATING_BENCH_DATABASE_URL")
        if configured:
            self.progress.line("postgres: RATING_BENCH_DATABASE_URL")
            return configured
        if await _answers(LOCAL_SERVER):
            self.progress.line(f"postgres: local server {LOCAL_SERVER}")
            return LOCAL_SERVER
        import pgserver

        self._embedded_dir = tempfile.TemporaryDirectory(prefix="simrating-bench-pg-")
        self._embedded = await asyncio.to_thread(
            pgserver.get_server,  # type: ignore[attr-defined]
            Path(self._embedded_dir.name),
            cleanup_mode="delete",
        )
        self.progress.line("postgres: embedded pgserver")
        url: str = self._embedded.get_uri()
        return url

    @contextlib.asynccontextmanager
    async def fresh_database(self, template: str | None = None) -> AsyncIterator[str]:
        """A new empty database on the server, dropped (even with open sessions) at the end.

        With `template` (the URL of another database of this run, nobody connected to
        it), the new database starts as a copy of that one."""
        server = await self.server_url()
        name = f"simrating_bench_{uuid.uuid4().hex[:12]}"
        copy_of = f' TEMPLATE "{urlsplit(template).path.lstrip("/")}"' if template else ""
        admin = await asyncpg.connect(server)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"{copy_of}')
        finally:
            await admin.close()
        try:
            yield with_database(server, name)
        finally:
            admin = await asyncpg.connect(server)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

    @contextlib.contextmanager
    def profiled(self, name: str) -> Any:
        """cProfile this process (the in-process server) while the block runs, if asked.

        Writes `<profile_path>.<name>.pstats` and prints the top 25 by cumulative time.
        """
        if self.profile_path is None:
            yield
            return
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
            path = self.profile_path.with_name(f"{self.profile_path.name}.{name}.pstats")
            profiler.dump_stats(path)
            self.progress.line(f"{name}: profile written to {path}")
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("cumulative").print_stats(25)

    @contextlib.contextmanager
    def cpu_meter(self) -> Any:
        """CPU used while the block runs: this process (all threads) and the whole machine.

        Yields a dict filled in on exit: `process_cpu_seconds`, `wall_seconds` and, on
        Linux, `machine_busy_cores` (from /proc/stat: how many of the cores were busy).
        """
        figures: dict[str, float] = {}
        started, machine = time.perf_counter(), _machine_busy()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        yield figures
        end = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - started
        figures["wall_seconds"] = round(wall, 3)
        used = end.ru_utime - cpu.ru_utime + end.ru_stime - cpu.ru_stime
        figures["process_cpu_seconds"] = round(used, 2)
        machine_end = _machine_busy()
        if machine is not None and machine_end is not None:
            busy = (machine_end[0] - machine[0]) / (machine_end[1] - machine[1])
            figures["machine_busy_cores"] = round(busy * (os.cpu_count() or 1), 2)

    async def checkpoint(self, url: str) -> None:
        """Flush dirty pages now, so a checkpoint does not land inside a timed window."""
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    async def server_info(self) -> dict[str, str]:
        """Version and the durability settings that bound every storage figure."""
        conn = await asyncpg.connect(await self.server_url())
        try:
            info = {"server_version": await conn.fetchval("SHOW server_version")}
            for setting in ("fsync", "synchronous_commit", "wal_level", "shared_buffers"):
                info[setting] = await conn.fetchval(f"SHOW {setting}")
            return info
        finally:
            await conn.close()

    async def close(self) -> None:
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.cleanup)
        if self._embedded_dir is not None:
            self._embedded_dir.cleanup()
