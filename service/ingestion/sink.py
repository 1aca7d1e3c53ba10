"""Where the API hands usage batches: the interface the persister implements.

The API layer depends on this, not on the worker: `service.app` wires the persister in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from service.domain.model import UsageRecord
from service.ingestion.records import InvalidRecord, RecordResult


class UsageSink(Protocol):
    async def submit(
        self, records: Sequence[UsageRecord | InvalidRecord], *, wait: bool
    ) -> list[RecordResult]:
        """Results of `records` in order, once every new one is durably stored.

        wait=True waits for room when the queue is full (backpressure for streams);
        wait=False raises Overloaded at once (unary calls).
        """
        ...
