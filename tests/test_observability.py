"""Health, reflection and metrics: what an SRE and a client discover without docs."""

from __future__ import annotations

import asyncio
import gc
import urllib.request
from importlib import metadata

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rating.v1 import billing_service_pb2 as b
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import Application
from service.ops.metrics import _LATENCY_BUCKETS, RPC_LABELS, RpcMetrics
from tests.conftest import AppFactory
from tests.support import Stubs, data_plan
from tests.support.usage import account_with_sims, rate, record

SERVICES = {
    "rating.v1.CatalogService",
    "rating.v1.ProvisioningService",
    "rating.v1.RatingService",
    "rating.v1.BillingService",
    "rating.v1.ClockService",
}


async def test_health_is_serving_once_started(app_stubs: tuple[Application, Stubs]) -> None:
    _, stubs = app_stubs
    health = health_pb2_grpc.HealthStub(stubs.channel)
    for service in ("", "rating.v1.RatingService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_watch_streams_serving_then_not_serving_at_stop(
    app_stubs: tuple[Application, Stubs],
) -> None:
    app, stubs = app_stubs
    health = health_pb2_grpc.HealthStub(stubs.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service="rating.v1.RatingService"))
    first = await asyncio.wait_for(watch.read(), 10)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.ensure_future(app.stop())
    second = await asyncio.wait_for(watch.read(), 10)
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    await asyncio.wait_for(stopping, 30)


async def test_reflection_lists_the_five_services(stubs: Stubs) -> None:
    reflect = reflection_pb2_grpc.ServerReflectionStub(stubs.channel)
    call = reflect.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    reply = await call.read()
    await call.done_writing()
    names = {s.name for s in reply.list_services_response.service}
    assert SERVICES <= names
    assert "grpc.health.v1.Health" in names


async def test_grpc_metrics_count_calls_by_code(app_stubs: tuple[Application, Stubs]) -> None:
    app, stubs = app_stubs
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=data_plan("P")))
    await stubs.catalog.ListPlans(c.ListPlansRequest())
    await stubs.catalog.ListPlans(c.ListPlansRequest())
    for plan_id in ("missing", ""):
        try:
            await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id=plan_id))
        except grpc.aio.AioRpcError:
            pass
    value = app.metrics.registry.get_sample_value
    labels = {"grpc_type": "unary", "grpc_service": "rating.v1.CatalogService"}
    assert value("grpc_server_started_total", {**labels, "grpc_method": "ListPlans"}) == 2
    assert (
        value(
            "grpc_server_handled_total", {**labels, "grpc_method": "ListPlans", "grpc_code": "OK"}
        )
        == 2
    )
    get_plan = {**labels, "grpc_method": "GetPlan"}
    assert value("grpc_server_handled_total", {**get_plan, "grpc_code": "NOT_FOUND"}) == 1
    assert value("grpc_server_handled_total", {**get_plan, "grpc_code": "INVALID_ARGUMENT"}) == 1
    assert value("grpc_server_handling_seconds_count", get_plan) == 2


