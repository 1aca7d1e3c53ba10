"""The usage every benchmark sends: deterministic, so each process can rebuild it.

`records` DATA records over `sims` SIMs (chosen at random with a fixed seed), event times
at random seconds of January 2026, quantities up to 4 MiB. The SIMs are provisioned at
`PROVISIONED_AT`, the service's test clock starts at `CLOCK_START`, so every record is
after provisioning and before the clock: all of them rate as RATED, none as FUTURE_EVENT.
Record k goes to batch k // batch; batch b to stream b % streams.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.domain.iccid import make_iccid
from service.ops.settings import Settings

PROVISIONED_AT = datetime(2026, 1, 1, tzinfo=UTC)
CLOCK_START = datetime(2026, 2, 1, tzinfo=UTC)
PERIOD = "2026-01"
MAX_QUANTITY = 4 * 1_048_576
# The plan's DATA rounding increment (bench.ingestion.PLAN): rated = quantity rounded up.
ROUNDING_INCREMENT = 1_024
USAGE_TYPE_DATA = t.USAGE_TYPE_DATA  # == service.domain.model.UsageType.DATA.value

_EPOCH_SECONDS = int(PROVISIONED_AT.timestamp())
_SPAN_SECONDS = int((CLOCK_START - PROVISIONED_AT).total_seconds())


@dataclass(frozen=True, slots=True)
class Workload:
    records: int = 1_000_000
    sims: int = 100_000
    streams: int = 4
    batch: int = 1_000
    seed: int = 2026

    @property
    def batches(self) -> int:
        return -(-self.records // self.batch)


@dataclass(frozen=True, slots=True)
class Record:
    record_id: str
    sim: int  # index into sim_iccids()
    quantity: int
    event_seconds: int  # Unix time, whole seconds
    session_id: str


def sim_iccids(workload: Workload) -> list[str]:
    return [make_iccid(n) for n in range(1, workload.sims + 1)]


def records(workload: Workload) -> Iterator[Record]:
    rng = random.Random(workload.seed)
    for k in range(workload.records):
        yield Record(
            record_id=f"bench-{k:09d}",
            sim=rng.randrange(workload.sims),
            quantity=rng.randrange(1, MAX_QUANTITY),
            event_seconds=_EPOCH_SECONDS + rng.randrange(_SPAN_SECONDS - 60),
            session_id=f"session-{k // 4:08d}",
        )


def batches(workload: Workload, of: Iterable[Record] | None = None) -> Iterator[list[Record]]:
    """`of` (default: the workload's records) in batches of `workload.batch`."""
    batch: list[Record] = []
    for record in records(workload) if of is None else of:
        batch.append(record)
        if len(batch) == workload.batch:
            yield batch
            batch = []
    if batch:
        yield batch


def batch_id(index: int) -> str:
    return f"batch-{index:07d}"


def serialized_requests(
    workload: Workload, of: Iterable[Record] | None = None
) -> list[list[bytes]]:
    """Per stream, its StreamUsageRequest messages already serialized, in sending order:
    batch b on stream b % streams; `of` the records (default: the workload's)."""
    iccids = sim_iccids(workload)
    streams: list[list[bytes]] = [[] for _ in range(workload.streams)]
    for index, batch in enumerate(batches(workload, of)):
        request = r.StreamUsageRequest(
            batch_id=batch_id(index),
            records=[
                t.UsageRecord(
                    record_id=rec.record_id,
                    iccid=iccids[rec.sim],
                    usage_type=USAGE_TYPE_DATA,
                    quantity=rec.quantity,
                    event_time=Timestamp(seconds=rec.event_seconds),
                    session_id=rec.session_id,
                )
                for rec in batch
            ],
        )
        streams[index % workload.streams].append(request.SerializeToString())
    return streams


def rated_quantity(quantity: int) -> int:
    return -(-quantity // ROUNDING_INCREMENT) * ROUNDING_INCREMENT


UsageRow = tuple[str, str, int, int, int, datetime, str, str]


def service_settings(database_url: str, **overrides: Any) -> Settings:
    """The in-process service every benchmark starts: port 0, no /metrics, a test clock."""
    fields: dict[str, Any] = {
        "grpc_addr": "127.0.0.1:0",
        "metrics_addr": None,
        "database_url": database_url,
        "test_clock": True,
        "clock_start": CLOCK_START,
    }
    interval = os.environ.get("RATING_BENCH_CHECKPOINT_INTERVAL_S")
    if interval:  # usage checkpoints inside a short timed window (the default is 30 s)
        fields["checkpoint_interval_s"] = float(interval)
    return Settings(**(fields | overrides))


def usage_rows(workload: Workload, chunk: int) -> list[list[UsageRow]]:
    """The rows the service writes for these records (usage_records), in chunks of `chunk`."""
    iccids = sim_iccids(workload)
    chunks: list[list[UsageRow]] = [[]]
    for rec in records(workload):
        if len(chunks[-1]) == chunk:
            chunks.append([])
        chunks[-1].append(
            (
                rec.record_id,
                iccids[rec.sim],
                USAGE_TYPE_DATA,
                rec.quantity,
                rated_quantity(rec.quantity),
                PROVISIONED_AT + timedelta(seconds=rec.event_seconds - _EPOCH_SECONDS),
                rec.session_id,
                PERIOD,
            )
        )
    return chunks
