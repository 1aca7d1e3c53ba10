"""The persister: group commit of usage batches from every caller.

Callers `submit` a batch and wait for its results. The worker takes whatever batches are
queued (up to a record bound), checks them against the cache, and commits all new records
in ONE transaction (one array INSERT ... ON CONFLICT DO NOTHING), together with any billing
start the records moved. Only after the commit does it update the cache and answer the
callers, so an acknowledged record is always in PostgreSQL. If the commit fails, every
caller of the group gets `StorageUnavailable` and nothing is counted: retrying is safe
because record ids are idempotency keys.

A commit can also fail after COMMIT was sent (the server stopped or the connection broke
before its answer arrived): then the group may be stored after all. Its new records are
kept "in doubt", and the next successful commit looks them up in its own transaction and
counts those that are stored; otherwise a retry would answer them DUPLICATE while the
counters never included them (until a restart rebuilt the cache).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import structlog

from service import repository
from service.clock import Clock
from service.domain.model import Sim, UsageRecord, UsageType
from service.errors import Overloaded, StorageUnavailable
from service.metrics import Metrics
from service.usage import (
    Candidate,
    Checked,
    InvalidRecord,
    RecordResult,
    RecordStatus,
    UnlessCounted,
    UsageEngine,
)

log = structlog.get_logger("persister")

DUPLICATE_DETAIL = "record_id seen before"


@dataclass(slots=True)
class Submission:
    records: Sequence[UsageRecord | InvalidRecord]
    future: asyncio.Future[list[RecordResult]]


class Persister:
    def __init__(
        self,
        pool: asyncpg.Pool,
        engine: UsageEngine,
        clock: Clock,
        metrics: Metrics,
        state_lock: asyncio.Lock,
        *,
        max_queued_batches: int,
        max_records_per_commit: int,
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._clock = clock
        self._metrics = metrics
        self._state_lock = state_lock
        self._queue: asyncio.Queue[Submission] = asyncio.Queue(max_queued_batches)
        self._max_records = max_records_per_commit
        self.busy = False  # a group is being committed
        # New records of commits whose outcome is unknown, by record id (see module doc).
        self._in_doubt: dict[str, Candidate] = {}

    async def submit(
        self, records: Sequence[UsageRecord | InvalidRecord], *, wait: bool
    ) -> list[RecordResult]:
        """Queue a batch and return its results once committed.

        wait=True (streams) waits for room in the queue: backpressure. wait=False (unary
        calls) fails at once with Overloaded when the queue is full.
        """
        submission = Submission(records, asyncio.get_running_loop().create_future())
        if wait:
            await self._queue.put(submission)
        else:
            try:
                self._queue.put_nowait(submission)
            except asyncio.QueueFull:
                raise Overloaded("usage queue is full; retry with backoff") from None
        self._metrics.persist_queue_depth.set(self._queue.qsize())
        return await submission.future

    async def run(self) -> None:
        while True:
            group = [await self._queue.get()]
            self._take_queued(group)
            if group:
                await self.commit(group)

    async def run_once(self) -> int:
        """Commit what is queued now (tests); returns the number of batches committed."""
        group: list[Submission] = []
        self._take_queued(group)
        if group:
            await self.commit(group)
        return len(group)

    def _take_queued(self, group: list[Submission]) -> None:
        records = sum(len(s.records) for s in group)
        while records < self._max_records and not self._queue.empty():
            submission = self._queue.get_nowait()
            group.append(submission)
            records += len(submission.records)
        # A caller that gave up (deadline, cancellation) before its batch was taken: drop the
        # batch, nothing of it was stored. One taken already is committed; a retry is DUPLICATE.
        group[:] = [s for s in group if not s.future.cancelled()]
        self._metrics.persist_queue_depth.set(self._queue.qsize())

    async def commit(self, group: list[Submission]) -> None:
        self.busy = True
        try:
            await self._commit(group)
        finally:
            self.busy = False

    async def _commit(self, group: list[Submission]) -> None:
        started = time.perf_counter()
        async with self._state_lock:
            checked = [self._engine.check_all(s.records) for s in group]
            # The first candidate of each id; a later one in the group is a DUPLICATE.
            first: dict[str, Candidate] = {}
            closed: list[str] = []
            for items in checked:
                for item in items:
                    if type(item) is Candidate:
                        if item.record_id not in first:
                            first[item.record_id] = item
                    elif type(item) is UnlessCounted:
                        closed.append(item.refusal.record_id)
            try:
                new, counted_closed, moved = await self._write(first, closed)
            except StorageUnavailable as exc:
                self._fail(group, exc)
                return
            results = self._engine.apply(new, moved)
        # By the identity of the candidate objects: a repeated id's later copies are not in it.
        rated = dict(zip(map(id, new), results, strict=True))
        by_status: dict[RecordStatus, int] = {RecordStatus.RATED: len(new)} if new else {}
        for submission, items in zip(group, checked, strict=True):
            answers = self._answers(items, rated, counted_closed, by_status)
            if not submission.future.done():
                submission.future.set_result(answers)
        self._count_quantities(new)
        for status, count in by_status.items():
            self._metrics.usage_records.labels(status.name).inc(count)
        self._metrics.persist_batch_records.observe(sum(len(items) for items in checked))
        self._metrics.persist_batch_seconds.observe(time.perf_counter() - started)

    async def _write(
        self, first: dict[str, Candidate], closed: list[str]
    ) -> tuple[list[Candidate], set[str], dict[str, Sim]]:
        """Commit the new ones of `first` (candidates by id) with the billing starts they
        move; return them, the `closed` ids counted before, and the moved SIMs."""
        new: list[Candidate] = []
        committing = False
        try:
            async with repository.transaction(self._pool) as conn:
                # Before the insert: a record stored by an in-doubt commit is not new now.
                recovered = await self._recover_in_doubt(conn)
                candidates = list(first.values())
                seen = (
                    await repository.insert_usage(conn, candidates, list(first))
                    if candidates
                    else set()
                )
                counted_closed = (
                    await repository.known_record_ids(conn, closed) if closed else set()
                )
                if seen:
                    candidates = [c for c in candidates if c.record_id not in seen]
                new = recovered + candidates if recovered else candidates
                moved = self._engine.plan_starts(new)
                if moved:
                    await repository.update_sims(conn, moved.values())
                committing = True  # leaving this block sends COMMIT
        except (asyncpg.PostgresError, StorageUnavailable) as exc:
            if committing:
                self._in_doubt.update((c.record_id, c) for c in new)
                log.warning("group commit outcome unknown; records kept in doubt", records=len(new))
            if isinstance(exc, StorageUnavailable):
                raise
            log.error("group commit failed", error=repr(exc))
            raise StorageUnavailable(f"database error: {exc.__class__.__name__}") from exc
        self._in_doubt.clear()  # each one is now counted, or known not to be stored
        return new, counted_closed, moved

    async def _recover_in_doubt(self, conn: asyncpg.Connection) -> list[Candidate]:
        if not self._in_doubt:
            return []
        stored = await repository.known_record_ids(conn, list(self._in_doubt))
        if stored:
            log.warning("counting records of a commit whose answer was lost", records=len(stored))
        return [c for record_id, c in self._in_doubt.items() if record_id in stored]

    def _fail(self, group: list[Submission], exc: StorageUnavailable) -> None:
        self._metrics.persist_failures.inc()
        log.warning("group commit failed; nothing acknowledged", batches=len(group), error=str(exc))
        for submission in group:
            if not submission.future.done():
                submission.future.set_exception(StorageUnavailable(str(exc)))

    @staticmethod
    def _answers(
        items: list[Checked],
        rated: dict[int, RecordResult],
        counted: set[str],
        by_status: dict[RecordStatus, int],
    ) -> list[RecordResult]:
        """A submission's results in order; counts the statuses of those not in `rated`."""
        answers: list[RecordResult] = []
        append = answers.append
        for item in items:
            result: RecordResult
            if type(item) is Candidate:
                committed = rated.get(id(item))
                if committed is not None:  # counted in by_status already
                    append(committed)
                    continue
                result = RecordResult(item.record_id, RecordStatus.DUPLICATE, DUPLICATE_DETAIL)
            elif type(item) is UnlessCounted:
                record_id = item.refusal.record_id
                if record_id in counted:
                    result = RecordResult(record_id, RecordStatus.DUPLICATE, DUPLICATE_DETAIL)
                else:
                    result = item.refusal
            else:
                result = item  # type: ignore[assignment]
            by_status[result.status] = by_status.get(result.status, 0) + 1
            append(result)
        return answers

    def _count_quantities(self, new: list[Candidate]) -> None:
        by_type: dict[UsageType, int] = {}
        for candidate in new:
            usage_type = candidate.usage_type
            by_type[usage_type] = by_type.get(usage_type, 0) + candidate.quantity
        for usage_type, quantity in by_type.items():
            self._metrics.usage_quantity.labels(usage_type.name).inc(quantity)