async def test_session_start_reads_are_counted_and_mapped_like_every_call(
    app_stubs: tuple[Application, Stubs],
) -> None:
    """AuthorizeSession and GetSimStatus are plain functions the interceptor calls without
    a coroutine of their own: their answers, errors, series and callers are those of any
    call."""
    app, stubs = app_stubs
    sim = (await account_with_sims(stubs, 1))[0]
    unknown = "8999000000000000000"
    value = app.metrics.registry.get_sample_value
    anonymous = {"caller": "anonymous"}
    callers_before = value("rating_rpc_calls_total", anonymous) or 0.0
    status = await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=sim))
    assert status.status.iccid == sim and status.status.state == t.SIM_STATE_ACTIVE
    denied = await stubs.rating.AuthorizeSession(
        r.AuthorizeSessionRequest(iccid=unknown, usage_type=t.USAGE_TYPE_DATA, requested_quantity=1)
    )
    assert denied.deny_reason == r.DENY_REASON_UNKNOWN_SIM
    failures = [
        (stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=unknown)), "NOT_FOUND"),
        (stubs.rating.GetSimStatus(r.GetSimStatusRequest()), "INVALID_ARGUMENT"),
        (stubs.rating.AuthorizeSession(r.AuthorizeSessionRequest(iccid=sim)), "INVALID_ARGUMENT"),
    ]
    for call, code in failures:
        try:
            await call
            raise AssertionError(f"{code} expected")
        except grpc.aio.AioRpcError as err:
            assert err.code().name == code, err
    labels = {"grpc_type": "unary", "grpc_service": "rating.v1.RatingService"}
    status_labels = {**labels, "grpc_method": "GetSimStatus"}
    authorize = {**labels, "grpc_method": "AuthorizeSession"}
    assert value("grpc_server_started_total", status_labels) == 3
    assert value("grpc_server_handled_total", {**status_labels, "grpc_code": "OK"}) == 1
    assert value("grpc_server_handled_total", {**status_labels, "grpc_code": "NOT_FOUND"}) == 1
    assert (
        value("grpc_server_handled_total", {**status_labels, "grpc_code": "INVALID_ARGUMENT"}) == 1
    )
    assert value("grpc_server_handling_seconds_count", status_labels) == 3
    assert value("grpc_server_started_total", authorize) == 2
    assert value("grpc_server_handled_total", {**authorize, "grpc_code": "OK"}) == 1
    assert value("grpc_server_handled_total", {**authorize, "grpc_code": "INVALID_ARGUMENT"}) == 1
    assert value("rating_rpc_calls_total", anonymous) == callers_before + 5


def test_rpc_series_are_exposed_as_prometheus_client_would() -> None:
    """The per-call RPC series are counted in plain numbers (RpcMetrics): their exposition
    is the one prometheus_client's Counter and Histogram give for the same calls."""
    ours, reference = CollectorRegistry(), CollectorRegistry()
    rpc = RpcMetrics()
    ours.register(rpc)
    started = Counter(
        "grpc_server_started_total", "RPCs started on the server.", RPC_LABELS, registry=reference
    )
    handled = Counter(
        "grpc_server_handled_total",
        "RPCs completed on the server, regardless of success or failure.",
        (*RPC_LABELS, "grpc_code"),
        registry=reference,
    )
    seconds = Histogram(
        "grpc_server_handling_seconds",
        "Response latency of RPCs handled by the server.",
        RPC_LABELS,
        buckets=_LATENCY_BUCKETS,
        registry=reference,
    )
    callers = Counter(
        "rating_rpc_calls_total",
        "RPCs by authenticated caller name.",
        ("caller",),
        registry=reference,
    )
    calls = [
        (("unary", "rating.v1.RatingService", "AuthorizeSession"), "OK", 0.0004, "crm"),
        (("unary", "rating.v1.RatingService", "AuthorizeSession"), "OK", 0.0005, "crm"),
        (("unary", "rating.v1.RatingService", "AuthorizeSession"), "NOT_FOUND", 0.003, "oss"),
        (("unary", "rating.v1.CatalogService", "GetPlan"), "INTERNAL", 11.0, "crm"),
        (("bidi_stream", "rating.v1.RatingService", "StreamUsage"), "OK", 2.5, "mediation"),
    ]
    for labels, code, elapsed, caller in calls:
        counts = rpc.method(*labels)
        counts.started += 1
        counts.finished(code, elapsed)
        rpc.count_caller(caller)
        started.labels(*labels).inc()
        handled.labels(*labels, code).inc()
        seconds.labels(*labels).observe(elapsed)
        callers.labels(caller).inc()
    rpc.method("unary", "rating.v1.ClockService", "GetTime")  # started, not finished yet
    started.labels("unary", "rating.v1.ClockService", "GetTime")
    seconds.labels("unary", "rating.v1.ClockService", "GetTime")

    def exposition(registry: CollectorRegistry) -> list[str]:
        return sorted(generate_latest(registry).decode().splitlines())

    assert exposition(ours) == exposition(reference)


