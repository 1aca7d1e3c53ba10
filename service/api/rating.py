"""RatingService: session authorization, SIM status and usage ingestion."""

from __future__ import annotations

import grpc

from rating.v1 import rating_service_pb2 as pb
from rating.v1 import rating_service_pb2_grpc as pb_grpc
from service.api.status import sim_status_to_proto
from service.cache import StateCache
from service.clock import Clock
from service.errors import InvalidArgument
from service.status import sim_view


class RatingServicer(pb_grpc.RatingServiceServicer):
    def __init__(self, cache: StateCache, clock: Clock) -> None:
        self._cache = cache
        self._clock = clock

    async def GetSimStatus(
        self, request: pb.GetSimStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSimStatusResponse:
        if not request.iccid:
            raise InvalidArgument("iccid", "is required")
        view = sim_view(self._cache, self._clock, request.iccid)
        return pb.GetSimStatusResponse(status=sim_status_to_proto(view))
