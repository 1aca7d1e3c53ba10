"""The settlement worker: closes each account's periods once the late-usage window passed.

A period is due when `now >= period end + late usage window`. For every account with SIMs,
the worker settles every unsettled period from the one containing its earliest
provisioned SIM up to the last due one, oldest first, one transaction per account-period
(`Billing.settle_period`). Periods settled earlier by SettlePeriod are skipped. Accounts
without SIMs are not settled automatically (nothing could be billed but a commitment, and
there is no natural first period); SettlePeriod can still settle them.

`run()` is the production loop: sleep until the earliest due time, settle, repeat.
`run_once(now)` settles what is due at `now`; on a test clock it runs inside every
ClockService.AdvanceTime, after the activation worker. Each run ends by setting
`rating_settlement_overdue_periods`: the account-periods due at `now` and still unsettled
(those whose settlement failed, and the later ones of the same accounts, which wait for
them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import structlog

from service.domain.model import Account, Period
from service.domain.periods import next_period, period_containing
from service.ops.clock import Clock
from service.ops.metrics import Metrics
from service.state.cache import StateCache
from service.usecases.billing import Billing

log = structlog.get_logger("settlement")

# The loop looks again at least this often: a SIM provisioned back-dated into an old
# period can make a period due without anybody waking the worker.
_MAX_SLEEP = timedelta(hours=1)
_RETRY_AFTER = timedelta(seconds=30)


class SettlementWorker:
    def __init__(
        self,
        billing: Billing,
        cache: StateCache,
        clock: Clock,
        late_usage_window: timedelta,
        metrics: Metrics,
        checkpoint: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._billing = billing
        # Run before a run's first settlement: with the usage counters checkpointed, each
        # invoice reads few records past the watermark (docs/settlement.md).
        self._checkpoint = checkpoint
        self._checkpointed = False  # in this run
        self._metrics = metrics
        self._cache = cache
        self._clock = clock
        self._window = late_usage_window
        self._wake = asyncio.Event()
        # Per account: (SIM count, earliest provisioned_at) - SIMs are never deleted and
        # provisioned_at never changes, so the count tells when to look again.
        self._earliest: dict[str, tuple[int, datetime]] = {}
        # Per account: the oldest period not yet known to be settled.
        self._cursor: dict[str, Period] = {}

    def wake(self) -> None:
        """Look again now (e.g. after SIMs were provisioned back-dated)."""
        self._wake.set()

    def due_at(self, period: Period) -> datetime:
        return period.end + self._window

    async def run(self) -> None:
        while True:
            now = self._clock.now()
            due = min(self.next_due(), now + _MAX_SLEEP)
            self._wake.clear()
            await self._clock.wait_until(due, self._wake)
            failed = await self.run_once(self._clock.now())
            if failed:
                await self._clock.wait_until(self._clock.now() + _RETRY_AFTER, self._wake)

    def next_due(self) -> datetime:
        """The earliest time some account's oldest unsettled period becomes due."""
        dues = [
            self.due_at(cursor)
            for account_id in list(self._cache.sims_by_account)
            if (cursor := self._cursor_of(account_id)) is not None
        ]
        return min(dues, default=self._clock.now() + _MAX_SLEEP)

    async def run_once(self, now: datetime) -> int:
        """Settle every period due at `now`; returns the number of account-periods that
        failed (they are retried on the next run; the others are not held back)."""
        started = time.perf_counter()
        settled = failed = overdue = 0
        self._checkpointed = False
        for account_id in sorted(self._cache.sims_by_account):
            try:
                settled += await self._settle_account(account_id, now)
            except Exception:
                # Billing counted and logged it; one account must not block the others.
                failed += 1
                overdue += self._overdue(account_id, now)
        self._metrics.settlement_overdue.set(overdue)
        if settled or failed:
            log.info(
                "settlement run",
                settled=settled,
                failed=failed,
                overdue=overdue,
                seconds=round(time.perf_counter() - started, 3),
            )
        return failed

    def _overdue(self, account_id: str, now: datetime) -> int:
        """The account's periods due at `now` and not settled: from its cursor (the period
        that failed) to the last due one. Only accounts whose settlement failed have any."""
        account = self._cache.accounts[account_id]
        count = 0
        cursor = self._cursor_of(account_id)
        while cursor is not None and self.due_at(cursor) <= now:
            count += (account_id, cursor.name) not in self._cache.settled
            cursor = next_period(cursor, account.timezone, account.billing_day)
        return count

    async def _settle_account(self, account_id: str, now: datetime) -> int:
        settled = 0
        while (cursor := self._cursor_of(account_id)) is not None and self.due_at(cursor) <= now:
            account = self._cache.accounts[account_id]
            if (account_id, cursor.name) not in self._cache.settled:
                await self._checkpoint_once()
                result = await self._billing.settle_period(account, cursor)
                settled += int(result.created)
            self._cursor[account_id] = next_period(cursor, account.timezone, account.billing_day)
        return settled

    async def _checkpoint_once(self) -> None:
        if self._checkpointed or self._checkpoint is None:
            return
        self._checkpointed = True
        try:
            await self._checkpoint()
        except Exception as exc:
            # Settlement stays exact without it (it reads the records past the watermark),
            # only slower; the checkpoint worker counts and logs its own failures.
            log.warning("checkpoint before settlement failed", error=str(exc))

    def _cursor_of(self, account_id: str) -> Period | None:
        iccids = self._cache.sims_by_account.get(account_id)
        if not iccids:
            return None
        known = self._earliest.get(account_id)
        if known is None or known[0] != len(iccids):
            earliest = min(self._cache.sims[iccid].provisioned_at for iccid in iccids)
            self._earliest[account_id] = (len(iccids), earliest)
            cursor = self._cursor.get(account_id)
            if cursor is None or earliest < cursor.start:
                self._cursor[account_id] = self._first_period(
                    self._cache.accounts[account_id], earliest
                )
        return self._cursor[account_id]

    @staticmethod
    def _first_period(account: Account, earliest: datetime) -> Period:
        return period_containing(earliest, account.timezone, account.billing_day)
