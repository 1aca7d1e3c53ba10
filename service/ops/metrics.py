"""Every Prometheus metric of the service, on one injectable CollectorRegistry.

The grpc_server_* names match the ones SRE dashboards already use (go-grpc-prometheus);
domain metrics are prefixed `rating_`. Each registry also carries the process metrics any
exporter has (`process_*`, `python_gc_*`, `python_info`). Gauges of sizes (cache, pool)
are read at scrape time from the objects they measure, so they cost nothing per call;
the wiring attaches them (`Gauge.set_function`), as only it knows those objects.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from importlib import metadata

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# prometheus_client adds a `<name>_created` series (the creation time) to every counter and
# histogram unless told not to; that doubles the series and no dashboard reads them. The
# switch is process-wide and read at every collection, so setting it here, when the module
# is imported, covers every registry of the process.
disable_created_metrics()  # type: ignore[no-untyped-call]

DISTRIBUTION = "simrating"


def build_version() -> str:
    """The installed version of the `simrating` distribution ("unknown" if not installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The `le` label of each latency bucket, as prometheus_client writes it ("0.0005", "1.0").
_LATENCY_LE = (*(floatToGoString(b) for b in _LATENCY_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]
_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000)


RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class RpcCounts:
    """One method's share of the grpc_server_* series, as plain numbers.

    Written only from the event loop's thread (the interceptor), read by the scrape
    (`RpcMetrics.collect`, the /metrics thread). A prometheus_client child costs a lock, a
    validity check and a method call per update, several µs per call over the four series
    (docs/performance.md); here an update is an attribute or list increment."""

    __slots__ = ("buckets", "handled", "labels", "seconds_sum", "started")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = 0
        self.handled: dict[str, int] = {}  # by grpc_code name
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)  # not cumulative; the last is +Inf
        self.seconds_sum = 0.0

    def finished(self, code: str, seconds: float) -> None:
        """A call ended with `code` (a grpc_code name) after `seconds`."""
        handled = self.handled
        handled[code] = handled.get(code, 0) + 1
        # bisect_left: the first bound >= seconds, Prometheus's `le`
        self.buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self.seconds_sum += seconds


