"""RatingService: session authorization, SIM status and usage ingestion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from rating.v1 import rating_service_pb2 as pb
from rating.v1 import rating_service_pb2_grpc as pb_grpc
from rating.v1 import types_pb2 as types_pb
from service.api import convert
from service.domain.errors import InvalidArgument, Overloaded, ShuttingDown
from service.domain.model import UsageRecord, UsageType
from service.ingestion.persister import Persister
from service.ingestion.records import InvalidRecord, RecordResult
from service.ops.clock import Clock
from service.state.cache import StateCache
from service.state.periods import PeriodLookup
from service.usecases.session_authorization import authorize
from service.usecases.sim_status import sim_view

MAX_RECORDS_PER_BATCH = 10_000
# Batches of one stream in flight (read ahead, not yet acknowledged).
STREAM_WINDOW = 16
SHUTTING_DOWN = "the service is stopping; resend the batches not acknowledged"
# At most this long a failing stream keeps reading what the client still sends (see _drain).
STREAM_DRAIN_S = 2.0


def _checked_records(
    records: Sequence[types_pb.UsageRecord],
) -> list[UsageRecord | InvalidRecord]:
    if len(records) > MAX_RECORDS_PER_BATCH:
        raise InvalidArgument("records", f"at most {MAX_RECORDS_PER_BATCH} per batch")
    return convert.records_from_proto(records)


class RatingServicer(pb_grpc.RatingServiceServicer):
    def __init__(
        self, cache: StateCache, clock: Clock, usage: Persister, max_streams: int = 1000
    ) -> None:
        self._cache = cache
        self._clock = clock
        self._usage = usage
        self._periods = PeriodLookup()
        self._max_streams = max_streams
        self._streams = 0
        self._stopping = asyncio.Event()

    # The session-start reads are plain functions: they never wait, and the interceptor
    # answers them on the event loop without a coroutine each (service/api/interceptor.py).

    def GetSimStatus(
        self, request: pb.GetSimStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSimStatusResponse:
        iccid = request.iccid  # each read of a string field builds a new str
        if not iccid:
            raise InvalidArgument("iccid", "is required")
        view = sim_view(self._cache, self._clock, iccid, self._periods)
        response = pb.GetSimStatusResponse()
        convert.fill_sim_status(view, response.status)
        return response

    def AuthorizeSession(
        self, request: pb.AuthorizeSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.AuthorizeSessionResponse:
        usage_type = convert.enum_from_proto(UsageType, request.usage_type, "usage_type")
        allowed, deny, state, started, would_start, price, unit, remaining, estimate = authorize(
            self._cache,
            self._clock,
            self._periods,
            request.iccid,
            usage_type,
            request.requested_quantity,
        )
        # Only the fields that differ from their default are written: a protobuf
        # constructor's keywords are each looked up by name, ~2x the cost per call.
        response = pb.AuthorizeSessionResponse()
        if allowed:
            response.allowed = True
        else:
            response.deny_reason = deny._value_  # type: ignore[assignment,union-attr]
        if state is not None:
            response.state = state._value_  # type: ignore[assignment]
        if started:
            response.billing_started = True
        if would_start:
            response.would_start_billing = True
        if price:
            response.price_micros = price
        if unit:
            response.unit_quantity = unit
        if remaining:
            response.remaining_included_quantity = remaining
        if estimate:
            response.estimated_charge_micros = estimate
        return response

    async def RateUsage(
        self, request: pb.RateUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.RateUsageResponse:
        records = _checked_records(request.records)
        results = await self._usage.submit(records, wait=False)
        response = pb.RateUsageResponse()
        convert.add_results(response.results, results)
        return response

    def stop_reading(self) -> None:
        """Shutdown: every stream stops reading, acknowledges each batch it read once it is
        committed, then ends UNAVAILABLE; new streams are refused."""
        self._stopping.set()

    async def StreamUsage(
        self,
        request_iterator: AsyncIterator[pb.StreamUsageRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.StreamUsageResponse]:
        if self._stopping.is_set():
            raise ShuttingDown(SHUTTING_DOWN)
        if self._streams >= self._max_streams:
            raise Overloaded(f"at most {self._max_streams} concurrent StreamUsage streams")
        self._streams += 1
        try:
            async for ack in self._acknowledge(request_iterator):
                yield ack
        finally:
            self._streams -= 1

    async def _acknowledge(
        self, request_iterator: AsyncIterator[pb.StreamUsageRequest]
    ) -> AsyncIterator[pb.StreamUsageResponse]:
        # A reader submits batches as they arrive (up to STREAM_WINDOW ahead); acknowledgements
        # go out in arrival order, each once its batch is committed. At shutdown the reader
        # stops between two batches: what it read is still acknowledged, then the stream ends.
        in_flight: asyncio.Queue[
            tuple[str, asyncio.Future[list[RecordResult]]] | ShuttingDown | None
        ] = asyncio.Queue(STREAM_WINDOW)
        ending = False  # the stream ends with an error: the reader discards what still comes

        async def read() -> None:
            batches = aiter(request_iterator)
            stopping = asyncio.ensure_future(self._stopping.wait())
            received: asyncio.Future[pb.StreamUsageRequest] | None = None
            try:
                while True:
                    received = asyncio.ensure_future(anext(batches))
                    await asyncio.wait({received, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not received.done():  # stopping, and no batch arrived meanwhile
                        if not ending:
                            await in_flight.put(ShuttingDown(SHUTTING_DOWN))
                        return
                    try:
                        batch = received.result()
                    except StopAsyncIteration:
                        break
                    if ending:
                        continue
                    records = _checked_records(batch.records)
                    submitted = asyncio.ensure_future(self._usage.submit(records, wait=True))
                    try:
                        await in_flight.put((batch.batch_id, submitted))
                    except asyncio.CancelledError:
                        submitted.cancel()  # nobody would wait for its acknowledgement
                        raise
            finally:
                stopping.cancel()
                if received is not None:
                    received.cancel()
            await in_flight.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                get = asyncio.ensure_future(in_flight.get())
                if not reader.done():
                    await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done() and reader.done() and reader.exception() is not None:
                    get.cancel()
                    reader.result()  # the reader failed (bad batch): raise its error
                item = await get
                if item is None:
                    break
                if isinstance(item, ShuttingDown):
                    raise item
                batch_id, submitted = item
                ack = pb.StreamUsageResponse(batch_id=batch_id)
                convert.add_results(ack.results, await submitted)
                yield ack
        except Exception:
            ending = True
            _cancel_queued(in_flight)  # also unblocks a reader waiting for room
            await _drain(reader, request_iterator)
            raise
        finally:
            reader.cancel()
            _cancel_queued(in_flight)


def _cancel_queued(
    in_flight: asyncio.Queue[tuple[str, asyncio.Future[list[RecordResult]]] | ShuttingDown | None],
) -> None:
    while not in_flight.empty():
        item = in_flight.get_nowait()
        if isinstance(item, tuple):
            item[1].cancel()


async def _drain(
    reader: asyncio.Task[None], request_iterator: AsyncIterator[pb.StreamUsageRequest]
) -> None:
    """Read (and discard) what the client still sends, until it half-closes or
    STREAM_DRAIN_S pass, before the stream ends with an error.

    A status sent while the client is still writing makes the server reset the stream; the
    client's write in progress then fails, and grpc clients report that failure as INTERNAL
    ("Internal error from Core") when it comes before the status: the caller would see
    INTERNAL instead of the real code (UNAVAILABLE during an outage).
    """
    try:
        async with asyncio.timeout(STREAM_DRAIN_S):
            if not reader.done():
                await asyncio.wait({reader})  # it discards what comes (`ending`)
            else:  # it stopped (a bad batch, shutdown): read on here until the client ends
                async for _ in request_iterator:
                    pass
    except TimeoutError:
        pass  # a client that keeps sending: end the stream anyway
