"""Typed, frozen settings. Only the entry point builds them (from environment and flags)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.domain.errors import InvalidArgument

# name, default, help — each is read from the environment and may be overridden by the flag
# of the same name (RATING_GRPC_ADDR -> --grpc-addr).
_SETTINGS: tuple[tuple[str, str | None, str], ...] = (
    ("RATING_GRPC_ADDR", "127.0.0.1:50051", "gRPC listen address"),
    ("RATING_METRICS_ADDR", "127.0.0.1:9464", "Prometheus /metrics listen address"),
    ("RATING_DATABASE_URL", None, "postgresql:// URL of an external server (unset: embedded)"),
    ("RATING_DATA_DIR", ".rating-data", "embedded PostgreSQL data directory"),
    ("RATING_CLOCK", "system", "'system', 'test' or 'test:2026-01-01T00:00:00Z'"),
    ("RATING_LATE_USAGE_WINDOW_S", "86400", "seconds after period end before auto-settlement"),
    ("RATING_LOG_FORMAT", "json", "'json' or 'console'"),
    (
        "RATING_RPC_LOG_READS",
        "100",
        "log one in N successful read calls (1: every call, 0: none); writes and failures always",
    ),
    ("RATING_TLS_CERT_FILE", None, "PEM certificate chain: serve TLS (with the key file)"),
    ("RATING_TLS_KEY_FILE", None, "PEM private key of the TLS certificate"),
    ("RATING_TLS_CLIENT_CA_FILE", None, "PEM CA bundle: require client certificates (mTLS)"),
    ("RATING_API_KEYS_FILE", None, "JSON file of API key hashes and roles (unset: open)"),
    ("RATING_MAX_MESSAGE_BYTES", "8388608", "largest request message accepted"),
    ("RATING_MAX_STREAMS", "1000", "concurrent StreamUsage streams accepted"),
    (
        "RATING_RETENTION_PERIODS",
        "3",
        "periods before the current one whose usage records the archive keeps",
    ),
    ("RATING_CHECKPOINT_INTERVAL_S", "30", "seconds between usage checkpoints"),
    (
        "RATING_SHUTDOWN_CHECKPOINT_S",
        "60",
        "seconds a stop waits for its last usage checkpoint (then the next start replays)",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    grpc_addr: str = "127.0.0.1:50051"
    metrics_addr: str | None = "127.0.0.1:9464"  # None: no metrics HTTP server (tests)
    database_url: str | None = None
    data_dir: Path = Path(".rating-data")
    test_clock: bool = False
    clock_start: datetime | None = None
    late_usage_window: timedelta = timedelta(seconds=86400)
    log_format: str = "json"
    # One successful read call in this many gets its log line (interceptor.READ_METHODS).
    rpc_log_reads_every: int = 100
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    api_keys_file: Path | None = None
    max_message_bytes: int = 8 * 1024 * 1024
    max_streams: int = 1000
    retention_periods: int = 3
    checkpoint_interval_s: float = 30.0
    shutdown_checkpoint_s: float = 60.0
    # Tuning, not in the environment: bounds that give backpressure.
    persist_queue_batches: int = 64
    persist_max_records_per_commit: int = 20_000
    shutdown_grace_s: float = 10.0

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] = os.environ,
        argv: Sequence[str] | None = None,
        prog: str = "simrating",
    ) -> Settings:
        parser = argparse.ArgumentParser(prog=prog, description="simrating gRPC service")
        for name, default, help_text in _SETTINGS:
            flag = "--" + name.removeprefix("RATING_").lower().replace("_", "-")
            parser.add_argument(flag, dest=name, default=environ.get(name, default), help=help_text)
        raw = vars(parser.parse_args(argv))
        test_clock, clock_start = parse_clock(raw["RATING_CLOCK"])
        log_format = raw["RATING_LOG_FORMAT"]
        if log_format not in ("json", "console"):
            raise InvalidArgument("RATING_LOG_FORMAT", "must be 'json' or 'console'")
        window = _non_negative_int(raw, "RATING_LATE_USAGE_WINDOW_S")
        cert, key = _path(raw, "RATING_TLS_CERT_FILE"), _path(raw, "RATING_TLS_KEY_FILE")
        client_ca = _path(raw, "RATING_TLS_CLIENT_CA_FILE")
        if (cert is None) != (key is None):
            raise InvalidArgument("RATING_TLS_KEY_FILE", "TLS needs both the certificate and key")
        if client_ca is not None and cert is None:
            raise InvalidArgument("RATING_TLS_CLIENT_CA_FILE", "mutual TLS needs TLS (cert, key)")
        return cls(
            grpc_addr=raw["RATING_GRPC_ADDR"],
            metrics_addr=raw["RATING_METRICS_ADDR"] or None,
            database_url=raw["RATING_DATABASE_URL"] or None,
            data_dir=Path(raw["RATING_DATA_DIR"]),
            test_clock=test_clock,
            clock_start=clock_start,
            late_usage_window=timedelta(seconds=window),
            log_format=log_format,
            rpc_log_reads_every=_non_negative_int(raw, "RATING_RPC_LOG_READS"),
            tls_cert_file=cert,
            tls_key_file=key,
            tls_client_ca_file=client_ca,
            api_keys_file=_path(raw, "RATING_API_KEYS_FILE"),
            max_message_bytes=_non_negative_int(raw, "RATING_MAX_MESSAGE_BYTES") or 1,
            max_streams=_non_negative_int(raw, "RATING_MAX_STREAMS"),
            retention_periods=parse_retention_periods(raw["RATING_RETENTION_PERIODS"]),
            checkpoint_interval_s=_positive_seconds(raw, "RATING_CHECKPOINT_INTERVAL_S"),
            shutdown_checkpoint_s=_positive_seconds(raw, "RATING_SHUTDOWN_CHECKPOINT_S"),
        )


def _non_negative_int(raw: Mapping[str, str], name: str) -> int:
    try:
        value = int(raw[name])
    except ValueError as exc:
        raise InvalidArgument(name, "must be an integer") from exc
    if value < 0:
        raise InvalidArgument(name, "must be >= 0")
    return value


def parse_retention_periods(value: str) -> int:
    """RATING_RETENTION_PERIODS: a non-negative integer (the archive command reads it too)."""
    return _non_negative_int({"RATING_RETENTION_PERIODS": value}, "RATING_RETENTION_PERIODS")


def _positive_seconds(raw: Mapping[str, str], name: str) -> float:
    try:
        value = float(raw[name])
    except ValueError as exc:
        raise InvalidArgument(name, "must be a number of seconds") from exc
    if not value > 0 or value == float("inf"):
        raise InvalidArgument(name, "must be > 0 and finite")
    return value


def _path(raw: Mapping[str, str | None], name: str) -> Path | None:
    value = raw.get(name)
    return Path(value) if value else None


def parse_clock(value: str) -> tuple[bool, datetime | None]:
    """'system' -> (False, None); 'test' -> (True, None); 'test:<ISO>' -> (True, that time)."""
    if value == "system":
        return False, None
    if value == "test":
        return True, None
    if value.startswith("test:"):
        try:
            start = datetime.fromisoformat(value.removeprefix("test:").replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidArgument("RATING_CLOCK", f"bad ISO time in {value!r}") from exc
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        return True, start.astimezone(UTC)
    raise InvalidArgument("RATING_CLOCK", "must be 'system', 'test' or 'test:<ISO time>'")
