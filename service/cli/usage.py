"""`simrating usage send`: CDR files (CSV or JSON Lines, optionally gzipped) streamed to
RatingService.StreamUsage.

The reader builds each batch's StreamUsageRequest directly (one `records.add` per line,
the timestamp set as seconds and nanos); batches go to several streams, each its own
connection, each keeping up to `window` batches in flight (the service reads up to 16
ahead per stream and acknowledges in order, after commit). A malformed line is recorded
with its line number and the reason and never stops the file. Record ids are idempotency
keys: re-sending a file after an interruption stores nothing twice (what was stored comes
back DUPLICATE).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

from rating.v1 import rating_service_pb2 as r
from rating.v1 import rating_service_pb2_grpc as r_grpc
from rating.v1 import types_pb2 as t
from service.cli.connection import Target
from service.cli.timestamps import seconds_nanos

COLUMNS = ("record_id", "iccid", "usage_type", "quantity", "event_time", "session_id")
REQUIRED = COLUMNS[:5]
USAGE_TYPES = {
    name: value
    for short, value in (("DATA", 1), ("VOICE", 2), ("SMS", 3))
    for name in (short, f"USAGE_TYPE_{short}")
}
ACCEPTED = frozenset({"RATED", "DUPLICATE"})
MALFORMED = "MALFORMED"
STATUS_NAMES = {
    v.number: v.name.removeprefix("RECORD_STATUS_") for v in t.RecordStatus.DESCRIPTOR.values
}
RATED, DUPLICATE = t.RECORD_STATUS_RATED, t.RECORD_STATUS_DUPLICATE
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Every stream its own TCP connection (channels would otherwise share one subchannel).
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


class InputError(Exception):
    """A file that cannot be read at all (missing, bad header, not gzip)."""


@dataclass
class CdrFile:
    path: Path
    columns: tuple[str, ...] = COLUMNS  # as in the file: the rejects file repeats them
    counts: Counter[str] = field(default_factory=Counter)
    rejected: list[tuple[int, list[str], str, str]] = field(default_factory=list)

    @property
    def jsonl(self) -> bool:
        return self.path.name.lower().removesuffix(".gz").endswith((".jsonl", ".ndjson", ".json"))

    def open(self) -> IO[str]:
        """Text lines; undecodable bytes survive as surrogates and make their line malformed."""
        if self.path.name.lower().endswith(".gz"):
            return gzip.open(self.path, "rt", newline="", errors="surrogateescape")
        return self.path.open(newline="", errors="surrogateescape")

    def malformed(self, line: int, values: list[str], reason: str) -> None:
        self.counts[MALFORMED] += 1
        self.rejected.append((line, values, MALFORMED, reason))

    def count_lines(self) -> int:
        gzipped = self.path.name.lower().endswith(".gz")
        with gzip.open(self.path, "rb") if gzipped else self.path.open("rb") as raw:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: raw.read(1 << 20), b""))


@dataclass
class Batch:
    file: CdrFile
    request: Any  # r.StreamUsageRequest
    lines: list[int]
    values: list[list[str]]  # per record, the line's values (for the rejects file)


def check_header(file: CdrFile) -> None:
    """Refuse a file that cannot be read or lacks a column, before anything is sent."""
    try:
        with file.open() as source:
            if file.jsonl:
                source.readline()
                return
            header = next(csv.reader(source), None)
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as exc:
        raise InputError(f"{file.path}: cannot read: {exc}") from exc
    if header is None:
        raise InputError(f"{file.path}: empty file (a CSV needs its header line)")
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise InputError(f"{file.path}: the header lacks {', '.join(missing)}")


def batches(file: CdrFile, size: int) -> Iterator[Batch]:
    """The file's records in batches of `size`; malformed lines are recorded in `file`."""
    with file.open() as source:
        yield from (_jsonl_batches if file.jsonl else _csv_batches)(file, source, size)


def _csv_batches(file: CdrFile, source: IO[str], size: int) -> Iterator[Batch]:
    reader = csv.reader(source)
    header = next(reader)
    file.columns = tuple(header)
    width = len(header)
    i_id, i_iccid, i_type, i_qty, i_time = (header.index(name) for name in REQUIRED)
    i_session = header.index("session_id") if "session_id" in header else None
    types, sn, low, high = USAGE_TYPES, seconds_nanos, _INT64_MIN, _INT64_MAX
    batch = _new_batch(file)
    add, lines, kept = batch.request.records.add, batch.lines, batch.values
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a field over the csv module's size limit
            file.malformed(reader.line_num, [], f"not a CSV line: {exc}")
            continue
        if len(values) != width:
            if values:  # blank lines are skipped
                file.malformed(reader.line_num, values, f"{len(values)} fields, header has {width}")
            continue
        usage_type = types.get(values[i_type])
        if usage_type is None:
            file.malformed(reader.line_num, values, _bad_type(values[i_type]))
            continue
        try:
            quantity = int(values[i_qty])
        except ValueError:
            file.malformed(reader.line_num, values, f"quantity: not an integer: {values[i_qty]!r}")
            continue
        if not low <= quantity <= high:
            file.malformed(reader.line_num, values, "quantity: out of the int64 range")
            continue
        try:
            seconds, nanos = sn(values[i_time])
        except ValueError:
            file.malformed(reader.line_num, values, _bad_time(values[i_time]))
            continue
        try:
            record = add(
                record_id=values[i_id],
                iccid=values[i_iccid],
                usage_type=usage_type,
                quantity=quantity,
                session_id=values[i_session] if i_session is not None else "",
            )
        except (ValueError, UnicodeError):
            file.malformed(reader.line_num, values, "not valid UTF-8")
            continue
        ts = record.event_time
        ts.seconds = seconds
        ts.nanos = nanos
        lines.append(reader.line_num)
        kept.append(values)
        if len(lines) == size:
            yield batch
            batch = _new_batch(file)
            add, lines, kept = batch.request.records.add, batch.lines, batch.values
    if lines:
        yield batch


