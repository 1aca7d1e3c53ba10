"""Catalog use cases: create plans (immutable) and create or update accounts."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from service.domain.errors import AlreadyExists, FailedPrecondition
from service.domain.model import Account, Plan
from service.domain.validation import validate_account, validate_plan
from service.ops.clock import Clock
from service.state.cache import StateCache
from service.state.lock import StateLock
from service.storage import catalog, transactions


class Catalog:
    def __init__(
        self,
        pool: asyncpg.Pool,
        cache: StateCache,
        clock: Clock,
        state_lock: StateLock,
        count_committed: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._clock = clock
        self._state_lock = state_lock  # orders catalog writes with every other state change
        self._count_committed = count_committed  # see StateLock

    async def put_plan(self, plan: Plan) -> bool:
        """Store a new plan; True if created, False if an identical plan existed."""
        validate_plan(plan)
        async with self._state_lock:
            self._count_committed()
            existing = self._cache.plans.get(plan.plan_id)
            if existing is None:
                # Not None only if an earlier call committed but its answer was lost.
                existing = await transactions.retried(
                    self._pool, lambda conn: catalog.insert_plan(conn, plan, self._clock.now())
                )
                self._cache.put_plan(existing or plan)
                if existing is None:
                    return True
            if existing == plan:
                return False
            raise AlreadyExists(
                f"plan {plan.plan_id!r} exists with different content; plans are immutable"
            )

    async def put_account(self, account: Account) -> bool:
        """Create or update an account; True if created."""
        validate_account(account, self._cache.plans)
        async with self._state_lock:
            self._count_committed()
            existing = self._cache.accounts.get(account.account_id)
            if existing is not None and self._cache.account_has_sims(account.account_id):
                for name in ("currency", "timezone", "billing_day"):
                    if getattr(existing, name) != getattr(account, name):
                        raise FailedPrecondition(
                            f"account.{name} cannot change once the account has SIMs"
                        )
            await transactions.retried(
                self._pool, lambda conn: catalog.upsert_account(conn, account, self._clock.now())
            )
            self._cache.put_account(account)
            return existing is None
