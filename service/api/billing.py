"""BillingService: bill previews, settlement and invoices (proto <-> domain only)."""

from __future__ import annotations

import grpc

from rating.v1 import billing_service_pb2 as pb
from rating.v1 import billing_service_pb2_grpc as pb_grpc
from rating.v1 import types_pb2 as types
from service.api.convert import time_to_proto
from service.domain.model import Invoice
from service.usecases.billing import Billing


def invoice_to_proto(invoice: Invoice) -> types.Invoice:
    out = types.Invoice(
        account_id=invoice.account_id,
        period=invoice.period.name,
        currency=invoice.currency,
        billable_sims=invoice.billable_sims,
        lines=[
            types.InvoiceLine(
                kind=line.kind.value,  # type: ignore[arg-type]
                plan_id=line.plan_id,
                usage_type=line.usage_type.value if line.usage_type else 0,  # type: ignore[arg-type]
                quantity=line.quantity,
                chargeable_quantity=line.chargeable_quantity,
                amount_micros=line.amount_micros,
                description=line.description,
            )
            for line in invoice.lines
        ],
        total_micros=invoice.total_micros,
        final=invoice.final,
    )
    time_to_proto(invoice.period.start, out.period_start)
    time_to_proto(invoice.period.end, out.period_end)
    time_to_proto(invoice.settled_at, out.settled_at)
    return out


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
