"""CatalogService: plans and accounts."""

from __future__ import annotations

import grpc

from rating.v1 import catalog_service_pb2 as pb
from rating.v1 import catalog_service_pb2_grpc as pb_grpc
from service.api import convert
from service.domain.errors import InvalidArgument
from service.state.cache import StateCache
from service.usecases.catalog import Catalog


class CatalogServicer(pb_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog, cache: StateCache) -> None:
        self._catalog = catalog
        self._cache = cache

    async def PutPlan(
        self, request: pb.PutPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutPlanResponse:
        if not request.HasField("plan"):
            raise InvalidArgument("plan", "is required")
        plan = convert.plan_from_proto(request.plan)
        created = await self._catalog.put_plan(plan)
        return pb.PutPlanResponse(plan=convert.plan_to_proto(plan), created=created)

    async def GetPlan(
        self, request: pb.GetPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPlanResponse:
        if not request.plan_id:
            raise InvalidArgument("plan_id", "is required")
        return pb.GetPlanResponse(plan=convert.plan_to_proto(self._cache.plan(request.plan_id)))

    async def ListPlans(
        self, request: pb.ListPlansRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPlansResponse:
        plans = sorted(self._cache.plans.values(), key=lambda p: p.plan_id)
        return pb.ListPlansResponse(plans=[convert.plan_to_proto(p) for p in plans])

    async def PutAccount(
        self, request: pb.PutAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutAccountResponse:
        if not request.HasField("account"):
            raise InvalidArgument("account", "is required")
        account = convert.account_from_proto(request.account)
        created = await self._catalog.put_account(account)
        return pb.PutAccountResponse(account=convert.account_to_proto(account), created=created)

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountResponse:
        if not request.account_id:
            raise InvalidArgument("account_id", "is required")
        account = self._cache.account(request.account_id)
        return pb.GetAccountResponse(account=convert.account_to_proto(account))
