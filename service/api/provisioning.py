"""ProvisioningService: bulk provisioning and SIM lifecycle."""

from __future__ import annotations

import grpc

from rating.v1 import provisioning_service_pb2 as pb
from rating.v1 import provisioning_service_pb2_grpc as pb_grpc
from rating.v1 import types_pb2
from service.api import convert
from service.ops.clock import Clock
from service.state.cache import StateCache
from service.usecases.provisioning import Provisioning
from service.usecases.sim_status import sim_view


class ProvisioningServicer(pb_grpc.ProvisioningServiceServicer):
    def __init__(self, provisioning: Provisioning, cache: StateCache, clock: Clock) -> None:
        self._provisioning = provisioning
        self._cache = cache
        self._clock = clock

    def _status(self, iccid: str) -> types_pb2.SimStatus:
        return convert.sim_status_to_proto(sim_view(self._cache, self._clock, iccid))

    async def ProvisionSims(
        self, request: pb.ProvisionSimsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ProvisionSimsResponse:
        results = await self._provisioning.provision(
            request.account_id,
            request.plan_id,
            list(request.iccids),
            convert.optional_time(request, "provisioned_at", "provisioned_at"),
        )
        return pb.ProvisionSimsResponse(
            results=[
                pb.ProvisionResult(iccid=r.iccid, status=r.status.value, detail=r.detail)  # type: ignore[arg-type]
                for r in results
            ]
        )

    async def SuspendSim(
        self, request: pb.SuspendSimRequest, context: grpc.aio.ServicerContext
    ) -> pb.SuspendSimResponse:
        sim = await self._provisioning.suspend(request.iccid)
        return pb.SuspendSimResponse(status=self._status(sim.iccid))

    async def ResumeSim(
        self, request: pb.ResumeSimRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeSimResponse:
        sim = await self._provisioning.resume(request.iccid)
        return pb.ResumeSimResponse(status=self._status(sim.iccid))

    async def TerminateSim(
        self, request: pb.TerminateSimRequest, context: grpc.aio.ServicerContext
    ) -> pb.TerminateSimResponse:
        sim = await self._provisioning.terminate(
            request.iccid, convert.optional_time(request, "effective_at", "effective_at")
        )
        return pb.TerminateSimResponse(status=self._status(sim.iccid))
