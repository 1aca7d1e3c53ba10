"""Every Prometheus metric of the service, on one injectable CollectorRegistry.

The grpc_server_* names match the ones SRE dashboards already use (go-grpc-prometheus);
domain metrics are prefixed `rating_`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        rpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", rpc_labels, registry=r
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*rpc_labels, "grpc_code"),
            registry=r,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            rpc_labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_caller_calls = Counter(
            "rating_rpc_calls_total", "RPCs by authenticated caller name.", ("caller",), registry=r
        )
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
        self.invoice_amount = Counter(
            "rating_invoice_amount_micros",
            "Settled invoice amounts in micros, by currency and line kind.",
            ("currency", "kind"),
            registry=r,
        )
