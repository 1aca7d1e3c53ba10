"""ClockService: read and advance the test clock (served only on a test clock)."""

from __future__ import annotations

import grpc
from rating.v1 import clock_service_pb2 as pb
from rating.v1 import clock_service_pb2_grpc as pb_grpc

from service.api.convert import time_from_proto
from service.clock import TestClock
from service.errors import InvalidArgument


class ClockServicer(pb_grpc.ClockServiceServicer):
    def __init__(self, clock: TestClock) -> None:
        self._clock = clock

    def _now(self) -> pb.GetTimeResponse:
        out = pb.GetTimeResponse()
        out.now.FromDatetime(self._clock.now())
        return out

    async def GetTime(
        self, request: pb.GetTimeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTimeResponse:
        return self._now()

    async def AdvanceTime(
        self, request: pb.AdvanceTimeRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdvanceTimeResponse:
        if not request.HasField("to"):
            raise InvalidArgument("to", "is required")
        now = await self._clock.advance_to(time_from_proto(request.to, "to"))
        out = pb.AdvanceTimeResponse()
        out.now.FromDatetime(now)
        return out