def _jsonl_batches(file: CdrFile, source: IO[str], size: int) -> Iterator[Batch]:
    batch = _new_batch(file)
    for line, text in enumerate(source, start=1):
        if not text.strip():
            continue
        try:
            document = json.loads(text)
        except ValueError as exc:
            file.malformed(line, [], f"not a JSON object: {exc}")
            continue
        if not isinstance(document, dict):
            file.malformed(line, [], "not a JSON object")
            continue
        values = ["" if document.get(n) is None else str(document.get(n)) for n in COLUMNS]
        problem = _add_json_record(batch.request.records, document)
        if problem is not None:
            file.malformed(line, values, problem)
            continue
        batch.lines.append(line)
        batch.values.append(values)
        if len(batch.lines) == size:
            yield batch
            batch = _new_batch(file)
    if batch.lines:
        yield batch


def _add_json_record(records: Any, doc: dict[str, Any]) -> str | None:
    """Append the record, or say what is wrong with it."""
    missing = [name for name in REQUIRED if name not in doc]
    if missing:
        return f"missing {', '.join(missing)}"
    for name in ("record_id", "iccid", "usage_type", "event_time"):
        if not isinstance(doc[name], str):
            return f"{name}: must be a string"
    session = doc.get("session_id", "")
    if not isinstance(session, str):
        return "session_id: must be a string"
    usage_type = USAGE_TYPES.get(doc["usage_type"])
    if usage_type is None:
        return _bad_type(doc["usage_type"])
    quantity = doc["quantity"]
    if isinstance(quantity, str):  # the proto JSON mapping writes int64 as a string
        try:
            quantity = int(quantity)
        except ValueError:
            return f"quantity: not an integer: {quantity!r}"
    if not isinstance(quantity, int) or isinstance(quantity, bool):
        return f"quantity: not an integer: {quantity!r}"
    if not _INT64_MIN <= quantity <= _INT64_MAX:
        return "quantity: out of the int64 range"
    try:
        seconds, nanos = seconds_nanos(doc["event_time"])
    except ValueError:
        return _bad_time(doc["event_time"])
    try:
        record = records.add(
            record_id=doc["record_id"],
            iccid=doc["iccid"],
            usage_type=usage_type,
            quantity=quantity,
            session_id=session,
        )
    except (ValueError, UnicodeError):
        return "not valid UTF-8"
    record.event_time.seconds = seconds
    record.event_time.nanos = nanos
    return None


def _bad_type(value: str) -> str:
    return f"usage_type: must be DATA, VOICE or SMS, got {value!r}"


def _bad_time(value: str) -> str:
    return f"event_time: not an RFC 3339 time with offset: {value!r}"


_batch_ids = iter(range(1, 1 << 62))


def _new_batch(file: CdrFile) -> Batch:
    return Batch(file, r.StreamUsageRequest(batch_id=f"b{next(_batch_ids)}"), [], [])


def record_results(batch: Batch, ack: Any) -> None:
    """Count one acknowledgement's statuses; keep every record not RATED or DUPLICATE."""
    results = ack.results
    if len(results) != len(batch.lines) or ack.batch_id != batch.request.batch_id:
        raise RuntimeError(
            f"acknowledgement {ack.batch_id} ({len(results)} results) does not match batch"
            f" {batch.request.batch_id} ({len(batch.lines)} records)"
        )
    statuses = Counter(result.status for result in results)
    counts = batch.file.counts
    for status, count in statuses.items():
        counts[STATUS_NAMES.get(status, str(status))] += count
    if statuses.keys() - {RATED, DUPLICATE}:
        for i, result in enumerate(results):
            if result.status != RATED and result.status != DUPLICATE:
                name = STATUS_NAMES.get(result.status, str(result.status))
                batch.file.rejected.append((batch.lines[i], batch.values[i], name, result.detail))


@dataclass
class Sender:
    """Streams batches over `streams` StreamUsage streams, `window` batches in flight each."""

    target: Target
    streams: int = 4
    window: int = 16
    on_ack: Callable[[Batch], None] = lambda batch: None
    acknowledged: int = 0

    async def send(self, produce: Iterator[Batch]) -> None:
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(self.streams * 2)

        async def producer() -> None:
            for batch in produce:
                await queue.put(batch)
            for _ in range(self.streams):
                await queue.put(None)

        async with asyncio.TaskGroup() as group:
            group.create_task(producer())
            for _ in range(self.streams):
                group.create_task(self._stream(queue))

    async def _stream(self, queue: asyncio.Queue[Batch | None]) -> None:
        pending: deque[Batch] = deque()
        slots = asyncio.Semaphore(self.window)

        async def requests() -> Any:
            while True:
                await slots.acquire()
                batch = await queue.get()
                if batch is None:
                    return
                pending.append(batch)
                yield batch.request

        async with self.target.channel(CHANNEL_OPTIONS) as channel:
            call = r_grpc.RatingServiceStub(channel).StreamUsage(
                requests(), metadata=self.target.metadata
            )
            async for ack in call:
                batch = pending.popleft()
                slots.release()
                record_results(batch, ack)
                self.acknowledged += len(batch.lines)
                self.on_ack(batch)
        if pending:
            raise RuntimeError(f"the stream ended with {len(pending)} batches unacknowledged")


def is_stream_failure(exc: BaseException) -> grpc.aio.AioRpcError | None:
    """The gRPC error inside a TaskGroup's ExceptionGroup, if that is what stopped it."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = is_stream_failure(inner)
            if found is not None:
                return found
    return None