class RpcMetrics(Collector):
    """The per-call RPC series, exported at scrape time from `RpcCounts` (one per method)
    and a count per authenticated caller name: the same names, types, labels and buckets
    as prometheus_client's Counter and Histogram give (a test compares them)."""

    def __init__(self) -> None:
        self._methods: dict[tuple[str, str, str], RpcCounts] = {}
        self.callers: dict[str, int] = {}  # rating_rpc_calls_total, by caller name

    def method(self, grpc_type: str, service: str, method: str) -> RpcCounts:
        """The counts of one method (the same object for the same labels)."""
        labels = (grpc_type, service, method)
        counts = self._methods.get(labels)
        if counts is None:
            counts = self._methods[labels] = RpcCounts(labels)
        return counts

    def count_caller(self, name: str) -> None:
        callers = self.callers
        callers[name] = callers.get(name, 0) + 1

    def collect(self) -> Iterator[Metric]:
        # Copies first: dict(...) and list(...) of str/int items run without releasing the
        # GIL, so the loop thread cannot change a dict while it is read.
        methods = list(self._methods.values())
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=RPC_LABELS
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            labels=(*RPC_LABELS, "grpc_code"),
        )
        seconds = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            labels=RPC_LABELS,
        )
        for counts in methods:
            started.add_metric(counts.labels, counts.started)
            for code, count in dict(counts.handled).items():
                handled.add_metric((*counts.labels, code), count)
            buckets, total, cumulative = list(counts.buckets), counts.seconds_sum, []
            running = 0
            for bound, count in zip(_LATENCY_LE, buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            seconds.add_metric(counts.labels, cumulative, total)
        callers = CounterMetricFamily(
            "rating_rpc_calls", "RPCs by authenticated caller name.", labels=("caller",)
        )
        for name, count in dict(self.callers).items():
            callers.add_metric((name,), count)
        yield from (started, handled, seconds, callers)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # The process collectors are stateless: the default registry's instances serve here.
        for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
            r.register(collector)
        Info("rating_build", "The running service's version.", registry=r).info(
            {"version": build_version()}
        )
        # grpc_server_started_total, grpc_server_handled_total, grpc_server_handling_seconds
        # and rating_rpc_calls_total: counted per call in plain numbers, exported at scrape.
        self.rpc = RpcMetrics()
        r.register(self.rpc)
        self.internal_errors = Counter(
            "rating_internal_errors",
            "Unexpected failures (bugs, violated database constraints), by operation: an RPC"
            " method answered INTERNAL, or a worker (persister, activation).",
            ("operation",),
            registry=r,
        )
        # Usage ingestion.
        self.usage_records = Counter(
            "rating_usage_records", "Usage records answered, by status.", ("status",), registry=r
        )
        self.usage_quantity = Counter(
            "rating_usage_quantity",
            "Raw quantity of accepted usage records.",
            ("usage_type",),
            registry=r,
        )
        self.persist_batch_seconds = Histogram(
            "rating_persist_batch_seconds",
            "Time from taking one group of usage batches to answering its callers"
            " (commit and counting; a group is counted while the next one is written).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.persist_batch_records = Histogram(
            "rating_persist_batch_records",
            "Records per group commit.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.persist_queue_depth = Gauge(
            "rating_persist_queue_depth", "Batches waiting for the persister.", registry=r
        )
        self.persist_queue_capacity = Gauge(
            "rating_persist_queue_capacity",
            "Batches the persister queue holds before callers get RESOURCE_EXHAUSTED.",
            registry=r,
        )
        self.persist_failures = Counter(
            "rating_persist_failures", "Group commits that failed (database errors).", registry=r
        )
        # Activation.
        self.activations = Counter(
            "rating_activations", "SIMs whose billing started, by reason.", ("reason",), registry=r
        )
        self.sims = Gauge("rating_sims", "SIMs by lifecycle state.", ("state",), registry=r)
        self.activation_pending = Gauge(
            "rating_activation_pending", "FIRST_USE SIMs waiting for first use.", registry=r
        )
        self.activation_corrections_rejected = Counter(
            "rating_activation_corrections_rejected",
            "Billing start corrections not applied because they reach into a settled period.",
            registry=r,
        )
        # Settlement.
        self.settlements = Counter(
            "rating_settlements", "Account-period settlements, by result.", ("result",), registry=r
        )
        self.settlement_seconds = Histogram(
            "rating_settlement_seconds",
            "Time to settle one account-period.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.settlement_mismatches = Counter(
            "rating_settlement_mismatches",
            "Settlements whose facts in memory differed from those read from PostgreSQL (a"
            " bug; the invoice is computed from PostgreSQL's).",
            registry=r,
        )
        self.invoice_amount = Counter(
            "rating_invoice_amount_micros",
            "Settled invoice amounts in micros, by currency and line kind.",
            ("currency", "kind"),
            registry=r,
        )
        self.settlement_overdue = Gauge(
            "rating_settlement_overdue_periods",
            "Account-periods past their late-usage window and still unsettled, as of the"
            " settlement worker's last run.",
            registry=r,
        )
        self.cache_loaded_sim_periods = Gauge(
            "rating_cache_loaded_sim_periods",
            "SIM-periods of open account-periods loaded from PostgreSQL at start.",
            registry=r,
        )
        self.cache_replayed_records = Gauge(
            "rating_cache_replayed_records",
            "Usage records committed after the last checkpoint, replayed at start.",
            registry=r,
        )
        self.checkpoints = Counter(
            "rating_checkpoints_total",
            "Usage checkpoints by result (written, skipped: records in doubt, failed).",
            ("result",),
            registry=r,
        )
        self.checkpoint_rows = Counter(
            "rating_checkpoint_rows_total",
            "Usage aggregate rows (period, SIM, usage type) written by checkpoints.",
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "rating_checkpoint_seconds",
            "Time to take and write one usage checkpoint.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.checkpoint_watermark = Gauge(
            "rating_checkpoint_watermark",
            "Commit sequence number of the last usage checkpoint written.",
            registry=r,
        )
        # Sizes, read at scrape time (set_function, attached by the wiring).
        self.cache_entries = Gauge(
            "rating_cache_entries",
            "Objects held in the in-memory state cache, by kind.",
            ("kind",),
            registry=r,
        )
        self.db_pool_connections = Gauge(
            "rating_db_pool_connections",
            "Open connections of the PostgreSQL pool, by state (idle, in_use).",
            ("state",),
            registry=r,
        )
        self.db_pool_max_connections = Gauge(
            "rating_db_pool_max_connections",
            "Connections the PostgreSQL pool may open.",
            registry=r,
        )
