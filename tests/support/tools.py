"""External tools the deploy tests run (promtool, prometheus, systemd-analyze), and a real
Prometheus server for the length of one test."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

# Debian's `prometheus` package has both; `.ci/run` installs it when promtool is missing.
PROMETHEUS_PACKAGE = "apt-get install prometheus"


def require_tool(name: str, install: str, *, in_ci: bool = True) -> str:
    """The tool's path. Missing: the test is skipped, or fails in CI (CI=true) if CI must
    have the tool (`in_ci`)."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed ({install})"
    if in_ci and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must provide it")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusServer:
    """`prometheus` on 127.0.0.1, with its config and storage in `directory`."""

    def __init__(self, binary: str, directory: Path, config: str) -> None:
        self.binary = binary
        self.directory = directory
        (directory / "prometheus.yml").write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, within: float = 30) -> None:
        with self.log.open("wb") as log:
            self.proc = await asyncio.to_thread(
                subprocess.Popen,
                [
                    self.binary,
                    f"--config.file={self.directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        async with asyncio.timeout(within):
            while not await self._ready():
                assert self.proc.poll() is None, f"prometheus exited:\n{self.log.read_text()}"
                await asyncio.sleep(0.1)  # polling its readiness endpoint

    async def _ready(self) -> bool:
        try:
            await asyncio.to_thread(self._get, "/-/ready")
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; blocking (call it in a thread)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def _get(self, path: str, **params: str) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        # 503 is Prometheus saying "not now" (a query it aborted or timed out, storage not
        # ready yet on a loaded machine): asked again, a bounded number of times.
        for attempt in range(20):
            status = 200
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:  # 400/422: a bad expression, with its error
                status, body = exc.code, exc.read()
            if status != 503 or attempt == 19:
                break
            time.sleep(0.25)
        if not path.startswith("/api/"):
            return body
        try:
            return json.loads(body)
        except ValueError:
            raise AssertionError(f"GET {path}: HTTP {status}, not JSON: {body[:300]!r}") from None

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: the whole answer ({"status": ..., "data" or "error": ...})."""
        return await asyncio.to_thread(self._get, "/api/v1/" + path, **params)

    async def query(self, expr: str) -> Any:
        return await self.api("query", query=expr)
