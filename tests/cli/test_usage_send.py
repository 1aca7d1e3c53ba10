"""`simrating usage send` against a real service: CSV and gzipped JSON Lines with good,
duplicate, malformed and rejected lines; an interrupted send run again counts nothing
twice."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from rating.v1 import types_pb2 as t
from tests.conftest import AppFactory
from tests.support import T0
from tests.support.cli import cli_command, cli_env, read_rejects, simrating
from tests.support.usage import account_with_sims, period_usage

HEADER = "record_id,iccid,usage_type,quantity,event_time,session_id\n"


def when(days: float) -> str:
    return (T0 + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_csv_summary_rejects_and_exit_status(start_app: AppFactory, tmp_path: Path) -> None:
    app, stubs = await start_app(clock_start=T0 + timedelta(days=20))
    a, b = await account_with_sims(stubs, count=2)
    unknown = "8900000000000999999"
    (tmp_path / "cdrs.csv").write_text(
        HEADER
        + f"r1,{a},DATA,1000,{when(1)},s1\n"  # 2 RATED
        + f"r2,{b},SMS,2,2026-01-02T10:00:00.5+02:00,\n"  # 3 RATED
        + f"r3,{a},DATA,not-a-number,{when(1)},\n"  # 4 malformed quantity
        + f"r4,{a},FAX,1,{when(1)},\n"  # 5 malformed usage_type
        + f"r5,{a},DATA,1,2026-01-02T10:00:00,\n"  # 6 malformed: no UTC offset
        + "r6,too-few-fields\n"  # 7 malformed
        + f"r7,{unknown},DATA,5,{when(1)},\n"  # 8 UNKNOWN_SIM
        + f"r8,{a},DATA,5,{when(40)},\n"  # 9 FUTURE_EVENT
        + f"r9,{a},VOICE,60,{when(2)},s9\n"  # 10 RATED
        + "\n"  # 11 blank: skipped
        + f"r1,{a},DATA,1000,{when(1)},s1\n"  # 12 the same record again: DUPLICATE
    )
    addr = f"127.0.0.1:{app.port}"
    run = await simrating(addr, "usage", "send", "cdrs.csv", cwd=tmp_path)
    assert run.code == 2, run.err
    assert run.summary() == {
        "RATED": 3,
        "DUPLICATE": 1,
        "MALFORMED": 4,
        "UNKNOWN_SIM": 1,
        "FUTURE_EVENT": 1,
    }
    rejects = read_rejects(tmp_path / "cdrs.rejected.csv")
    assert [(x["line"], x["record_id"], x["status"]) for x in rejects] == [
        ("4", "r3", "MALFORMED"),
        ("5", "r4", "MALFORMED"),
        ("6", "r5", "MALFORMED"),
        ("7", "r6", "MALFORMED"),
        ("8", "r7", "UNKNOWN_SIM"),
        ("9", "r8", "FUTURE_EVENT"),
    ]
    assert [x["reason"].split(":")[0] for x in rejects[:3]] == [
        "quantity",
        "usage_type",
        "event_time",
    ]
    assert rejects[4]["iccid"] == unknown and rejects[4]["quantity"] == "5"
    assert await period_usage(stubs, a) == {t.USAGE_TYPE_DATA: 1000, t.USAGE_TYPE_VOICE: 60}
    assert await period_usage(stubs, b) == {t.USAGE_TYPE_SMS: 2}

    # Sent again: what was rated is DUPLICATE, counted once; the rejects are the same.
    again = await simrating(addr, "usage", "send", "cdrs.csv", cwd=tmp_path)
    assert again.code == 2
    assert again.summary()["DUPLICATE"] == 4 and "RATED" not in again.summary()
    assert await period_usage(stubs, a) == {t.USAGE_TYPE_DATA: 1000, t.USAGE_TYPE_VOICE: 60}

    # Only good lines: exit 0 and no rejects file left behind.
    (tmp_path / "cdrs.csv").write_text(HEADER + f"r1,{a},DATA,1000,{when(1)},s1\n")
    clean = await simrating(addr, "usage", "send", "cdrs.csv", cwd=tmp_path)
    assert (clean.code, clean.summary()) == (0, {"DUPLICATE": 1})
    assert not (tmp_path / "cdrs.rejected.csv").exists()


async def test_gzipped_json_lines(start_app: AppFactory, tmp_path: Path) -> None:
    app, stubs = await start_app(clock_start=T0 + timedelta(days=20))
    (a,) = await account_with_sims(stubs, count=1)
    lines = [
        json.dumps({"record_id": "j1", "iccid": a, "usage_type": "DATA", "quantity": 700,
                    "event_time": when(1), "session_id": "s"}),
        "{not json",
        json.dumps({"record_id": "j2", "iccid": a, "usage_type": "SMS", "quantity": "3",
                    "event_time": when(2)}),
        json.dumps({"record_id": "j3", "iccid": a, "usage_type": "DATA", "event_time": when(1)}),
        json.dumps({"record_id": "j1", "iccid": a, "usage_type": "DATA", "quantity": 700,
                    "event_time": when(1), "session_id": "s"}),
        json.dumps({"record_id": "", "iccid": a, "usage_type": "DATA", "quantity": 1,
                    "event_time": when(1)}),
    ]  # fmt: skip
    with gzip.open(tmp_path / "cdrs.jsonl.gz", "wt") as out:
        out.write("\n".join(lines) + "\n")
    run = await simrating(f"127.0.0.1:{app.port}", "usage", "send", "cdrs.jsonl.gz", cwd=tmp_path)
    assert run.code == 2, run.err
    assert run.summary() == {"RATED": 2, "DUPLICATE": 1, "MALFORMED": 2, "INVALID": 1}
    rejects = read_rejects(tmp_path / "cdrs.rejected.csv")
    assert [(x["line"], x["status"]) for x in rejects] == [
        ("2", "MALFORMED"),
        ("4", "MALFORMED"),
        ("6", "INVALID"),
    ]
    assert "quantity" in rejects[1]["reason"] and "record_id" in rejects[2]["reason"]
    assert await period_usage(stubs, a) == {t.USAGE_TYPE_DATA: 700, t.USAGE_TYPE_SMS: 3}


def cdr_file(path: Path, sims: list[str], count: int) -> dict[str, dict[int, int]]:
    """`count` DATA and SMS records spread over `sims`; returns the per-SIM sums."""
    sums: dict[str, dict[int, int]] = {iccid: {} for iccid in sims}
    with path.open("w") as out:
        out.write(HEADER)
        for k in range(count):
            iccid = sims[k % len(sims)]
            kind, usage_type, quantity = (
                ("SMS", t.USAGE_TYPE_SMS, 1) if k % 5 == 0 else ("DATA", t.USAGE_TYPE_DATA, k + 1)
            )
            out.write(f"cdr-{k},{iccid},{kind},{quantity},{when(1 + k / count)},\n")
            sums[iccid][usage_type] = sums[iccid].get(usage_type, 0) + quantity
    return sums


async def test_first_half_then_the_whole_file_counts_nothing_twice(
    start_app: AppFactory, tmp_path: Path
) -> None:
    app, stubs = await start_app(clock_start=T0 + timedelta(days=20))
    sims = await account_with_sims(stubs, count=7)
    sums = cdr_file(tmp_path / "cdrs.csv", sims, 5_000)
    lines = (tmp_path / "cdrs.csv").read_text().splitlines(keepends=True)
    (tmp_path / "half.csv").write_text("".join(lines[:2_501]))
    addr = f"127.0.0.1:{app.port}"
    half = await simrating(addr, "usage", "send", "half.csv", "--batch-size", "300", cwd=tmp_path)
    assert (half.code, half.summary()) == (0, {"RATED": 2_500})
    whole = await simrating(addr, "usage", "send", "cdrs.csv", "--batch-size", "300", cwd=tmp_path)
    assert (whole.code, whole.summary()) == (0, {"DUPLICATE": 2_500, "RATED": 2_500})
    for iccid in sims:
        assert await period_usage(stubs, iccid) == sums[iccid]


@pytest.mark.slow
async def test_killed_mid_file_then_sent_again_counts_nothing_twice(
    start_app: AppFactory, tmp_path: Path, database_url: str
) -> None:
    app, stubs = await start_app(clock_start=T0 + timedelta(days=20))
    sims = await account_with_sims(stubs, count=50)
    count = 200_000
    sums = cdr_file(tmp_path / "cdrs.csv", sims, count)
    proc = await asyncio.create_subprocess_exec(
        *cli_command(f"127.0.0.1:{app.port}", "usage", "send", "cdrs.csv", "--batch-size", "500"),
        cwd=tmp_path,
        env=cli_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    conn = await asyncpg.connect(database_url)
    try:
        stored = 0
        async with asyncio.timeout(60):
            while stored == 0:  # kill it once some records are stored
                stored = await conn.fetchval("SELECT count(*) FROM usage_records")
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        stored = await conn.fetchval("SELECT count(*) FROM usage_records")
    finally:
        await conn.close()
    assert 0 < stored < count, "the first send must have been interrupted mid-file"
    again = await simrating(f"127.0.0.1:{app.port}", "usage", "send", "cdrs.csv", cwd=tmp_path)
    assert again.code == 0, again.err
    summary = again.summary()
    assert summary["RATED"] + summary["DUPLICATE"] == count
    assert summary["DUPLICATE"] >= stored
    for iccid in sims:
        assert await period_usage(stubs, iccid) == sums[iccid]
