"""Wiring: database, cache, workers and the gRPC server, started and stopped in order.
Each step is a call into the module that owns it; nothing here loads, counts or stores.

Start: database (embedded if no URL) -> migrations -> cache load (`recovery.load_cache`:
the last usage checkpoint and a replay of the records after it) -> the persister and the
workers -> gRPC server -> health SERVING.

Stop, all within `shutdown_grace_s`: health NOT_SERVING and streams stop reading ->
server.stop(grace): no new calls; in-flight calls finish while the persister keeps
committing, so every batch already received (a unary call's, or one a stream read) is
committed and acknowledged, and each stream then ends UNAVAILABLE -> the persister
commits what is still queued and counts its last group, then returns -> the other
workers are cancelled -> a last usage checkpoint (`CheckpointWorker.write_last`) -> pool
closed with a deadline. What was not committed by then was not acknowledged: the client
resends it (record ids make that safe).

A worker that crashes stops the service the same way; its cause is logged once and the
process exits with EXIT_WORKER_CRASHED.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any, cast

import asyncpg
import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import start_http_server

from rating.v1 import (
    billing_service_pb2,
    billing_service_pb2_grpc,
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    clock_service_pb2,
    clock_service_pb2_grpc,
    provisioning_service_pb2,
    provisioning_service_pb2_grpc,
    rating_service_pb2,
    rating_service_pb2_grpc,
)
from service import recovery
from service.api.api_keys import Authenticator
from service.api.billing import BillingServicer
from service.api.catalog import CatalogServicer
from service.api.clock import ClockServicer
from service.api.interceptor import ObservabilityInterceptor, ObservedHandlers
from service.api.provisioning import ProvisioningServicer
from service.api.rating import RatingServicer
from service.domain.model import Sim
from service.ingestion.engine import UsageEngine
from service.ingestion.persister import Persister
from service.ops.clock import Clock, SystemClock, TestClock
from service.ops.metrics import Metrics
from service.ops.runtime import loading_heap
from service.ops.settings import Settings
from service.state.cache import StateCache
from service.state.gauges import SimGauges, watch_cache_sizes
from service.state.lock import StateLock
from service.storage import database
from service.usecases.billing import Billing
from service.usecases.catalog import Catalog
from service.usecases.provisioning import Provisioning
from workers.activation import ActivationWorker
from workers.checkpoint import CheckpointWorker
from workers.settlement import SettlementWorker

log = structlog.get_logger("app")

EXIT_WORKER_CRASHED = 70  # EX_SOFTWARE (sysexits.h): a supervisor restarts on failure

SERVICE_NAMES = (
    catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    provisioning_service_pb2.DESCRIPTOR.services_by_name["ProvisioningService"].full_name,
    rating_service_pb2.DESCRIPTOR.services_by_name["RatingService"].full_name,
    billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
    clock_service_pb2.DESCRIPTOR.services_by_name["ClockService"].full_name,
)


class _ObservedServices:
    """What the generated `add_*Servicer_to_server` functions use of a server: the
    services' generic handlers are gathered behind one generic handler of the server,
    with every method wrapped by the observability interceptor (authentication, metrics,
    log line, error mapping), and no method is registered one by one.

    Why not `grpc.aio.server(interceptors=...)`: the interceptor pipeline runs coroutines
    at every call just to find the handler. And for every method registered with
    `add_registered_method_handlers`, grpc.aio keeps a pending request and waits on all of
    them (`asyncio.wait`) each time it accepts a call: with the ~20 methods of our
    services, every call paid for ~20 futures. And grpc.aio asks a server's generic
    handlers in turn: with one per service, a RatingService call first asked (and missed)
    CatalogService's and ProvisioningService's. See docs/performance.md.
    """

    def __init__(self, server: grpc.aio.Server, observability: ObservabilityInterceptor) -> None:
        self.observed = observability.observed()
        server.add_generic_rpc_handlers([self.observed])

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        for handler in handlers:
            self.observed.add(handler)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """Not registered: the generic handler added with them serves these methods."""


class Application:
    """One running service instance. `start()` then `wait()`; `stop()` from anywhere."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.clock: Clock = (
            TestClock(settings.clock_start) if settings.test_clock else SystemClock()
        )
        self.cache = StateCache()
        self.auth = Authenticator.from_file(settings.api_keys_file)
        self.health = health_aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._pool: asyncpg.Pool | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_server: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._persister_task: asyncio.Task[None] | None = None
        self._rating: RatingServicer | None = None
        # The one generic handler of the gRPC server: every method, wrapped by the
        # interceptor (bench.cold calls its handlers without gRPC).
        self.handlers: ObservedHandlers | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self.crashed: str | None = None  # the first worker that crashed

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "start() first"
        return self._pool

    async def start(self) -> None:
        url = self.settings.database_url or await database.embedded_url(self.settings.data_dir)
        self._pool = await database.create_pool(url)
        self._watch_pool(self._pool)
        async with self._pool.acquire() as conn:
            await database.migrate(conn)
        # One lock orders every change of SIM state: catalog and provisioning writes,
        # group commits and activations never interleave between check and commit.
        state_lock = self.state_lock = StateLock()
        self.engine = UsageEngine(
            self.cache, self.clock, on_correction_rejected=self._correction_rejected
        )
        with loading_heap():
            committed_seq = await recovery.load_cache(
                self.pool, self.cache, self.engine, self.metrics
            )
        self.persister = Persister(
            self.pool,
            self.engine,
            self.clock,
            self.metrics,
            state_lock,
            max_queued_batches=self.settings.persist_queue_batches,
            max_records_per_commit=self.settings.persist_max_records_per_commit,
            committed_seq=committed_seq,
        )
        # Every other holder of the state lock counts what the persister committed but has
        # not counted yet, right after entering (see StateLock).
        count_committed = self.persister.count_committed
        catalog = Catalog(self.pool, self.cache, self.clock, state_lock, count_committed)
        provisioning = Provisioning(self.pool, self.cache, self.clock, state_lock, count_committed)
        self.activation = ActivationWorker(
            self.pool,
            self.cache,
            self.engine,
            self.clock,
            self.metrics,
            state_lock,
            count_committed,
        )
        for sim in self.cache.sims.values():
            self.activation.track(sim)
        self.cache.sim_listeners.append(self._track_deadline)
        self.cache.sim_listeners.append(SimGauges(self.cache, self.metrics).sim_changed)
        watch_cache_sizes(self.cache, self.metrics)
        await self.activation.run_once(self.clock.now())  # deadlines passed while stopped
        self.metrics.persist_queue_capacity.set(self.settings.persist_queue_batches)
        self._persister_task = self.spawn("persister", self.persister.run())
        self.checkpoint = CheckpointWorker(
            self.pool,
            self.cache,
            self.persister,
            state_lock,
            self.metrics,
            interval_s=self.settings.checkpoint_interval_s,
        )
        self.spawn("checkpoint", self.checkpoint.run())
        if isinstance(self.clock, TestClock):
            self.clock.subscribe(self.activation.run_once)
        else:
            self.spawn("activation", self.activation.run())
        self.billing = Billing(
            self.pool, self.cache, self.clock, self.metrics, state_lock, count_committed
        )
        # Settlement after activation: on a test clock every advance runs activations first.
        self.settlement = SettlementWorker(
            self.billing,
            self.cache,
            self.clock,
            self.settings.late_usage_window,
            self.metrics,
            checkpoint=self.checkpoint.run_once,
        )
        if isinstance(self.clock, TestClock):
            self.clock.subscribe(self.settlement.run_once)
        else:
            self.spawn("settlement", self.settlement.run())
        await self._start_grpc(catalog, provisioning)
        self._start_metrics_http()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            grpc_port=self.port,
            metrics_port=self.metrics_port,
            sims=len(self.cache.sims),
            clock="test" if self.settings.test_clock else "system",
        )

    def _watch_pool(self, pool: asyncpg.Pool) -> None:
        """The pool gauges, read at scrape time (asyncpg counts them; nothing per call)."""
        connections = self.metrics.db_pool_connections
        connections.labels("idle").set_function(pool.get_idle_size)
        connections.labels("in_use").set_function(
            lambda: max(0, pool.get_size() - pool.get_idle_size())
        )
        self.metrics.db_pool_max_connections.set(pool.get_max_size())

    def _correction_rejected(self, sim: Sim, start: datetime) -> None:
        self.metrics.activation_corrections_rejected.inc()
        log.warning(
            "billing start correction rejected: it reaches a settled period",
            iccid=sim.iccid,
            billing_started_at=sim.billing_started_at,
            rejected_start=start,
        )

    def _track_deadline(self, previous: Sim | None, sim: Sim) -> None:
        if previous is None or previous.provisioned_at != sim.provisioned_at:
            self.activation.track(sim)

    async def _start_grpc(self, catalog: Catalog, provisioning: Provisioning) -> None:
        if self.auth.open:
            log.warning(
                "no RATING_API_KEYS_FILE: every caller may call every RPC (development only)"
            )
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 4 * limit),
            ],
        )
        observability = ObservabilityInterceptor(
            self.metrics, self.auth, self.settings.rpc_log_reads_every
        )
        observed = _ObservedServices(server, observability)
        self.handlers = observed.observed
        services = cast(grpc.aio.Server, observed)
        catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(catalog, self.cache), services
        )
        provisioning_service_pb2_grpc.add_ProvisioningServiceServicer_to_server(
            ProvisioningServicer(provisioning, self.cache, self.clock), services
        )
        self._rating = RatingServicer(
            self.cache, self.clock, self.persister, self.settings.max_streams
        )
        rating_service_pb2_grpc.add_RatingServiceServicer_to_server(self._rating, services)
        billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
            BillingServicer(self.billing), services
        )
        clock_service_pb2_grpc.add_ClockServiceServicer_to_server(
            ClockServicer(self.clock), services
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, services)
        # What reflection.enable_server_reflection adds to a grpc.aio server.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection_aio.ReflectionServicer(
                [
                    *SERVICE_NAMES,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ]
            ),
            services,
        )
        self.port = self._listen(server)
        await server.start()
        self._server = server

    @property
    def rating(self) -> RatingServicer | None:
        """The RatingService servicer once started (bench.cold calls its methods)."""
        return self._rating

    def _listen(self, server: grpc.aio.Server) -> int:
        settings = self.settings
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            host = settings.grpc_addr.rpartition(":")[0].strip("[]")
            if host not in ("127.0.0.1", "localhost", "::1"):
                log.warning(
                    "listening without TLS on a non-loopback address",
                    grpc_addr=settings.grpc_addr,
                )
            port: int = server.add_insecure_port(settings.grpc_addr)
            return port
        client_ca = settings.tls_client_ca_file
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
            root_certificates=client_ca.read_bytes() if client_ca else None,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(settings.grpc_addr, credentials)
        log.info("TLS enabled", mutual=client_ca is not None)
        return port

    def _start_metrics_http(self) -> None:
        if self.settings.metrics_addr is None:
            return
        host, _, port = self.settings.metrics_addr.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.metrics.registry
        )
        self._metrics_server = server
        self.metrics_port = server.server_port

    def spawn(self, name: str, work: Awaitable[None]) -> asyncio.Task[None]:
        """Track a worker task; if it crashes, the service stops loudly."""

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                # Logged here, once; the task then ends normally, so neither stop() nor
                # asyncio reports the exception again. The exit status tells the supervisor.
                log.exception("worker crashed; stopping the service", worker=name)
                self.crashed = self.crashed or name
                self._stopped.set()

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.append(task)
        return task

    @property
    def exit_status(self) -> int:
        """0 after a requested stop; EXIT_WORKER_CRASHED once a worker crashed."""
        return 0 if self.crashed is None else EXIT_WORKER_CRASHED

    async def wait(self) -> None:
        """Until stop() is requested or a worker crashes."""
        await self._stopped.wait()

    def request_stop(self) -> None:
        self._stopped.set()

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._stopped.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        if self._rating is not None:
            self._rating.stop_reading()
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            # In-flight calls finish (their batches are committed by the running persister);
            # those still running at the deadline are cancelled, unacknowledged.
            await self._server.stop(self.settings.shutdown_grace_s)
        if self._persister_task is not None:
            self.persister.stop()
            # Commits what is still queued and counts the last group, within the grace.
            await asyncio.wait({self._persister_task}, timeout=max(0.0, deadline - loop.time()))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._persister_task is not None:
            # Its own budget, beyond the grace: at 1,000,000 SIMs with usage it writes
            # 1,000,000 rows (~12 s); cut short, the next start replays those records.
            await self.checkpoint.write_last(self.settings.shutdown_checkpoint_s)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 10)
            except TimeoutError:
                self._pool.terminate()
        log.info("stopped", exit_status=self.exit_status)
