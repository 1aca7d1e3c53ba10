"""Period close: the settlement worker invoices 1,000 accounts of 100 SIMs each.

Set-up (not timed): a fresh database, `Application` on the test clock at `CLOCK_START`
(2026-02-01, so January has ended but is not yet due), the ingestion benchmark's plan
(IMMEDIATE, ALWAYS, DAILY, DATA with 10 MiB included), `sims` / `SIMS_PER_ACCOUNT`
accounts, each with a January commitment (`MIN_SIMS` billable SIMs, `MIN_SPEND` EUR) so
every kind of invoice line is computed, SIM i provisioned at 2026-01-01 into account
i // `SIMS_PER_ACCOUNT`. Then the ingestion workload (`records` DATA records of January
over the SIMs at random) through StreamUsage from the child-process client; every record
must come back RATED.

Timed: one ClockService.AdvanceTime to the end of January + the late-usage window
(default 1 day); it returns after the settlement worker settled every due account-period,
one transaction each: 1,000 invoices for 2026-01. Figures: invoices per second over that
call and the mean time per account-period from rating_settlement_seconds (compute +
commit, measured by Billing, excluding the wait for the state lock). Afterwards: one
invoice per account in `invoices`, rating_settlements_total{result="settled"} = accounts,
every invoice bills its 100 SIMs, and the USAGE lines add up to the rated quantity of
every stored record. And every account's invoice, read through BillingService.GetInvoice,
equals the one `expected_invoice` computes from the records sent and the contract
(docs/settlement.md), line by line: the subscription of its SIMs for the
whole month, the USAGE line (rated quantity, the part above each SIM's 10 MiB, priced and
rounded once half-up to cents), the SIM-commitment shortfall (120 SIMs at the plan's fee)
and the MINIMUM_SPEND_TRUE_UP that brings the total to the 500 EUR minimum, and the total.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from fractions import Fraction

import asyncpg
import grpc

from bench.client import StreamClient
from bench.context import BenchContext
from bench.ingestion import PLAN, commit_figures
from bench.registry import Figure, VerificationFailed, benchmark
from bench.workload import (
    CLOCK_START,
    PERIOD,
    PROVISIONED_AT,
    Workload,
    rated_quantity,
    records,
    service_settings,
    sim_iccids,
)
from rating.v1 import billing_service_pb2 as b
from rating.v1 import billing_service_pb2_grpc as b_grpc
from rating.v1 import catalog_service_pb2 as c
from rating.v1 import catalog_service_pb2_grpc as c_grpc
from rating.v1 import clock_service_pb2 as k
from rating.v1 import clock_service_pb2_grpc as k_grpc
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import provisioning_service_pb2_grpc as p_grpc
from rating.v1 import types_pb2 as t
from service.app import Application
from service.ops.metrics import Metrics

SIMS_PER_ACCOUNT = 100
MIN_SIMS = 120  # January commitment: 20 short of the 100 SIMs each account has
MIN_SPEND = 500_000_000  # 500 EUR: above what the usage and fees of an account add up to


CENT = 10_000  # micros in a minor unit of EUR
# An invoice line: (kind, plan_id, usage_type, quantity, chargeable_quantity, amount_micros).
Line = tuple[int, str, int, int, int, int]
# The positions of a line the contract does not define, by kind: not compared (-1).
_UNDEFINED: dict[int, tuple[int, ...]] = {
    t.LINE_KIND_SUBSCRIPTION: (4,),
    t.LINE_KIND_SIM_COMMITMENT_SHORTFALL: (4,),
    t.LINE_KIND_MINIMUM_SPEND_TRUE_UP: (3, 4),
}


def _compared(line: Line) -> Line:
    """`line` with the positions its kind leaves undefined set to -1."""
    undefined = _UNDEFINED.get(line[0], ())
    kind, plan_id, usage_type, quantity, chargeable, amount = line
    return (
        kind,
        plan_id,
        usage_type,
        -1 if 3 in undefined else quantity,
        -1 if 4 in undefined else chargeable,
        amount,
    )


PROBLEMS_SHOWN = 5


def account_id(n: int) -> str:
    return f"bench-account-{n:05d}"


def accounts_of(workload: Workload) -> int:
    return -(-workload.sims // SIMS_PER_ACCOUNT)


async def provision(channel: grpc.aio.Channel, workload: Workload) -> None:
    """The plan; per account the account and its SIMs (one ProvisionSims call)."""
    catalog = c_grpc.CatalogServiceStub(channel)
    provisioning = p_grpc.ProvisioningServiceStub(channel)
    await catalog.PutPlan(c.PutPlanRequest(plan=PLAN))
    commitment = t.CommitmentStep(
        effective_period=PERIOD,
        min_billable_sims=MIN_SIMS,
        sim_commitment_plan_id=PLAN.plan_id,
        min_spend_micros=MIN_SPEND,
    )
    iccids = sim_iccids(workload)
    for n in range(accounts_of(workload)):
        account = t.Account(
            account_id=account_id(n), currency="EUR", commitment_schedule=[commitment]
        )
        await catalog.PutAccount(c.PutAccountRequest(account=account))
        request = p.ProvisionSimsRequest(
            account_id=account.account_id,
            plan_id=PLAN.plan_id,
            iccids=iccids[n * SIMS_PER_ACCOUNT : (n + 1) * SIMS_PER_ACCOUNT],
        )
        request.provisioned_at.FromDatetime(PROVISIONED_AT)
        response = await provisioning.ProvisionSims(request, timeout=120)
        created = sum(1 for x in response.results if x.status == p.PROVISION_STATUS_CREATED)
        if created != len(request.iccids):
            raise VerificationFailed(f"provisioned {created} of {len(request.iccids)} SIMs")


async def stored_facts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """SELECT count(*) AS invoices,
                      count(*) FILTER (WHERE (body->>'billable_sims')::int = $2) AS full_sims,
                      (SELECT count(*) FROM invoices i, jsonb_array_elements(i.body->'lines') l
                        WHERE i.period = $1 AND l->>'kind' = 'MINIMUM_SPEND_TRUE_UP')
                        AS true_ups,
                      (SELECT sum((l->>'quantity')::bigint)
                         FROM invoices i, jsonb_array_elements(i.body->'lines') l
                        WHERE i.period = $1 AND l->>'kind' = 'USAGE') AS invoiced_quantity
                 FROM invoices WHERE period = $1""",
            PERIOD,
            SIMS_PER_ACCOUNT,
        )
        rated = await conn.fetchval("SELECT sum(rated_quantity) FROM usage_records")
        records = await conn.fetchval("SELECT count(*) FROM usage_records")
    finally:
        await conn.close()
    assert row is not None
    return {
        "invoices": row["invoices"],
        "invoices_billing_all_sims": row["full_sims"],
        "true_up_lines": row["true_ups"],
        "invoiced_usage_quantity": int(row["invoiced_quantity"] or 0),
        "rated_quantity": int(rated or 0),
        "usage_records_rows": records,
    }


def _cents(amount: Fraction) -> int:
    """Rounded once, half-up, to whole cents, in micros."""
    return math.floor(amount / CENT + Fraction(1, 2)) * CENT


def expected_invoices(workload: Workload) -> list[list[Line]]:
    """Per account, the lines of its January invoice as (kind, plan_id, usage_type,
    quantity, chargeable_quantity, amount_micros), from the records sent and the contract:
    every SIM billed the whole month (IMMEDIATE, provisioned at the period's start), no
    proration; usage above each SIM's own allowance priced at the one flat tier;
    commitment shortfall at the plan's full fee; the true-up to the minimum spend. What
    the contract leaves undefined (a true-up's quantities, the chargeable quantity of a
    subscription or shortfall line) is -1, and not compared."""
    rate = PLAN.usage_rates[0]
    (tier,) = rate.tiers
    assert tier.up_to_quantity == 0  # one unbounded tier
    rated = [0] * workload.sims
    for rec in records(workload):
        rated[rec.sim] += rated_quantity(rec.quantity)
    fee = PLAN.subscription_fee_micros
    invoices: list[list[Line]] = []
    for n in range(accounts_of(workload)):
        sims = range(n * SIMS_PER_ACCOUNT, min(workload.sims, (n + 1) * SIMS_PER_ACCOUNT))
        billable = len(sims)
        lines: list[Line] = [
            (t.LINE_KIND_SUBSCRIPTION, PLAN.plan_id, 0, billable, -1, billable * fee)
        ]
        used = sum(rated[i] for i in sims)
        if used:
            chargeable = sum(max(0, rated[i] - rate.included_quantity) for i in sims)
            price = _cents(Fraction(chargeable * tier.price_micros, rate.unit_quantity))
            lines.append(
                (t.LINE_KIND_USAGE, PLAN.plan_id, t.USAGE_TYPE_DATA, used, chargeable, price)
            )
        short = max(0, MIN_SIMS - billable)
        if short:
            lines.append(
                (t.LINE_KIND_SIM_COMMITMENT_SHORTFALL, PLAN.plan_id, 0, short, -1, short * fee)
            )
        subtotal = sum(line[-1] for line in lines)
        if subtotal < MIN_SPEND:
            lines.append((t.LINE_KIND_MINIMUM_SPEND_TRUE_UP, "", 0, -1, -1, MIN_SPEND - subtotal))
        invoices.append(lines)
    return invoices


async def check_invoices(
    channel: grpc.aio.Channel, expected: Sequence[list[Line]]
) -> dict[str, int]:
    """Every account's invoice (GetInvoice) against `expected`: its lines, billable SIMs,
    total, finality. Raises VerificationFailed naming the first differences."""
    billing = b_grpc.BillingServiceStub(channel)
    problems: list[str] = []
    wrong = true_ups = 0
    for n, lines in enumerate(expected):
        response = await billing.GetInvoice(
            b.GetInvoiceRequest(account_id=account_id(n), period=PERIOD), timeout=60
        )
        invoice = response.invoice
        got = [
            _compared(
                (
                    line.kind,
                    line.plan_id,
                    line.usage_type,
                    line.quantity,
                    line.chargeable_quantity,
                    line.amount_micros,
                )
            )
            for line in invoice.lines
        ]
        billable = lines[0][3]
        total = sum(line[-1] for line in lines)
        facts = (sorted(got), invoice.billable_sims, invoice.total_micros, invoice.final)
        if facts != (sorted(lines), billable, total, True):
            wrong += 1
            if len(problems) < PROBLEMS_SHOWN:
                problems.append(
                    f"{account_id(n)}: lines {got}, billable {invoice.billable_sims}, total"
                    f" {invoice.total_micros}, final {invoice.final}; expected lines {lines},"
                    f" billable {billable}, total {total}, final True"
                )
        true_ups += any(line[0] == t.LINE_KIND_MINIMUM_SPEND_TRUE_UP for line in lines)
    if wrong:
        raise VerificationFailed(
            f"settlement: {wrong} of {len(expected)} invoices differ from the expected: "
            + "; ".join(problems)
        )
    return {"invoices_as_expected": len(expected), "expected_true_ups": true_ups}


def verify(facts: dict[str, int], settled: float, accounts: int, workload: Workload) -> None:
    problems = []
    if facts["usage_records_rows"] != workload.records:
        problems.append(f"usage_records holds {facts['usage_records_rows']} rows")
    if facts["invoices"] != accounts:
        problems.append(f"{facts['invoices']} invoices for {PERIOD}, expected {accounts}")
    if settled != accounts:
        problems.append(f'rating_settlements_total{{result="settled"}} = {settled}')
    if workload.sims % SIMS_PER_ACCOUNT == 0 and facts["invoices_billing_all_sims"] != accounts:
        problems.append(f"{facts['invoices_billing_all_sims']} invoices bill all their SIMs")
    if facts["invoiced_usage_quantity"] != facts["rated_quantity"]:
        problems.append(
            f"USAGE lines invoice {facts['invoiced_usage_quantity']} units,"
            f" the records were rated {facts['rated_quantity']}"
        )
    if problems:
        raise VerificationFailed("settlement: " + "; ".join(problems))


@benchmark("settlement", "period close: the settlement worker invoices every account")
async def settlement(ctx: BenchContext) -> list[Figure]:
    workload = ctx.workload
    progress = ctx.progress
    accounts = accounts_of(workload)
    client = StreamClient(workload)  # builds its requests while we set the service up
    with progress.phase("settlement: expected invoices from the records"):
        expected = expected_invoices(workload)
    try:
        async with ctx.fresh_database() as url:
            metrics = Metrics()
            app = Application(service_settings(url), metrics)
            sample = metrics.registry.get_sample_value
            with progress.phase("settlement: start service"):
                await app.start()
            try:
                address = f"127.0.0.1:{app.port}"
                async with grpc.aio.insecure_channel(address) as channel:
                    with progress.phase(
                        f"settlement: provision {accounts:,} accounts, {workload.sims:,} SIMs"
                    ):
                        await provision(channel, workload)
                    with progress.phase(f"settlement: client builds {workload.records:,} records"):
                        await client.ready()
                    with progress.phase(f"settlement: stream {workload.records:,} records"):
                        result = await client.run(address)
                    rated = result.statuses.get("RECORD_STATUS_RATED", 0)
                    if result.problems or rated != workload.records:
                        raise VerificationFailed(
                            f"usage: {rated} of {workload.records} RATED: {result.statuses}"
                            f" {result.problems}"
                        )
                    ingest = commit_figures(metrics)
                    await ctx.checkpoint(url)
                    due = CLOCK_START + app.settings.late_usage_window
                    request = k.AdvanceTimeRequest()
                    request.to.FromDatetime(due)
                    with (
                        progress.phase(
                            f"settlement: AdvanceTime to {due.isoformat()}"
                            f" settles {accounts:,} account-periods"
                        ),
                        ctx.profiled("settlement"),
                        ctx.cpu_meter() as cpu,
                    ):
                        started = time.perf_counter()
                        await k_grpc.ClockServiceStub(channel).AdvanceTime(request, timeout=3600)
                        seconds = time.perf_counter() - started
                    with progress.phase(f"settlement: check {accounts:,} invoices"):
                        checked = await check_invoices(channel, expected)
            finally:
                await app.stop()
            with progress.phase("settlement: verify"):
                facts = await stored_facts(url)
                settled = sample("rating_settlements_total", {"result": "settled"}) or 0.0
                verify(facts, settled, accounts, workload)
    finally:
        client.close()
    count = sample("rating_settlement_seconds_count") or 0.0
    mean_ms = 1000 * (sample("rating_settlement_seconds_sum") or 0.0) / count if count else 0.0
    rate = accounts / seconds
    progress.line(
        f"settlement: {accounts:,} invoices in {seconds:.2f}s ({rate:,.1f} invoices/s,"
        f" mean {mean_ms:.1f} ms per account-period)"
    )
    details = {
        "seconds": round(seconds, 3),
        "accounts": accounts,
        "sims": workload.sims,
        "usage_records": workload.records,
        "mean_settlement_ms": round(mean_ms, 2),
        "settlements_observed": count,
        **facts,
        **checked,
        **cpu,
        "ingest_group_commits": ingest["group_commits"],
    }
    return [
        Figure(
            name="settlement",
            label=f"settlement of {accounts:,} account-periods",
            value=rate,
            unit="invoices/s",
            details=details,
        ),
        Figure(
            name="settlement_per_account",
            label="settlement, mean per account-period",
            value=mean_ms,
            unit="ms",
            details={"source": "rating_settlement_seconds sum / count", "count": count},
        ),
    ]
