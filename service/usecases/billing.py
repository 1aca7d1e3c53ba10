"""Billing use cases: bill previews, settling a period into an invoice, reading invoices.

Settling computes the invoice (pure `compute_invoice`) from the facts stored in
PostgreSQL (`usage_state.period_facts`: SIMs, usage aggregates, the records after the
last checkpoint) and commits it with the period's final aggregate rows in ONE
transaction, all under the shared state lock: no usage record, billing start or
termination of that period can be committed between computing the invoice and closing
the period, and a crash leaves either the whole invoice or none. The facts in memory
must equal PostgreSQL's; a difference is a bug, logged as an error and counted
(`rating_settlement_mismatches_total`). Previews of open periods use memory's. Once `cache.settled`
holds the period, the persister answers its new records PERIOD_CLOSED.

A preview of an open period is computed from what is known now (`final = false`); a
preview of a settled period is the stored invoice (`final = true`): the bill of a closed
period can no longer change, so there is nothing else to preview.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from service.domain.errors import FailedPrecondition, InvalidArgument, NotFound, StorageUnavailable
from service.domain.model import Account, Invoice, Period, Plan, SimPeriodFacts
from service.domain.periods import period_containing, period_named
from service.domain.settlement import compute_invoice
from service.ops.clock import Clock
from service.ops.metrics import Metrics
from service.state.cache import StateCache
from service.state.lock import StateLock
from service.storage import invoices, transactions, usage_state

log = structlog.get_logger("billing")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # invoice amounts travel and are stored as int64


@dataclass(frozen=True, slots=True)
class Settlement:
    invoice: Invoice
    created: bool  # False: the period was settled before (idempotent repeat)


class Billing:
    def __init__(
        self,
        pool: asyncpg.Pool,
        cache: StateCache,
        clock: Clock,
        metrics: Metrics,
        state_lock: StateLock,
        count_committed: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._clock = clock
        self._metrics = metrics
        self._state_lock = state_lock
        self._count_committed = count_committed  # see StateLock

    # --- reads ---------------------------------------------------------------------------------

    async def preview(self, account_id: str, period_name: str = "") -> Invoice:
        """The bill of a period as known now; the stored invoice if it is settled."""
        account = self._account(account_id)
        if period_name:
            period = period_named(period_name, account.timezone, account.billing_day)
        else:
            period = period_containing(self._clock.now(), account.timezone, account.billing_day)
        if (account_id, period.name) in self._cache.settled:
            return await self._stored(account_id, period.name)
        return self._compute(account, period, final=False)

    async def get(self, account_id: str, period_name: str) -> Invoice:
        account = self._account(account_id)
        period = self._period(account, period_name)
        return await self._stored(account_id, period.name)

    async def list(self, account_id: str) -> list[Invoice]:
        """Settled invoices of the account, oldest period first."""
        self._account(account_id)
        async with transactions.storage_errors(), self._pool.acquire() as conn:
            return await invoices.list_invoices(conn, account_id)

    # --- settlement ------------------------------------------------------------------------------

    async def settle(self, account_id: str, period_name: str) -> Settlement:
        """Settle a period that has ended; idempotent (the stored invoice every time)."""
        account = self._account(account_id)
        return await self.settle_period(account, self._period(account, period_name))

    async def settle_period(self, account: Account, period: Period) -> Settlement:
        key = (account.account_id, period.name)
        if key in self._cache.settled:
            return await self._repeat(account.account_id, period.name)
        started = time.perf_counter()
        async with self._state_lock:
            self._count_committed()
            if key in self._cache.settled:  # settled while we waited for the lock
                return await self._repeat(account.account_id, period.name)
            now = self._clock.now()
            if now < period.end:
                raise FailedPrecondition(
                    f"period {period.name} of account {account.account_id!r} ends at "
                    f"{period.end.isoformat()}; it can be settled only after it has ended"
                )
            # The account may have changed (commitment schedule) since the caller read it.
            account = self._cache.accounts[account.account_id]
            try:
                stored, created = await self._commit(account, period, now)
            except (StorageUnavailable, FailedPrecondition) as exc:
                # Expected while PostgreSQL is down, for every due account, or for a bill
                # beyond int64 (a known limit): no traceback each.
                self._metrics.settlements.labels("failed").inc()
                log.warning(
                    "settlement failed",
                    account_id=account.account_id,
                    period=period.name,
                    error=str(exc),
                )
                raise
            except Exception:
                # Not an outage (a bug, a violated constraint): the RPC answers INTERNAL;
                # the worker counts it and retries later.
                self._metrics.settlements.labels("failed").inc()
                log.exception(
                    "settlement failed", account_id=account.account_id, period=period.name
                )
                raise
            self._cache.add_settled([key])
            # Its counters leave memory (they are in PostgreSQL): memory holds open periods.
            self._cache.evict_period(account.account_id, period.name)
        if not created:  # another instance committed first: its invoice is the invoice
            self._metrics.settlements.labels("already_settled").inc()
            return Settlement(stored, created=False)
        elapsed = time.perf_counter() - started
        self._metrics.settlements.labels("settled").inc()
        self._metrics.settlement_seconds.observe(elapsed)
        for line in stored.lines:
            if line.amount_micros > 0:
                self._metrics.invoice_amount.labels(stored.currency, line.kind.name).inc(
                    line.amount_micros
                )
        log.info(
            "period settled",
            account_id=stored.account_id,
            period=stored.period.name,
            currency=stored.currency,
            total_micros=stored.total_micros,
            lines=len(stored.lines),
            sims=len(stored.sims),
            seconds=round(elapsed, 3),
        )
        return Settlement(stored, created=True)

    # --- helpers ---------------------------------------------------------------------------------

    def _account(self, account_id: str) -> Account:
        if not account_id:
            raise InvalidArgument("account_id", "is required")
        return self._cache.account(account_id)

    @staticmethod
    def _period(account: Account, period_name: str) -> Period:
        if not period_name:
            raise InvalidArgument("period", "is required (YYYY-MM)")
        return period_named(period_name, account.timezone, account.billing_day)

    def _compute(
        self, account: Account, period: Period, *, final: bool, settled_at: datetime | None = None
    ) -> Invoice:
        """A preview: the invoice from the facts in memory."""
        return _invoice(
            account,
            self._cache.plans,
            period,
            self._cache.period_facts(account.account_id, period.name),
            final=final,
            settled_at=settled_at,
        )

    async def _commit(
        self, account: Account, period: Period, now: datetime
    ) -> tuple[Invoice, bool]:
        """Compute the invoice from PostgreSQL's facts, store it and the period's final
        aggregate rows in one transaction; check the facts against memory's."""
        plans = self._cache.plans
        in_memory = self._cache.period_facts(account.account_id, period.name)

        async def store(
            conn: asyncpg.Connection,
        ) -> tuple[Invoice, bool, list[SimPeriodFacts]]:
            # Inside the state lock: every committed record is in usage_records, none is
            # being committed, so the stored state is complete (docs/settlement.md).
            facts = await usage_state.period_facts(conn, account.account_id, period.name)
            computed = _invoice(account, plans, period, facts, final=True, settled_at=now)
            stored, created = await invoices.insert_invoice(conn, computed)
            if created:
                # The period's counters as invoiced, final; their raw totals join the SIMs'.
                rows = usage_state.facts_rows(period.name, facts)
                await usage_state.write_aggregates(conn, rows, usage_state.SETTLED_SEQ)
                await usage_state.fold_settled_usage(conn, account.account_id, period.name)
            return stored, created, facts

        stored, created, facts = await transactions.retried(self._pool, store)
        if created:
            self._check_memory(account, period, facts, in_memory)
        return stored, created

    def _check_memory(
        self,
        account: Account,
        period: Period,
        stored: Sequence[SimPeriodFacts],
        in_memory: Sequence[SimPeriodFacts],
    ) -> None:
        """Memory's facts must equal PostgreSQL's: a difference is a bug in counting,
        checkpointing or this read, reported loudly (the invoice is PostgreSQL's)."""
        differing = facts_differ(stored, in_memory)
        if not differing:
            return
        self._metrics.settlement_mismatches.inc()
        log.error(
            "settlement facts differ between memory and PostgreSQL; invoiced PostgreSQL's",
            account_id=account.account_id,
            period=period.name,
            sims=len(differing),
            first=[
                {"iccid": iccid, "postgresql": repr(pg), "memory": repr(mem)}
                for iccid, pg, mem in differing[:5]
            ],
        )

    async def _stored(self, account_id: str, period_name: str) -> Invoice:
        async with transactions.storage_errors(), self._pool.acquire() as conn:
            invoice = await invoices.fetch_invoice(conn, account_id, period_name)
        if invoice is None:
            raise NotFound(f"no invoice for account {account_id!r} period {period_name}")
        return invoice

    async def _repeat(self, account_id: str, period_name: str) -> Settlement:
        invoice = await self._stored(account_id, period_name)
        self._metrics.settlements.labels("already_settled").inc()
        return Settlement(invoice, created=False)


