"""`simrating sims provision` against a real service: good, duplicate (in the file and
already provisioned), conflicting and invalid ICCIDs; calls of at most 10,000."""

from __future__ import annotations

from pathlib import Path

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from tests.conftest import AppFactory
from tests.support import T0, Stubs, data_plan, iccids
from tests.support.cli import read_rejects, simrating


async def catalog(stubs: Stubs) -> None:
    for plan_id in ("P", "Q"):
        await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan(plan_id)))
    for account_id in ("A", "B"):
        account = t.Account(account_id=account_id, currency="EUR")
        await stubs.catalog.PutAccount(c.PutAccountRequest(account=account))


async def sim(stubs: Stubs, iccid: str) -> t.SimStatus:
    return (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))).status


async def test_summary_rejects_file_and_exit_status(start_app: AppFactory, tmp_path: Path) -> None:
    app, stubs = await start_app()
    await catalog(stubs)
    good, again, mine, theirs, other_plan = iccids(1, 5)
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="P", iccids=[mine])
    )
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="B", plan_id="P", iccids=[theirs])
    )
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id="A", plan_id="Q", iccids=[other_plan])
    )
    bad_luhn = good[:-1] + str((int(good[-1]) + 1) % 10)
    (tmp_path / "sims.csv").write_text(
        "iccid,provisioned_at,vendor_ref\n"
        f"{good},2025-12-15T00:00:00Z,v1\n"  # line 2: CREATED
        f"{again},,v2\n"  # line 3: CREATED (provisioned now)
        f"{again},,v3\n"  # line 4: in the file twice: ALREADY_PROVISIONED
        f"{mine},,v4\n"  # line 5: A/P already: ALREADY_PROVISIONED
        f"{theirs},,v5\n"  # line 6: on account B: CONFLICT
        f"{other_plan},,v6\n"  # line 7: on plan Q: CONFLICT
        f"{bad_luhn},,v7\n"  # line 8: INVALID_ICCID
        "8912345,,v8\n"  # line 9: too short: INVALID_ICCID
        f"{iccids(9, 1)[0]},yesterday,v9\n"  # line 10: MALFORMED time, not sent
    )
    run = await simrating(
        f"127.0.0.1:{app.port}",
        "sims", "provision", "--account", "A", "--plan", "P", "sims.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.code == 2, run.err
    assert run.summary() == {
        "CREATED": 2,
        "ALREADY_PROVISIONED": 2,
        "CONFLICT": 2,
        "INVALID_ICCID": 2,
        "MALFORMED": 1,
    }
    rejects = read_rejects(tmp_path / "sims.rejected.csv")
    assert [(x["line"], x["iccid"], x["vendor_ref"], x["status"]) for x in rejects] == [
        ("6", theirs, "v5", "CONFLICT"),
        ("7", other_plan, "v6", "CONFLICT"),
        ("8", bad_luhn, "v7", "INVALID_ICCID"),
        ("9", "8912345", "v8", "INVALID_ICCID"),
        ("10", iccids(9, 1)[0], "v9", "MALFORMED"),
    ]
    assert "account 'B'" in rejects[0]["reason"] and "Luhn" in rejects[2]["reason"]
    assert "provisioned_at" in rejects[4]["reason"]
    created = await sim(stubs, good)
    assert (created.account_id, created.plan_id) == ("A", "P")
    assert created.provisioned_at.ToDatetime().isoformat() == "2025-12-15T00:00:00"
    assert (await sim(stubs, again)).provisioned_at.ToDatetime() == T0.replace(tzinfo=None)
    assert (await sim(stubs, theirs)).account_id == "B"

    # Fixed file, run again: everything is accepted, the stale rejects file goes away.
    (tmp_path / "sims.csv").write_text(f"iccid\n{good}\n{again}\n{mine}\n")
    rerun = await simrating(
        f"127.0.0.1:{app.port}",
        "sims", "provision", "--account", "A", "--plan", "P", "sims.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert rerun.code == 0, rerun.err
    assert rerun.summary() == {"ALREADY_PROVISIONED": 3}
    assert not (tmp_path / "sims.rejected.csv").exists()


async def test_large_files_go_in_calls_of_ten_thousand(
    start_app: AppFactory, tmp_path: Path
) -> None:
    app, stubs = await start_app()
    await catalog(stubs)
    sims = iccids(1, 10_005)
    (tmp_path / "vendor.csv").write_text("iccid\n" + "\n".join(sims) + "\n")
    run = await simrating(
        f"127.0.0.1:{app.port}",
        "sims", "provision", "--account", "A", "--plan", "P", "vendor.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.summary() == {"CREATED": 10_005}
    assert (await sim(stubs, sims[-1])).account_id == "A"


async def test_a_refused_call_rejects_its_rows(start_app: AppFactory, tmp_path: Path) -> None:
    app, stubs = await start_app()
    await catalog(stubs)
    (tmp_path / "sims.csv").write_text("iccid\n" + "\n".join(iccids(1, 3)) + "\n")
    run = await simrating(
        f"127.0.0.1:{app.port}",
        "sims", "provision", "--account", "nobody", "--plan", "P", "sims.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.code == 2
    assert run.summary() == {"NOT_FOUND": 3}
    rejects = read_rejects(tmp_path / "sims.rejected.csv")
    assert [x["line"] for x in rejects] == ["2", "3", "4"]
    assert all("nobody" in x["reason"] for x in rejects)
