"""Transport security and caller roles through real channels: TLS, mutual TLS, API keys."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import rating_service_pb2 as r
from service.api.api_keys import key_hash
from service.app import SERVICE_NAMES
from tests.conftest import AppFactory
from tests.support import Stubs
from tests.support.certs import issue, make_ca, write
from tests.test_catalog import expect_error

KEYS = {"oss": "k-oss", "mediation": "k-mediation", "billing": "k-billing", "admin": "k-admin"}

# The role matrix of the contract, written out independently of service.api.api_keys.ROLES.
ALLOWED = {
    "oss": {
        "CatalogService/*",
        "ProvisioningService/*",
        "RatingService/AuthorizeSession",
        "RatingService/GetSimStatus",
    },
    "mediation": {
        "RatingService/RateUsage",
        "RatingService/StreamUsage",
        "RatingService/AuthorizeSession",
    },
    "billing": {
        "BillingService/*",
        "CatalogService/GetPlan",
        "CatalogService/ListPlans",
        "CatalogService/GetAccount",
        "RatingService/GetSimStatus",
    },
    "admin": {"*"},
}
REFUSALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def allowed(role: str, service: str, method: str) -> bool:
    short = service.removeprefix("rating.v1.")
    rules = ALLOWED[role]
    return "*" in rules or f"{short}/*" in rules or f"{short}/{method}" in rules


def every_rpc() -> list[tuple[str, str, bool]]:
    pool = descriptor_pool.Default()
    rpcs = []
    for service_name in SERVICE_NAMES:
        for method in pool.FindServiceByName(service_name).methods:
            rpcs.append((service_name, method.name, method.client_streaming))
    return rpcs


def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {"name": f"{role}-caller", "sha256": key_hash(key), "roles": [role]}
                    for role, key in KEYS.items()
                ]
            }
        )
    )
    return path


async def call(
    channel: grpc.aio.Channel, service: str, method: str, streaming: bool, key: str | None
) -> grpc.StatusCode:
    pool = descriptor_pool.Default()
    descriptor = pool.FindServiceByName(service).methods_by_name[method]
    request_type = message_factory.GetMessageClass(descriptor.input_type)
    response_type = message_factory.GetMessageClass(descriptor.output_type)
    path = f"/{service}/{method}"
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    try:
        if streaming:
            stream = channel.stream_stream(
                path,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            async for _ in stream(iter([request_type()]), metadata=metadata, timeout=10):
                pass
        else:
            unary = channel.unary_unary(
                path,
                request_serializer=request_type.SerializeToString,
                response_deserializer=response_type.FromString,
            )
            await unary(request_type(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_role_matrix(start_app: AppFactory, tmp_path: Path) -> None:
    app, stubs = await start_app(api_keys_file=keys_file(tmp_path))
    rpcs = every_rpc()
    assert len(rpcs) == 19
    for service, method, streaming in rpcs:
        for key in (None, "not-a-key"):
            code = await call(stubs.channel, service, method, streaming, key)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (service, method, key)
        for role, key in KEYS.items():
            code = await call(stubs.channel, service, method, streaming, key)
            if allowed(role, service, method):
                assert code not in REFUSALS | {grpc.StatusCode.UNKNOWN}, (
                    role,
                    service,
                    method,
                    code,
                )
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, (role, service, method, code)
    counted = app.metrics.registry.get_sample_value
    assert counted("rating_rpc_calls_total", {"caller": "admin-caller"}) == len(rpcs)
    health = health_pb2_grpc.HealthStub(stubs.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == 1  # open, no key


async def test_keys_never_reach_logs_or_metrics(
    start_app: AppFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, stubs = await start_app(api_keys_file=keys_file(tmp_path), log_format="json")
    for key in (KEYS["oss"], "wrong-key-123"):
        await call(stubs.channel, "rating.v1.CatalogService", "ListPlans", False, key)
    from prometheus_client import generate_latest

    exposed = generate_latest(app.metrics.registry).decode()
    logged = capsys.readouterr()
    for secret in (KEYS["oss"], "wrong-key-123", key_hash(KEYS["oss"])):
        assert secret not in exposed
        assert secret not in logged.out + logged.err
    assert "oss-caller" in exposed


async def test_bad_keys_file_is_refused(start_app: AppFactory, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"name": "x", "sha256": "abc", "roles": ["oss"]}]}))
    from service.domain.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="sha256"):
        await start_app(api_keys_file=path)


async def test_tls_and_mutual_tls(start_app: AppFactory, tmp_path: Path) -> None:
    ca_pem, ca_key, ca_cert = make_ca()
    server_cert, server_key = write(
        tmp_path, "server", issue(ca_key, ca_cert, "localhost", server=True)
    )
    client = issue(ca_key, ca_cert, "mediation-client", server=False)
    (tmp_path / "ca.crt").write_bytes(ca_pem.cert)

    app, _ = await start_app(tls_cert_file=server_cert, tls_key_file=server_key)
    trusting = grpc.ssl_channel_credentials(root_certificates=ca_pem.cert)
    async with grpc.aio.secure_channel(f"localhost:{app.port}", trusting) as channel:
        await Stubs(channel).catalog.ListPlans(c.ListPlansRequest(), timeout=10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await Stubs(plain).catalog.ListPlans(c.ListPlansRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    mutual, _ = await start_app(
        tls_cert_file=server_cert, tls_key_file=server_key, tls_client_ca_file=tmp_path / "ca.crt"
    )
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca_pem.cert, private_key=client.key, certificate_chain=client.cert
    )
    async with grpc.aio.secure_channel(f"localhost:{mutual.port}", with_cert) as channel:
        await Stubs(channel).catalog.ListPlans(c.ListPlansRequest(), timeout=10)
    async with grpc.aio.secure_channel(f"localhost:{mutual.port}", trusting) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await Stubs(channel).catalog.ListPlans(c.ListPlansRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    _, other_key, other_cert = make_ca("some other CA")
    stranger = issue(other_key, other_cert, "stranger", server=False)
    foreign = grpc.ssl_channel_credentials(
        root_certificates=ca_pem.cert, private_key=stranger.key, certificate_chain=stranger.cert
    )
    async with grpc.aio.secure_channel(f"localhost:{mutual.port}", foreign) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await Stubs(channel).catalog.ListPlans(c.ListPlansRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_too_many_streams_is_resource_exhausted(start_app: AppFactory) -> None:
    _, stubs = await start_app(max_streams=2)
    held = [stubs.rating.StreamUsage() for _ in range(2)]
    for n, stream in enumerate(held):
        await stream.write(r.StreamUsageRequest(batch_id=str(n)))
        assert (await stream.read()).batch_id == str(n)  # open, acknowledged and counted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stubs.rating.StreamUsage(iter([r.StreamUsageRequest(batch_id="x")])):
            pass
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 concurrent" in (err.value.details() or "")
    await held[0].done_writing()
    assert await held[0].code() == grpc.StatusCode.OK
    async for _ in stubs.rating.StreamUsage(iter([r.StreamUsageRequest(batch_id="y")])):
        pass  # one slot is free again
    await held[1].done_writing()


async def test_oversized_message_is_resource_exhausted(start_app: AppFactory) -> None:
    _, stubs = await start_app(max_message_bytes=10_000)
    await expect_error(
        stubs.catalog.GetPlan(c.GetPlanRequest(plan_id="x" * 20_000)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    )
