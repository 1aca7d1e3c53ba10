"""Logs: with RATING_LOG_FORMAT=json every line the process writes is one JSON object,
including what third-party libraries log through the standard library's `logging`
(asyncpg's pool during a database outage), their tracebacks, warnings, and an exception
nothing caught."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import grpc
import pytest

from rating.v1 import rating_service_pb2 as r
from tests.support import REPO, ServerProcess, Stubs
from tests.support.postgres import StoppablePostgres
from tests.support.usage import account_with_sims, rate, record

CALL_TIMEOUT = 20.0
# What asyncpg's pool logs (with a traceback) each time it fails to reconnect its minimum
# of connections; it retries with a growing delay for as long as PostgreSQL is down.
POOL_FLOOR_MESSAGE = "Failed to restore the pool connection floor"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object; fails naming the first line that is not one."""
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n{text}") from None
        assert isinstance(event, dict), f"line {number} is not a JSON object: {line!r}"
        events.append(event)
    return events


_LOGGING_PROGRAM = """
import logging, warnings
from service.ops.logs import configure_logging
configure_logging("json")
try:
    {}["missing"]
except KeyError:
    logging.getLogger("asyncpg.pool").warning("reconnect failed; retrying", exc_info=True)
logging.getLogger("grpc._cython.cygrpc").info("%s channels", 2)
warnings.warn("deprecated thing")
raise RuntimeError("nobody caught this")
"""


def test_standard_library_logs_are_json_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOGGING_PROGRAM],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1  # the uncaught exception still fails the process
    assert done.stdout == ""
    events = json_lines(done.stderr)
    assert [(e.get("logger"), e["level"], e["event"]) for e in events] == [
        ("asyncpg.pool", "warning", "reconnect failed; retrying"),
        ("grpc._cython.cygrpc", "info", "2 channels"),
        ("py.warnings", "warning", events[2]["event"]),
        (None, "critical", "uncaught exception"),
    ]
    assert "deprecated thing" in events[2]["event"]
    assert "KeyError: 'missing'" in events[0]["exception"]
    assert "RuntimeError: nobody caught this" in events[3]["exception"]
    assert all("timestamp" in e for e in events)


async def test_database_outage_logs_only_json_lines() -> None:
    """A real service process loses PostgreSQL: asyncpg's pool logs its reconnection
    failures with tracebacks; each is one JSON line, and so is every other line."""
    pg = await asyncio.to_thread(StoppablePostgres)
    server = ServerProcess(
        {"RATING_DATABASE_URL": pg.uri, "RATING_CLOCK": "test:2026-01-01T00:00:00Z"}
    )
    try:
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs = Stubs(channel)
            [sim] = await account_with_sims(stubs, 1)
            await rate(stubs, record("before", sim))
            await asyncio.to_thread(pg.stop)
            request = r.RateUsageRequest(records=[record("during", sim)])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.rating.RateUsage(request, timeout=CALL_TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            # Until the pool has logged at least one failed reconnection (it retries).
            async with asyncio.timeout(CALL_TIMEOUT):
                while not any(POOL_FLOOR_MESSAGE in line for line in server.log_lines):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # polling the log: no event for it
            await asyncio.to_thread(pg.start)
            [after] = await rate(stubs, record("after", sim))  # the pool reconnects
            assert after.record_id == "after"
        assert await server.stop() == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
        await asyncio.to_thread(pg.cleanup)
    events = json_lines("".join(server.log_lines))
    floor = [e for e in events if e["event"].startswith(POOL_FLOOR_MESSAGE)]
    assert floor, "asyncpg logged no reconnection failure"
    assert {(e["logger"], e["level"]) for e in floor} == {("asyncpg.pool", "warning")}
    assert all(e["exception"].startswith("Traceback") for e in floor)
    assert events[-1]["event"] == "stopped"


async def test_successful_reads_are_logged_one_in_n_writes_and_failures_always(
    database_url: str,
) -> None:
    """RATING_RPC_LOG_READS=10: of 25 GetSimStatus answered OK the 10th and 20th get a line
    (marked logged_one_in=10); each failing read and each write gets its own line."""
    server = ServerProcess(
        {
            "RATING_DATABASE_URL": database_url,
            "RATING_CLOCK": "test:2026-01-01T00:00:00Z",
            "RATING_RPC_LOG_READS": "10",
        }
    )
    try:
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stubs = Stubs(channel)
            [sim] = await account_with_sims(stubs, 1)  # PutPlan, PutAccount, ProvisionSims
            for _ in range(25):
                await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=sim))
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid="8900000000"))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            await rate(stubs, record("written", sim))  # RateUsage: a write
        assert await server.stop() == 0
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
    calls = [e for e in json_lines("".join(server.log_lines)) if e["event"] == "rpc"]
    status = [e for e in calls if e["method"] == "GetSimStatus"]
    assert [(e["code"], e.get("logged_one_in")) for e in status] == [
        ("OK", 10),
        ("OK", 10),
        ("NOT_FOUND", None),
        ("NOT_FOUND", None),
        ("NOT_FOUND", None),
    ]
    writes = [e["method"] for e in calls if e["method"] != "GetSimStatus"]
    assert writes == ["PutPlan", "PutAccount", "ProvisionSims", "RateUsage"]
    assert all("logged_one_in" not in e for e in calls if e["method"] != "GetSimStatus")