def _invoice(
    account: Account,
    plans: Mapping[str, Plan],
    period: Period,
    facts: Sequence[SimPeriodFacts],
    *,
    final: bool,
    settled_at: datetime | None = None,
) -> Invoice:
    invoice = compute_invoice(account, plans, period, facts, final=final, settled_at=settled_at)
    _check_int64(invoice)
    return invoice


def facts_differ(
    stored: Sequence[SimPeriodFacts], in_memory: Sequence[SimPeriodFacts]
) -> list[tuple[str, SimPeriodFacts | None, SimPeriodFacts | None]]:
    """(iccid, PostgreSQL's facts, memory's facts) of each SIM where the two differ (None:
    the SIM is missing on that side), by ICCID."""
    by_iccid = {sim.iccid: sim for sim in in_memory}
    differing: list[tuple[str, SimPeriodFacts | None, SimPeriodFacts | None]] = []
    for sim in stored:
        mine = by_iccid.pop(sim.iccid, None)
        if mine != sim:
            differing.append((sim.iccid, sim, mine))
    differing.extend((iccid, None, sim) for iccid, sim in by_iccid.items())
    return sorted(differing, key=lambda item: item[0])


def _check_int64(invoice: Invoice) -> None:
    """A bill whose amounts or quantities leave int64 can be neither answered nor stored."""
    for line in invoice.lines:
        for name in ("quantity", "chargeable_quantity", "amount_micros"):
            if not INT64_MIN <= getattr(line, name) <= INT64_MAX:
                raise FailedPrecondition(_beyond_int64(invoice, f"a {line.kind.name} line"))
    if not INT64_MIN <= invoice.total_micros <= INT64_MAX:
        raise FailedPrecondition(_beyond_int64(invoice, "the total"))


def _beyond_int64(invoice: Invoice, what: str) -> str:
    return (
        f"the bill of account {invoice.account_id!r} for period {invoice.period.name} is beyond"
        f" the int64 range: {what} exceeds {INT64_MAX} (micros or units)"
    )
