"""The persister: group commit of usage batches from every caller.

Callers `submit` a batch and wait for its results. The worker takes whatever batches are
queued (up to a record bound), checks them against the cache, and commits all new records
in ONE transaction (an id look-up, then one COPY), together with any billing start the
records moved and the records before billing start of FIRST_USE SIMs (usage_uncharged).
Each record gets the next `usage_records.seq`, so seq order is commit order; after the
commit `committed_seq` is at least the seq of every committed record, the watermark the
checkpoint worker takes (it writes the counters; the group commit does not, see
docs/storage.md). Only after the commit does it count them in the cache and answer the
callers, so an acknowledged record is always in PostgreSQL. If the commit fails because
PostgreSQL is unavailable, every caller of the group gets `StorageUnavailable` and nothing
is counted: retrying is safe because record ids are idempotency keys. A serialization
failure or deadlock reruns the transaction (`transactions.retried`). Any other failure (a
violated constraint, a bug) fails the group's callers with INTERNAL, is logged with its
traceback and counted (`rating_internal_errors_total{operation="persister"}`); nothing of
the group is stored or counted, and the persister goes on with the next group.

Pipelining: a committed group is counted while the NEXT group is being written. Counting
runs in chunks that yield to the event loop, so it proceeds while PostgreSQL looks up and
stores the next group, instead of after it. The next group's billing start decisions wait
for the counting to finish (they depend on the counted records). A group left counted
only in part when the persister releases the state lock is finished by whoever takes the
lock next and calls `count_committed()` (the rule of `StateLock`: every other holder
does, right after entering), or by the persister itself as soon as its queue is empty, so
callers never wait for more traffic to get their answers.

A commit can also fail after COMMIT was sent (the server stopped or the connection broke
before its answer arrived; an error the server answers means a rollback): then the group
may be stored after all. Its new records are
kept "in doubt", and the next successful commit looks them up in its own transaction and
counts those that are stored; otherwise a retry would answer them DUPLICATE while the
counters never included them (until a restart rebuilt the cache). The look-up is only
final once the in-doubt commit's server process is gone: a client that lost its
connection does not stop the server from finishing a COMMIT (a slow fsync, a deferred
trigger), and a COMMIT applied after the look-up would store records nobody counts. So
the look-up first terminates that process (`pg_terminate_backend` with a wait: its
COMMIT then ends committed or rolled back) and fails, keeping the records in doubt, if
it is still there.

Shutdown: `stop()` refuses new batches (`ShuttingDown`); `run` commits what is still
queued, counts its last group (answering its callers) and returns.

The methods below follow a batch in the order it runs: `submit` (checked on arrival) ->
`run` -> `_commit` (checked again if the state changed, one candidate per key) ->
`_write` (the transaction, with the engine's billing start decisions) -> the counting
(`_count_pending`, with the engine's `install_starts` and `count`) -> `_answer`;
docs/architecture.md draws the whole path with the functions of each step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog

from service.domain.errors import InternalFailure, Overloaded, ShuttingDown, StorageUnavailable
from service.domain.model import Sim, UsageRecord, UsageType
from service.ingestion.engine import UsageEngine
from service.ingestion.records import (
    Candidate,
    Checked,
    InvalidRecord,
    RecordResult,
    RecordStatus,
    UnlessCounted,
)
from service.ops.clock import Clock
from service.ops.metrics import Metrics
from service.state.lock import StateLock
from service.storage import transactions, usage_records, usage_state
from service.storage.partitions import UsagePartitions
from service.storage.sims import update_sims

log = structlog.get_logger("persister")

DUPLICATE_DETAIL = "record_id seen before"
# Records counted between two yields to the event loop while the next group is written.
COUNT_CHUNK = 2_000


@dataclass(slots=True)
class Submission:
    records: Sequence[UsageRecord | InvalidRecord]
    future: asyncio.Future[list[RecordResult]]
    # Checked on arrival (while the batch is hot in the CPU caches, and outside the group
    # commit); redone at commit time if the state changed in between.
    checked: list[Checked]
    version: int


@dataclass(slots=True)
class Committed:
    """A committed group, counted in the cache up to `position` of `new`."""

    group: list[Submission]
    checked: list[list[Checked]]
    new: list[Candidate]  # stored by this commit, in order
    counted_closed: set[tuple[str, str]]  # keys refused as closed, stored before the group
    repeated: set[int]  # identities of those refused as closed after a candidate of their id
    moved: dict[str, Sim]  # billing starts the group moved
    started: float  # perf_counter() when the group was taken
    position: int = 0
    results: list[RecordResult] = field(default_factory=list)  # of new[:position]


class Persister:
    def __init__(
        self,
        pool: asyncpg.Pool,
        engine: UsageEngine,
        clock: Clock,
        metrics: Metrics,
        state_lock: StateLock,
        *,
        max_queued_batches: int,
        max_records_per_commit: int,
        committed_seq: int = 0,
    ) -> None:
        self._pool = pool
        self._engine = engine
        self._clock = clock
        self._metrics = metrics
        self._state_lock = state_lock
        # None: the wake-up `stop()` queues when the queue is empty.
        self._queue: asyncio.Queue[Submission | None] = asyncio.Queue(max_queued_batches)
        self._stopping = False
        self._max_records = max_records_per_commit
        self.busy = False  # a group is being committed
        # New records of commits whose outcome is unknown, by record id (see module doc).
        self._in_doubt: dict[tuple[str, str], Candidate] = {}
        # The server process ids of those commits (see the module doc).
        self._in_doubt_pids: set[int] = set()
        self._pending: Committed | None = None  # committed, not fully counted yet
        self._partitions = UsagePartitions()
        # Every committed record has seq <= this (usage_records.seq is in commit order);
        # inside the state lock they are all counted in the cache.
        self.committed_seq = committed_seq

    @property
    def in_doubt(self) -> int:
        """Records of commits whose outcome is unknown (see the module doc)."""
        return len(self._in_doubt)

    @property
    def uncounted(self) -> int:
        """Records committed but not yet counted in the cache (see the module doc)."""
        pending = self._pending
        return 0 if pending is None else len(pending.new) - pending.position

    async def submit(
        self, records: Sequence[UsageRecord | InvalidRecord], *, wait: bool
    ) -> list[RecordResult]:
        """Queue a batch and return its results once committed.

        wait=True (streams) waits for room in the queue: backpressure. wait=False (unary
        calls) fails at once with Overloaded when the queue is full.
        """
        if self._stopping:
            raise ShuttingDown("the service is stopping; retry on another instance or later")
        engine = self._engine
        future = asyncio.get_running_loop().create_future()
        submission = Submission(records, future, engine.check_all(records), engine.state_version)
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
        """Commit groups until `stop()`; then commit what is still queued, count the last
        group (which answers its callers) and return."""
        while True:
            if self._pending is not None and self._queue.empty():
                await self._count_pending_now()
            if self._stopping and self._queue.empty():
                return
            first = await self._queue.get()
            if first is None:  # the wake-up of stop()
                continue
            group = [first]
            self._take_queued(group)
            if group:
                await self.commit(group)

    @property
    def stopping(self) -> bool:
        """stop() was called: no new batches; `run` ends once the queued ones are answered."""
        return self._stopping

    def stop(self) -> None:
        """Refuse new batches; `run` returns once the queued ones are committed and counted."""
        self._stopping = True
        if self._queue.empty():
            self._queue.put_nowait(None)  # wakes `run` if it waits for a batch

    async def _count_pending_now(self) -> None:
        async with self._state_lock:
            self.count_committed()

    def _take_queued(self, group: list[Submission]) -> None:
        records = sum(len(s.records) for s in group)
        while records < self._max_records and not self._queue.empty():
            submission = self._queue.get_nowait()
            if submission is not None:
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
        # Without count_committed(): the pending group is counted while this one is written.
        async with self._state_lock:
            checked = self._checked_now(group)
            first, closed, repeated = _first_of_each_key(checked)
            counting = (
                asyncio.ensure_future(self._count_pending_gradually())
                if self._pending is not None
                else None
            )
            try:
                # Its own short transaction, before the group's: a new period's partition.
                await self._partitions.ensure(self._pool, first.values())
                new, counted_closed, moved = await self._write(first, closed, counting)
            except StorageUnavailable as exc:
                self._fail(group, exc)
                return
            except Exception as exc:
                # Not an outage (a violated constraint, a bug): this group's callers get
                # INTERNAL; the persister goes on with the next group.
                self._fail_internal(group, exc)
                return
            finally:
                if counting is not None and not counting.done():
                    counting.cancel()  # what is left: the next holder's count_committed()
            assert self._pending is None, "the previous group was counted before plan_starts"
            self._pending = Committed(group, checked, new, counted_closed, repeated, moved, started)

    def _checked_now(self, group: list[Submission]) -> list[list[Checked]]:
        """Each batch's checks, made again if the state changed since they were made."""
        engine, version = self._engine, self._engine.state_version
        return [s.checked if s.version == version else engine.check_all(s.records) for s in group]

    async def _write(
        self,
        first: dict[tuple[str, str], Candidate],
        closed: list[tuple[str, str]],
        counting: asyncio.Future[None] | None,
    ) -> tuple[list[Candidate], set[tuple[str, str]], dict[str, Sim]]:
        """Commit the new ones of `first` (candidates by id) with the billing starts they
        move; return them, the `closed` ids stored before this group, and the moved SIMs.
        `counting` (the previous group's) must end before billing starts are decided."""
        new: list[Candidate] = []
        committing = False
        server_pid = 0

        async def write(
            conn: asyncpg.Connection,
        ) -> tuple[set[tuple[str, str]], dict[str, Sim], int]:
            nonlocal new, committing, server_pid
            committing = False
            server_pid = conn.get_server_pid()
            # Before the insert: a record stored by an in-doubt commit is not new now.
            recovered = await self._recover_in_doubt(conn)
            # Before the insert too: a closed id is counted only if stored BEFORE the group.
            counted_closed = await usage_records.stored_keys(conn, closed) if closed else set()
            inserted = await usage_records.insert_usage(conn, list(first.values())) if first else []
            new = recovered + inserted if recovered else inserted
            # At least the seq of every record counted once this commits (the in-doubt ones
            # included): the watermark a checkpoint may take (workers.checkpoint).
            seq = await usage_records.last_usage_seq(conn) if new else self.committed_seq
            if counting is not None:
                await counting
            moved = self._engine.plan_starts(new)
            if moved:
                await update_sims(conn, moved.values())
            # Only what this commit inserted: an in-doubt commit's records that were stored
            # brought their uncharged ones with them.
            uncharged = self._engine.uncharged_of(inserted, moved)
            if uncharged:
                await usage_state.insert_uncharged(conn, uncharged, seq)
            committing = True  # leaving the transaction sends COMMIT
            return counted_closed, moved, seq

        try:
            counted_closed, moved, seq = await transactions.retried(self._pool, write)
        except StorageUnavailable:
            # Only a lost connection leaves the outcome of a COMMIT unknown; any error the
            # server answered means the transaction was rolled back.
            if committing:
                self._in_doubt.update(((c.record_id, c.period), c) for c in new)
                self._in_doubt_pids.add(server_pid)
                log.warning("group commit outcome unknown; records kept in doubt", records=len(new))
            raise
        self._in_doubt.clear()  # each one is now counted, or known not to be stored
        self._in_doubt_pids.clear()
        self.committed_seq = seq
        return new, counted_closed, moved

    async def _recover_in_doubt(self, conn: asyncpg.Connection) -> list[Candidate]:
        if not self._in_doubt:
            return []
        await transactions.end_server_processes(conn, self._in_doubt_pids)
        stored = await usage_records.stored_keys(conn, list(self._in_doubt))
        if stored:
            log.warning("counting records of a commit whose answer was lost", records=len(stored))
        return [c for key, c in self._in_doubt.items() if key in stored]

    async def _count_pending_gradually(self) -> None:
        while True:
            if self._count_pending(COUNT_CHUNK):
                return
            await asyncio.sleep(0)  # let the event loop serve PostgreSQL, gRPC and callers

    def count_committed(self) -> None:
        """Count what is left of the committed group now (and answer its callers): called
        by every holder of the state lock right after entering (see StateLock)."""
        self._count_pending(None)

    def _count_pending(self, limit: int | None = None) -> bool:
        """Count up to `limit` more records of the pending group (all of it if None). Once
        all are counted, answer its callers. True when nothing is pending any more."""
        pending = self._pending
        if pending is None:
            return True
        if pending.position == 0:
            self._engine.install_starts(pending.moved)
        end = len(pending.new) if limit is None else pending.position + limit
        chunk = pending.new[pending.position : end]
        pending.results += self._engine.count(chunk, pending.moved)
        pending.position += len(chunk)
        if pending.position < len(pending.new):
            return False
        self._pending = None
        self._answer(pending)
        return True

    def _answer(self, committed: Committed) -> None:
        new = committed.new
        # By the identity of the candidate objects: a repeated id's later copies are not in it.
        rated = dict(zip(map(id, new), committed.results, strict=True))
        by_status: dict[RecordStatus, int] = {RecordStatus.RATED: len(new)} if new else {}
        for submission, items in zip(committed.group, committed.checked, strict=True):
            answers = self._answers(
                items, rated, committed.counted_closed, committed.repeated, by_status
            )
            if not submission.future.done():
                submission.future.set_result(answers)
        self._count_quantities(new)
        for status, count in by_status.items():
            self._metrics.usage_records.labels(status.name).inc(count)
        self._metrics.persist_batch_records.observe(sum(len(i) for i in committed.checked))
        self._metrics.persist_batch_seconds.observe(time.perf_counter() - committed.started)

    @staticmethod
    def _answers(
        items: list[Checked],
        rated: dict[int, RecordResult],
        counted: set[tuple[str, str]],
        repeated: set[int],
        by_status: dict[RecordStatus, int],
    ) -> list[RecordResult]:
        """A submission's results in order; counts the statuses of those not in `rated`.
        One refused as closed is a DUPLICATE if its id is in `counted` (stored before the
        group) or it is in `repeated` (after a candidate of its id in the group)."""
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
                if (record_id, item.period) in counted or id(item) in repeated:
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

    def _fail(self, group: list[Submission], exc: StorageUnavailable) -> None:
        self._metrics.persist_failures.inc()
        log.warning("group commit failed; nothing acknowledged", batches=len(group), error=str(exc))
        for submission in group:
            if not submission.future.done():
                submission.future.set_exception(StorageUnavailable(str(exc)))

    def _fail_internal(self, group: list[Submission], exc: Exception) -> None:
        self._metrics.persist_failures.inc()
        self._metrics.internal_errors.labels("persister").inc()
        log.error("group commit failed; nothing acknowledged", batches=len(group), exc_info=exc)
        for submission in group:
            if not submission.future.done():
                submission.future.set_exception(
                    InternalFailure(f"storing usage failed: {exc.__class__.__name__}")
                )


def _first_of_each_key(
    checked: list[list[Checked]],
) -> tuple[dict[tuple[str, str], Candidate], list[tuple[str, str]], set[int]]:
    """(The first candidate of each key (record id, period), the keys of the records refused
    as closed before any candidate of theirs, the identities of those refused after one).

    A later candidate of a key in the group is a DUPLICATE. So is a record refused as
    closed after a candidate of its key (stored by then, by this group or before it); one
    refused before any is a DUPLICATE only if its key was stored before the group
    (`closed`, looked up before the insert)."""
    first: dict[tuple[str, str], Candidate] = {}
    closed: list[tuple[str, str]] = []
    repeated: set[int] = set()
    for items in checked:
        for item in items:
            if type(item) is Candidate:
                key = (item.record_id, item.period)
                if key not in first:
                    first[key] = item
            elif type(item) is UnlessCounted:
                key = (item.refusal.record_id, item.period)
                if key in first:
                    repeated.add(id(item))
                else:
                    closed.append(key)
    return first, closed, repeated