async def test_metrics_endpoint_serves_grpc_series(start_app: AppFactory) -> None:
    app, stubs = await start_app(metrics_addr="127.0.0.1:0")
    await stubs.catalog.ListPlans(c.ListPlansRequest())
    try:
        await stubs.billing.ListInvoices(b.ListInvoicesRequest(account_id="nobody"))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() != grpc.StatusCode.UNKNOWN
    url = f"http://127.0.0.1:{app.metrics_port}/metrics"
    body = await __import__("asyncio").to_thread(
        lambda: urllib.request.urlopen(url).read().decode()
    )
    assert (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="ListPlans",'
        'grpc_service="rating.v1.CatalogService",grpc_type="unary"} 1.0' in body
    )
    assert "grpc_server_started_total" in body
    assert "grpc_server_handling_seconds_bucket" in body


async def test_metrics_an_sre_expects_from_any_process(start_app: AppFactory) -> None:
    """Process, GC, platform and build info, cache and pool sizes; no `_created` series."""
    app, stubs = await start_app(metrics_addr="127.0.0.1:0")
    sims = await account_with_sims(stubs, 3)
    [result] = await rate(stubs, record("r1", sims[0]))
    assert result.status == t.RECORD_STATUS_RATED
    samples = await scrape(app.metrics_port)

    assert samples["process_resident_memory_bytes", ()] > 10 * 2**20
    assert samples["process_cpu_seconds_total", ()] > 0
    assert samples["process_open_fds", ()] > 0
    assert samples["python_gc_collections_total", (("generation", "0"),)] >= 0
    assert any(name == "python_info" for name, _ in samples)
    assert samples["rating_build_info", (("version", metadata.version("simrating")),)] == 1
    entries = {
        dict(labels)["kind"]: value
        for (name, labels), value in samples.items()
        if name == "rating_cache_entries"
    }
    assert entries == {
        "plans": 1,
        "accounts": 1,
        "sims": 3,
        "sim_periods": 1,  # one SIM has usage, in one period
        "settled_periods": 0,
    }
    pool = {
        dict(labels)["state"]: value
        for (name, labels), value in samples.items()
        if name == "rating_db_pool_connections"
    }
    assert pool.keys() == {"idle", "in_use"} and 2 <= pool["idle"] + pool["in_use"] <= 10
    assert samples["rating_db_pool_max_connections", ()] == 10
    assert samples["rating_persist_queue_capacity", ()] == app.settings.persist_queue_batches
    assert samples["rating_settlement_overdue_periods", ()] == 0
    assert [name for name, _ in samples if name.endswith("_created")] == []
    assert samples["rating_usage_records_total", (("status", "RATED"),)] == 1


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it: {(sample name, sorted labels): value}."""
    url = f"http://127.0.0.1:{port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def test_the_loaded_cache_is_frozen_out_of_the_garbage_collector(
    start_app: AppFactory,
) -> None:
    """After a start that loads SIMs from PostgreSQL, the cache's objects are in the
    permanent generation (gc.freeze): no collection traverses them again. The collector,
    off while the cache loads, is on again; SIMs provisioned later are collected as
    usual."""
    first, stubs = await start_app()
    [loaded] = await account_with_sims(stubs, 1)
    await first.stop()
    app, stubs = await start_app()
    assert gc.isenabled()
    [provisioned] = await account_with_sims(stubs, 1, start=2)
    collected = {id(o) for o in gc.get_objects()}  # every generation but the permanent one
    assert id(app.cache.sims[loaded]) not in collected
    assert id(app.cache.sims[provisioned]) in collected
