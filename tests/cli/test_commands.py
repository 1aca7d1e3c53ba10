"""The other commands against a real service: invoices through the API, SIM status, API
keys, and the exit statuses for scripts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import AppFactory
from tests.support.billing import settle, worked_example
from tests.support.builders import SIM1
from tests.support.cli import simrating


async def test_invoices_through_the_api(start_app: AppFactory) -> None:
    app, stubs = await start_app()
    await worked_example(stubs)
    addr = f"127.0.0.1:{app.port}"
    preview = await simrating(addr, "invoices", "show", "--account", "A", "--preview")
    assert preview.code == 0, preview.err
    assert "not final" in preview.out and "SUBSCRIPTION" in preview.out
    settled = await settle(stubs, "2026-01")

    listed = await simrating(addr, "invoices", "list", "--account", "A")
    assert listed.code == 0 and "2026-01" in listed.out and "5.13" not in listed.out
    shown = await simrating(addr, "invoices", "show", "--account", "A", "--format", "json")
    assert json.loads(shown.out)["total_micros"] == str(settled.total_micros)
    exported = await simrating(
        addr, "invoices", "export", "--account", "A", "--period", "2026-01", "--format", "csv"
    )
    assert exported.code == 0, exported.err
    rows = exported.out.splitlines()
    assert rows[0].startswith("section,account_id,period,currency,kind")
    # Through the API: the lines and the total, no per-SIM rows (--database-url has them).
    assert [row.split(",")[0] for row in rows[1:]] == ["line"] * len(settled.lines) + ["total"]
    assert rows[-1].split(",")[15] == str(settled.total_micros)
    missing = await simrating(addr, "invoices", "show", "--account", "A", "--period", "2026-03")
    assert missing.code == 1 and "NOT_FOUND" in missing.err


async def test_sim_status(start_app: AppFactory) -> None:
    app, stubs = await start_app()
    await worked_example(stubs)
    run = await simrating(f"127.0.0.1:{app.port}", "sims", "status", SIM1)
    assert run.code == 0, run.err
    assert re.search(r"account\s*[│|]\s*A\b", run.out) and "first use DATA" in run.out
    unknown = await simrating(f"127.0.0.1:{app.port}", "sims", "status", "8900000000000999999")
    assert unknown.code == 1 and "no SIM" in unknown.err


async def test_keys_create_makes_a_key_the_service_accepts(
    start_app: AppFactory, tmp_path: Path
) -> None:
    made = await simrating(None, "keys", "create", "--name", "ops", "--role", "billing")
    assert made.code == 0, made.err
    key = re.search(r"it is not stored anywhere\): (\S+)", made.out)
    entry = re.search(r"RATING_API_KEYS_FILE: (\{.*\})", made.out)
    assert key and entry
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"keys": [json.loads(entry.group(1))]}))
    app, _ = await start_app(api_keys_file=keys_file)
    addr = f"127.0.0.1:{app.port}"

    allowed = await simrating(addr, "--api-key", key.group(1), "invoices", "list", "--account", "A")
    assert allowed.code == 1 and "NOT_FOUND" in allowed.err  # past authentication
    by_env = await simrating(
        addr, "invoices", "list", "--account", "A", env={"RATING_API_KEY": key.group(1)}
    )
    assert by_env.code == 1 and "NOT_FOUND" in by_env.err
    anonymous = await simrating(addr, "invoices", "list", "--account", "A")
    assert anonymous.code == 1 and "UNAUTHENTICATED" in anonymous.err
    (tmp_path / "sims.csv").write_text("iccid\n8900000000000000016\n")
    denied = await simrating(
        addr, "--api-key", key.group(1),
        "sims", "provision", "--account", "A", "--plan", "P", "sims.csv",
        cwd=tmp_path,
    )  # fmt: skip
    assert denied.code == 1 and "PERMISSION_DENIED" in denied.err


async def test_exit_statuses_for_an_absent_service_and_bad_flags(tmp_path: Path) -> None:
    (tmp_path / "cdrs.csv").write_text(
        "record_id,iccid,usage_type,quantity,event_time\nr1,8900000000000000016,DATA,1,"
        "2026-01-01T00:00:00Z\n"
    )
    down = await simrating("127.0.0.1:1", "usage", "send", "cdrs.csv", cwd=tmp_path)
    assert down.code == 1 and "UNAVAILABLE" in down.err
    bad_flag = await simrating(None, "usage", "send", "--streams", "0", "cdrs.csv", cwd=tmp_path)
    assert bad_flag.code == 64
    no_file = await simrating(None, "catalog", "apply", "missing.yaml", cwd=tmp_path)
    assert no_file.code == 64
    helped = await simrating(None, "usage", "send", "--help")
    assert helped.code == 0 and "Exit status" in helped.out and "rejected.csv" in helped.out
