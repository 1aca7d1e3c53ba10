"""`python -m service` in a child process, driven as an operator drives it.

`ServiceProcess` starts the service from a checkout on a database of the run's PostgreSQL
(`RATING_DATABASE_URL`, `RATING_CLOCK=test:<time>`, port 0 read from its `serving` log
line, JSON logs on stderr), measures its start and memory, and stops it with SIGTERM. A
watchdog thread kills it if its RSS passes a limit: the machine is shared. Used by the
history benchmark and by `python -m bench.rss`; nothing here depends on how the service
keeps its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.registry import VerificationFailed
from rating.v1 import clock_service_pb2 as k
from rating.v1 import clock_service_pb2_grpc as k_grpc

REPO = Path(__file__).resolve().parents[1]
# The service is killed if its RSS passes this share of the memory available when the
# benchmark started: the machine is shared.
RSS_LIMIT_SHARE = 0.7
MIB = 1_048_576


def _mem_available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def service_rss_limit() -> int:
    """The RSS above which a service is killed: RSS_LIMIT_SHARE of the memory available now."""
    return int(RSS_LIMIT_SHARE * _mem_available())


@dataclass
class Measured:
    """One start of the service: seconds to `serving`, then its memory."""

    seconds: float
    rss: int  # bytes, VmRSS once serving and answering
    peak: int  # bytes, VmHWM at that moment (the start's peak)
    loaded: dict[str, Any]  # the service's "cache loaded" log line: its seconds, replayed...

    def details(self) -> dict[str, Any]:
        return {
            "restart_seconds": round(self.seconds, 3),
            "rss_mib": round(self.rss / MIB, 1),
            "peak_rss_mib": round(self.peak / MIB, 1),
            "cache_load_seconds": self.loaded.get("seconds"),
            "sim_periods_loaded": self.loaded.get("sim_periods"),
            "replayed_records": self.loaded.get("replayed_records"),
        }


@dataclass
class ServiceProcess:
    """`python -m service` from the checkout `tree` on `url`, test clock at `clock`, port 0,
    JSON logs on stderr.

    A watchdog thread kills it if its RSS passes `rss_limit` (the machine is shared)."""

    url: str
    window_s: int
    rss_limit: int
    checkpoint_interval_s: float = 30.0
    tree: Path = REPO
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    log_tail: list[str] = field(default_factory=list)
    loaded: dict[str, Any] = field(default_factory=dict)  # the last start's "cache loaded"
    checkpoints: int = 0  # "checkpoint written" lines logged so far
    killed_for_memory: int | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    async def start(self, clock: datetime) -> float:
        """Start it; the seconds from starting the process to its `serving` log line."""
        path = os.environ.get("PYTHONPATH")
        env = {
            **os.environ,
            "PYTHONPATH": f"{self.tree}{os.pathsep}{path}" if path else str(self.tree),
            "RATING_DATABASE_URL": self.url,
            "RATING_CLOCK": f"test:{clock.isoformat()}",
            "RATING_GRPC_ADDR": "127.0.0.1:0",
            "RATING_METRICS_ADDR": "",
            "RATING_LOG_FORMAT": "json",
            "RATING_LATE_USAGE_WINDOW_S": str(self.window_s),
            "RATING_CHECKPOINT_INTERVAL_S": str(self.checkpoint_interval_s),
        }
        self._done = threading.Event()
        self.log_tail, self.loaded = [], {}
        started = time.perf_counter()
        self.proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "service"],
            cwd=self.tree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = self._lines()
        self.port = await asyncio.to_thread(self._await_serving, lines)
        seconds = time.perf_counter() - started
        # Keep draining stderr (or the child blocks on a full pipe), and watch its memory.
        threading.Thread(target=lambda: [None for _ in lines], daemon=True).start()
        threading.Thread(target=self._watch_memory, daemon=True).start()
        return seconds

    def _lines(self) -> Iterator[str]:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_tail = [*self.log_tail[-49:], line]
            if '"checkpoint written"' in line:
                self.checkpoints += 1
            yield line

    def _await_serving(self, lines: Iterator[str]) -> int:
        for line in lines:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "cache loaded":
                self.loaded = event
            if event.get("event") == "serving":
                return int(event["grpc_port"])
        raise VerificationFailed("the service exited before serving:\n" + "".join(self.log_tail))

    def memory(self, field_name: str) -> int:
        """VmRSS, VmHWM, ... of the process, in bytes."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
        raise VerificationFailed(f"no {field_name} for the service process")

    def _watch_memory(self) -> None:
        while not self._done.wait(1.0):
            try:
                rss = self.memory("VmRSS")
            except (OSError, VerificationFailed):
                return
            if rss > self.rss_limit:
                self.killed_for_memory = rss
                self.kill()
                return

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def measure(self, clock: datetime) -> Measured:
        """Start it, wait until it answers Health.Check and GetTime, read its memory."""
        seconds = await self.start(clock)
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=60
            )
            if health.status != health_pb2.HealthCheckResponse.SERVING:
                raise VerificationFailed(f"health after serving: {health.status}")
            await k_grpc.ClockServiceStub(channel).GetTime(k.GetTimeRequest(), timeout=60)
        return Measured(seconds, self.memory("VmRSS"), self.memory("VmHWM"), self.loaded)

    async def stop(self) -> None:
        """SIGTERM; it must exit with status 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.proc.wait, 120)
        self._done.set()
        self.check()
        if code != 0:
            raise VerificationFailed(
                f"the service exited with {code} after SIGTERM:\n" + "".join(self.log_tail)
            )

    def kill(self) -> None:
        self._done.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def check(self) -> None:
        if self.killed_for_memory is not None:
            raise VerificationFailed(
                f"the service was killed at {self.killed_for_memory / MIB:,.0f} MiB RSS, above"
                f" the limit of {self.rss_limit / MIB:,.0f} MiB ({RSS_LIMIT_SHARE:.0%} of the"
                " memory available when the benchmark started)"
            )


@contextlib.asynccontextmanager
async def running(service: ServiceProcess) -> AsyncIterator[ServiceProcess]:
    """Kill the process if the block fails; turn a failure after a kill for memory into
    the reason."""
    try:
        yield service
    except BaseException:
        service.kill()
        service.check()
        raise
