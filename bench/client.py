"""The StreamUsage load generator, run in a child process.

Why a child process: the client shares the machine's two cores with the server, but it
must not share the server's event loop (nor its GIL), or the figure would measure the
client too. The child builds and serializes every request BEFORE the timer starts, sends
them as raw bytes (no serializer on the client side) and keeps the responses as raw
bytes; it parses and checks them only after the timer stops. So while the clock runs the
client does little more than hand bytes to gRPC's C core.

Each stream has its own channel (its own TCP connection, like separate mediation
instances) and pipelines: gRPC writes the stream's batches as fast as HTTP/2 flow control
and the server's read-ahead allow, while the acknowledgements are read as they come.

Protocol over the pipe: child -> ("ready", info); parent -> ("go", address);
child -> ("done", result) or ("error", traceback).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc

from bench.registry import THROUGHPUT_UNIT, Figure
from bench.workload import Workload, batch_id, serialized_requests
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t

METHOD = "/rating.v1.RatingService/StreamUsage"
# Builds, per stream, the serialized requests of a workload (batch b named batch_id(b), on
# stream b % streams). A module-level function (or a partial of one): it is pickled to
# the child process.
RequestBuilder = Callable[[Workload], list[list[bytes]]]
# Every stream its own TCP connection (channels would otherwise share one subchannel).
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)


@dataclass
class ClientResult:
    seconds: float
    records: int  # results received
    batches: int  # acknowledgements received
    statuses: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds

    def figure(self, name: str, label: str, build_seconds: float, **details: Any) -> Figure:
        """The throughput figure of a streamed run, with what every such run reports."""
        return Figure(
            name=name,
            label=label,
            value=self.records_per_second,
            unit=THROUGHPUT_UNIT,
            details={
                "seconds": round(self.seconds, 3),
                "records": self.records,
                "batches": self.batches,
                "client": "child process, pre-serialized requests",
                "client_build_seconds": build_seconds,
                **details,
            },
        )


async def receive(conn: Connection, expected: str) -> Any:
    """The payload of the client process's next message, which must be `expected`; its
    error (with the child's traceback) or death raised as RuntimeError."""
    try:
        kind, payload = await asyncio.to_thread(conn.recv)
    except EOFError:
        raise RuntimeError("the client process died") from None
    if kind == "error":
        raise RuntimeError(f"the client process failed:\n{payload}")
    assert kind == expected, (kind, expected)
    return payload


def close_child(
    conn: Connection, process: multiprocessing.process.BaseProcess, stop: tuple[str, ...] | None
) -> None:
    """End a client process: send it `stop` (if any; a dead one cannot take it), close the
    pipe, and kill it if it has not exited within 10 s."""
    if stop is not None:
        try:
            conn.send(stop)
        except OSError:
            pass
    conn.close()
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join()


class StreamClient:
    """Parent side: start the child (it builds its requests), then `run(address)` once.

    `build` makes the requests (default: the workload's January records, as every
    throughput benchmark sends them)."""

    def __init__(self, workload: Workload, build: RequestBuilder = serialized_requests) -> None:
        self.workload = workload
        self._built: dict[str, Any] | None = None
        self._conn, child_conn = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_child_main,
            args=(child_conn, workload, build),
            name="bench-client",
            daemon=True,
        )
        self._process.start()
        child_conn.close()

    async def ready(self) -> dict[str, Any]:
        """Wait until the child has built every request; returns its build figures (again
        on a later call)."""
        if self._built is None:
            self._built = await self._receive("ready")
        return self._built

    async def run(self, address: str) -> ClientResult:
        await self.ready()
        self._conn.send(("go", address))
        return ClientResult(**await self._receive("done"))

    async def _receive(self, expected: str) -> Any:
        return await receive(self._conn, expected)

    def close(self) -> None:
        close_child(self._conn, self._process, None)


def _child_main(conn: Connection, workload: Workload, build: RequestBuilder) -> None:
    try:
        started = time.perf_counter()
        streams = build(workload)
        conn.send(
            (
                "ready",
                {
                    "build_seconds": round(time.perf_counter() - started, 2),
                    "request_bytes": sum(len(b) for s in streams for b in s),
                },
            )
        )
        _go, address = conn.recv()
        result = asyncio.run(_drive(address, streams, workload))
        conn.send(("done", asdict(result)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


async def _drive(address: str, streams: list[list[bytes]], workload: Workload) -> ClientResult:
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in streams]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)

        async def one_stream(channel: grpc.aio.Channel, requests: list[bytes]) -> list[bytes]:
            call = channel.stream_stream(METHOD)(iter(requests))  # raw bytes both ways
            return [response async for response in call]

        started = time.perf_counter()
        answers = await asyncio.gather(
            *(one_stream(c, s) for c, s in zip(channels, streams, strict=True))
        )
        seconds = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return _check(seconds, answers, workload)


def _check(seconds: float, answers: list[list[bytes]], workload: Workload) -> ClientResult:
    """After the timer: every batch acknowledged in order, one result per record."""
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    records = batches = 0
    for stream, responses in enumerate(answers):
        expected = list(range(stream, workload.batches, workload.streams))
        if len(responses) != len(expected):
            problems.append(f"stream {stream}: {len(responses)} acks for {len(expected)} batches")
        for index, raw in zip(expected, responses, strict=False):
            response = r.StreamUsageResponse.FromString(raw)
            batches += 1
            if response.batch_id != batch_id(index):
                problems.append(f"stream {stream}: ack {response.batch_id}, expected {index}")
            size = min(workload.batch, workload.records - index * workload.batch)
            if len(response.results) != size:
                problems.append(f"{response.batch_id}: {len(response.results)} results")
            for result in response.results:
                statuses[t.RecordStatus.Name(result.status)] += 1
                if result.status != t.RECORD_STATUS_RATED and len(problems) < 20:
                    problems.append(f"{result.record_id}: {result.status} {result.detail}")
            records += len(response.results)
    return ClientResult(seconds, records, batches, dict(statuses), problems[:20])
