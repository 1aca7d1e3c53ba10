"""Baseline A, the transport limit: a no-op StreamUsage server driven by the same client.

A plain `grpc.aio` server in this process (no interceptor, no cache, no database) whose
StreamUsage reads each batch and answers it at once with the same shape of response as
the service: one RecordResult per record, RATED, with rated_quantity and charged filled
in. Its records/s is what gRPC and protobuf alone cost on this machine: the ceiling of
any StreamUsage implementation in one Python process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from bench.client import StreamClient
from bench.context import BenchContext
from bench.registry import Figure, VerificationFailed, benchmark
from bench.workload import rated_quantity
from rating.v1 import rating_service_pb2 as r
from rating.v1 import rating_service_pb2_grpc as r_grpc
from rating.v1 import types_pb2 as t


class NoOpRatingServicer(r_grpc.RatingServiceServicer):
    async def StreamUsage(
        self,
        request_iterator: AsyncIterator[r.StreamUsageRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[r.StreamUsageResponse]:
        async for batch in request_iterator:
            yield r.StreamUsageResponse(
                batch_id=batch.batch_id,
                results=[
                    t.RecordResult(
                        record_id=record.record_id,
                        status=t.RECORD_STATUS_RATED,
                        rated_quantity=rated_quantity(record.quantity),
                        charged=True,
                    )
                    for record in batch.records
                ],
            )


@benchmark("transport", "baseline A: the same client against a no-op gRPC StreamUsage server")
async def transport(ctx: BenchContext) -> list[Figure]:
    workload = ctx.workload
    progress = ctx.progress
    client = StreamClient(workload)
    server = grpc.aio.server()
    try:
        r_grpc.add_RatingServiceServicer_to_server(NoOpRatingServicer(), server)  # type: ignore[abstract]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        with progress.phase(f"transport: client builds {workload.records:,} records"):
            built = await client.ready()
        with (
            progress.phase(
                f"transport: stream {workload.records:,} records over {workload.streams} streams"
            ),
            ctx.profiled("transport"),
            ctx.cpu_meter() as cpu,
        ):
            result = await client.run(f"127.0.0.1:{port}")
    finally:
        await server.stop(2)
        client.close()
    rated = result.statuses.get("RECORD_STATUS_RATED", 0)
    if result.problems or rated != workload.records:
        raise VerificationFailed(f"transport: {rated} RATED; {result.problems}")
    progress.line(f"transport: {result.records_per_second:,.0f} records/s")
    return [
        result.figure(
            "transport",
            "baseline A: no-op gRPC server (transport limit)",
            built["build_seconds"],
            **cpu,
        )
    ]
