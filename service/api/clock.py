"""ClockService: read and advance the test clock."""

from __future__ import annotations

import grpc

from rating.v1 import clock_service_pb2 as pb
from rating.v1 import clock_service_pb2_grpc as pb_grpc
from service.api.convert import time_from_proto
from service.domain.errors import FailedPrecondition, InvalidArgument
from service.ops.clock import Clock, TestClock


class ClockServicer(pb_grpc.ClockServiceServicer):
    """Listed by reflection always; on the system clock every call is FAILED_PRECONDITION."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def _test_clock(self) -> TestClock:
        if not isinstance(self._clock, TestClock):
            raise FailedPrecondition(
                "the service runs on the system clock; start it with RATING_CLOCK=test"
            )
        return self._clock

    async def GetTime(
        self, request: pb.GetTimeRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTimeResponse:
        out = pb.GetTimeResponse()
        out.now.FromDatetime(self._test_clock().now())
        return out

    async def AdvanceTime(
        self, request: pb.AdvanceTimeRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdvanceTimeResponse:
        clock = self._test_clock()
        if not request.HasField("to"):
            raise InvalidArgument("to", "is required")
        now = await clock.advance_to(time_from_proto(request.to, "to"))
        out = pb.AdvanceTimeResponse()
        out.now.FromDatetime(now)
        return out
