"""The files under deploy/, checked by the tools that will read them.

- `promtool check rules` and `promtool test rules` (the unit tests in alerts_test.yml).
- A real Prometheus server scrapes a real service while it gets traffic (catalog,
  provisioning, usage, a settlement), loads alerts.yml, and through its HTTP API
  evaluates every expression of the Grafana dashboard and every alert rule: none errors,
  every dashboard panel has data, every rule evaluates healthy and has a summary, a
  description and a runbook entry in docs/operations.md.
- `systemd-analyze verify` of the example unit.

A missing tool skips its test; in CI (CI=true) a missing promtool or prometheus fails it
(`.ci/run` installs them), a missing systemd-analyze still skips it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import types_pb2 as t
from tests.conftest import AppFactory
from tests.support import REPO, T0, Stubs, iccids
from tests.support.billing import advance, utc
from tests.support.tools import PROMETHEUS_PACKAGE, PrometheusServer, require_tool
from tests.support.usage import account_with_sims, rate, record

ALERTS = REPO / "deploy/prometheus/alerts.yml"
ALERTS_TEST = REPO / "deploy/prometheus/alerts_test.yml"
DASHBOARD = REPO / "deploy/grafana/simrating.json"
UNIT = REPO / "deploy/systemd/simrating.service"
OPERATIONS = REPO / "docs/operations.md"
JOB = "simrating"  # the scrape job name alerts.yml expects
# What Grafana puts in place of its variables, for Prometheus to evaluate the expressions.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "5m",
    "$job": JOB,
    "$instance": ".*",
}
DEADLINE = 30.0  # seconds, for each thing awaited from Prometheus


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    promtool = require_tool("promtool", PROMETHEUS_PACKAGE)
    done = run(promtool, "check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout


def test_promtool_runs_the_rule_unit_tests() -> None:
    promtool = require_tool("promtool", PROMETHEUS_PACKAGE)
    done = run(promtool, "test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = ALERTS_TEST.read_text()
    for name in alert_names():
        # Each case: from `alertname: <name>` to the next case, test or the end.
        case = rf"alertname: {name}$(.*?)(?=\n      - eval_time|\n\n|\Z)"
        cases = re.findall(case, tests, re.S | re.M)
        assert any("exp_alerts:" in case for case in cases), f"{name}: no case where it fires"
        assert any("exp_alerts:" not in case for case in cases), f"{name}: no quiet case"


def alert_names() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), re.M)


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the headings of docs/operations.md."""
    headings = re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables replaced) of every target."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            queries.append((panel["title"], expr))
    return queries


def test_dashboard_uses_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len(dashboard_queries()) >= 20


async def send_traffic(stubs: Stubs, round_: int) -> int:
    """Catalog, provisioning, usage (rated, duplicate, unknown SIM) and a failed call;
    the number of usage records answered."""
    sims = await account_with_sims(stubs, 5, start=1 + 5 * round_, account_id=f"A{round_}")
    await stubs.catalog.ListPlans(c.ListPlansRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id="missing"))
    records = [record(f"r{round_}-{i}", sims[i % 5], 1_000 + i) for i in range(50)]
    results = await rate(stubs, *records, records[0], record(f"x{round_}", iccids(900, 1)[0]))
    statuses = [x.status for x in results]
    assert statuses.count(t.RECORD_STATUS_RATED) == 50
    assert statuses.count(t.RECORD_STATUS_DUPLICATE) == 1
    return len(results)


async def until_value(prometheus: PrometheusServer, expr: str, expected: float) -> None:
    """Until the instant query `expr` has one sample equal to `expected` (the scrape after
    the traffic reached Prometheus)."""
    last: Any = None
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                answer = await prometheus.query(expr)
                assert answer["status"] == "success", answer
                last = answer["data"]["result"]
                if last and float(last[0]["value"][1]) == expected:
                    return
                await asyncio.sleep(0.2)  # polling Prometheus's API
    except TimeoutError:
        raise AssertionError(f"{expr} never became {expected}; last: {last}") from None


async def test_prometheus_evaluates_the_dashboard_and_the_alerts(
    start_app: AppFactory, tmp_path: Path
) -> None:
    binary = require_tool("prometheus", PROMETHEUS_PACKAGE)
    app, stubs = await start_app(metrics_addr="127.0.0.1:0")
    config = f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {ALERTS}
scrape_configs:
  - job_name: {JOB}
    static_configs:
      - targets: ["127.0.0.1:{app.metrics_port}"]
"""
    prometheus = PrometheusServer(binary, tmp_path, config)
    try:
        await prometheus.start()
        await until_value(prometheus, f'up{{job="{JOB}"}}', 1)
        # Two rounds of traffic, each seen by a scrape: every rate() has two different
        # samples to work with.
        answered = await send_traffic(stubs, 0)
        await advance(stubs, utc(2026, 2, 2))  # settles December and January
        await until_value(prometheus, "sum(rating_usage_records_total)", answered)
        answered += await send_traffic(stubs, 1)
        [closed] = await rate(stubs, record("late", iccids(1, 1)[0], when=T0))
        assert closed.status == t.RECORD_STATUS_PERIOD_CLOSED
        await until_value(prometheus, "sum(rating_usage_records_total)", answered + 1)

        failures = []
        empty = []
        for title, expr in dashboard_queries():
            answer = await prometheus.query(expr)
            if answer["status"] != "success":
                failures.append((title, expr, answer.get("error")))
            elif not answer["data"]["result"]:
                empty.append((title, expr))
        assert failures == []
        assert empty == []  # every panel has data: ingestion, RPCs, SIMs, process, ...
        for selector in ("rating_build_info", f'rating_build_info{{job="{JOB}"}}'):
            assert (await prometheus.query(selector))["data"]["result"]  # the variables

        rules = await evaluated_rules(prometheus)
        assert sorted(rule["name"] for rule in rules) == sorted(alert_names())
        anchors = runbook_anchors()
        for rule in rules:
            answer = await prometheus.query(rule["query"])
            assert answer["status"] == "success", (rule["name"], answer)
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            annotations = rule["annotations"]
            assert annotations.keys() >= {"summary", "description", "runbook_url"}, rule
            page, _, anchor = annotations["runbook_url"].partition("#")
            assert page == "docs/operations.md" and anchor in anchors, rule["name"]
    finally:
        await asyncio.to_thread(prometheus.stop)
    assert prometheus.proc is not None and prometheus.proc.poll() is not None


async def evaluated_rules(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    """The alerting rules Prometheus loaded, once each has been evaluated."""
    rules: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE):
        while True:
            answer = await prometheus.api("rules", type="alert")
            assert answer["status"] == "success", answer
            rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
            if rules and all(rule.get("lastEvaluation", "0001")[:4] != "0001" for rule in rules):
                return rules
            await asyncio.sleep(0.2)  # polling Prometheus's API


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` of the unit, its ExecStart pointed at this interpreter
    (the example's path exists only where it is installed)."""
    analyze = require_tool("systemd-analyze", "apt-get install systemd", in_ci=False)
    text = UNIT.read_text()
    executable = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert executable is not None
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(executable.group(1), sys.executable))
    done = run(analyze, "verify", "--man=no", str(unit))
    assert done.returncode == 0, done.stdout + done.stderr
    problems = [line for line in done.stderr.splitlines() if UNIT.name in line]
    assert problems == []
