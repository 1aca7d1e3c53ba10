"""BillingService: bill previews, settlement and invoices (the conversions are in `convert`)."""

from __future__ import annotations

import grpc

from rating.v1 import billing_service_pb2 as pb
from rating.v1 import billing_service_pb2_grpc as pb_grpc
from service.api.convert import invoice_to_proto
from service.usecases.billing import Billing


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(self, billing: Billing) -> None:
        self._billing = billing

    async def GetBillPreview(
        self, request: pb.GetBillPreviewRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBillPreviewResponse:
        invoice = await self._billing.preview(request.account_id, request.period)
        return pb.GetBillPreviewResponse(invoice=invoice_to_proto(invoice))

    async def SettlePeriod(
        self, request: pb.SettlePeriodRequest, context: grpc.aio.ServicerContext
    ) -> pb.SettlePeriodResponse:
        settlement = await self._billing.settle(request.account_id, request.period)
        return pb.SettlePeriodResponse(invoice=invoice_to_proto(settlement.invoice))

    async def GetInvoice(
        self, request: pb.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInvoiceResponse:
        invoice = await self._billing.get(request.account_id, request.period)
        return pb.GetInvoiceResponse(invoice=invoice_to_proto(invoice))

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInvoicesResponse:
        invoices = await self._billing.list(request.account_id)
        return pb.ListInvoicesResponse(invoices=[invoice_to_proto(i) for i in invoices])
