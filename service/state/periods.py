"""PeriodLookup: the account period of an instant, for ingestion's record checks and the
session-start reads (AuthorizeSession, GetSimStatus), each with its own lookup."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from service.domain.model import Account
from service.domain.periods import period_containing


class PeriodLookup:
    """period_containing() for many records: remembers each account's recent periods."""

    def __init__(self) -> None:
        # By account id, with the Account the periods were computed for: an updated account
        # (a new object) starts afresh. Hashing the frozen Account itself would be slow.
        self._known: dict[str, tuple[Account, list[tuple[datetime, datetime, str]]]] = {}

    def name(self, account: Account, instant: datetime) -> str:
        return self.find(account, instant)[2]

    def find(self, account: Account, instant: datetime) -> tuple[datetime, datetime, str]:
        """(start, end, name) of the account's period containing `instant`, the bounds in
        UTC: the instants compared with them (event times, the clock) are in UTC, and two
        datetimes in different time zones compare through both zones' utcoffset(): 0.6-1.7 us
        a comparison, against ~0.005 us in one zone (docs/performance.md, "Fifth round")."""
        entry = self._known.get(account.account_id)
        if entry is None or entry[0] is not account:
            entry = self._known[account.account_id] = (account, [])
        known = entry[1]
        for bounds in known:
            if bounds[0] <= instant < bounds[1]:
                return bounds
        period = period_containing(instant, account.timezone, account.billing_day)
        # Interned, as SimUsage's counters hold it: matching a period is an identity test.
        bounds = (period.start.astimezone(UTC), period.end.astimezone(UTC), sys.intern(period.name))
        known.append(bounds)
        if len(known) > 24:
            del known[0]
        return bounds
