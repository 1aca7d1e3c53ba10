"""Provisioning use cases: bulk SIM provisioning and the lifecycle transitions.

Lifecycle: PROVISIONED (billing not started) -> ACTIVE (billing started) <-> SUSPENDED
-> TERMINATED. Every change is committed before the cache shows it.

A ProvisionSims commit can fail after COMMIT was sent (PostgreSQL stopped before its
answer arrived): the SIMs may be stored although the caller got UNAVAILABLE and the cache
does not show them. Their ICCIDs are kept "in doubt"; a later call provisioning one of them
reads the stored rows in its own transaction and publishes them instead of inserting them
again (which would be a unique violation, and the retry would never succeed).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.domain.activation import decide_billing_start, started_sim
from service.domain.errors import FailedPrecondition, InvalidArgument, StorageUnavailable
from service.domain.iccid import iccid_problem
from service.domain.limits import CLOCK_SKEW_TOLERANCE
from service.domain.model import Plan, Sim, SimState
from service.domain.periods import next_period, period_containing
from service.ops.clock import Clock
from service.state.cache import StateCache
from service.state.lock import StateLock
from service.storage import transactions
from service.storage.sims import fetch_sims, insert_sims, update_sims

MAX_ICCIDS_PER_CALL = 10_000
# Times a caller gives may run this far ahead of our clock (clock skew between systems).


class ProvisionStatus(enum.Enum):
    CREATED = 1
    ALREADY_PROVISIONED = 2
    CONFLICT = 3
    INVALID_ICCID = 4


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    iccid: str
    status: ProvisionStatus
    detail: str = ""


class Provisioning:
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
        self._state_lock = state_lock
        self._count_committed = count_committed  # see StateLock
        # ICCIDs of provisioning commits whose outcome is unknown (see module doc).
        self._in_doubt: set[str] = set()

    def _not_in_future(self, field: str, when: datetime) -> datetime:
        if when > self._clock.now() + CLOCK_SKEW_TOLERANCE:
            raise InvalidArgument(field, "must not be in the future")
        return when

    async def provision(
        self,
        account_id: str,
        plan_id: str,
        iccids: Sequence[str],
        provisioned_at: datetime | None,
    ) -> list[ProvisionResult]:
        if not account_id:
            raise InvalidArgument("account_id", "is required")
        if not plan_id:
            raise InvalidArgument("plan_id", "is required")
        if len(iccids) > MAX_ICCIDS_PER_CALL:
            raise InvalidArgument("iccids", f"at most {MAX_ICCIDS_PER_CALL} per call")
        at = self._not_in_future("provisioned_at", provisioned_at or self._clock.now())
        account = self._cache.account(account_id)
        plan = self._cache.plan(plan_id)
        if plan.currency != account.currency:
            raise FailedPrecondition(
                f"plan currency {plan.currency} differs from account currency {account.currency}"
            )
        async with self._state_lock:
            self._count_committed()
            results: list[ProvisionResult] = []
            new: dict[str, Sim] = {}
            for iccid in iccids:
                results.append(self._classify(iccid, account_id, plan_id, new))
                if results[-1].status is ProvisionStatus.CREATED:
                    new[iccid] = self._new_sim(iccid, account_id, plan, at)
            if new:
                self._refuse_settled_history(account_id, at, "provisioned_at")
                stored = await self._insert(list(new.values()))
                new.update(stored)
                results = [self._recovered(x, stored, account_id, plan_id) for x in results]
                self._publish(list(new.values()))
            return results

    async def _insert(self, sims: list[Sim]) -> dict[str, Sim]:
        """Insert the SIMs in one transaction; returns those already stored by a commit
        whose answer was lost (they are not inserted again)."""
        doubtful = [sim.iccid for sim in sims if sim.iccid in self._in_doubt]
        committing = False

        async def insert(conn: asyncpg.Connection) -> dict[str, Sim]:
            nonlocal committing
            committing = False
            stored = await fetch_sims(conn, doubtful) if doubtful else {}
            await insert_sims(conn, [s for s in sims if s.iccid not in stored])
            committing = True  # leaving the transaction sends COMMIT
            return stored

        try:
            stored = await transactions.retried(self._pool, insert)
        except StorageUnavailable:
            if committing:
                self._in_doubt.update(sim.iccid for sim in sims)
            raise
        self._in_doubt.difference_update(sim.iccid for sim in sims)
        return stored

    @staticmethod
    def _recovered(
        result: ProvisionResult, stored: dict[str, Sim], account_id: str, plan_id: str
    ) -> ProvisionResult:
        """The result of a SIM a lost-answer commit stored: CREATED if it is what this call
        asks for (no caller has seen it yet), CONFLICT otherwise."""
        sim = stored.get(result.iccid)
        if sim is None or (sim.account_id, sim.plan_id) == (account_id, plan_id):
            return result
        return ProvisionResult(
            result.iccid,
            ProvisionStatus.CONFLICT,
            f"provisioned to account {sim.account_id!r} on plan {sim.plan_id!r}",
        )

    def _classify(
        self, iccid: str, account_id: str, plan_id: str, new: dict[str, Sim]
    ) -> ProvisionResult:
        problem = iccid_problem(iccid)
        if problem is not None:
            return ProvisionResult(iccid, ProvisionStatus.INVALID_ICCID, problem)
        existing = new.get(iccid) or self._cache.sims.get(iccid)
        if existing is None:
            return ProvisionResult(iccid, ProvisionStatus.CREATED)
        if existing.account_id == account_id and existing.plan_id == plan_id:
            return ProvisionResult(iccid, ProvisionStatus.ALREADY_PROVISIONED)
        return ProvisionResult(
            iccid,
            ProvisionStatus.CONFLICT,
            f"provisioned to account {existing.account_id!r} on plan {existing.plan_id!r}",
        )

    def _new_sim(self, iccid: str, account_id: str, plan: Plan, at: datetime) -> Sim:
        """The SIM as provisioned at `at`, its billing started if it already has: at `at` on
        an IMMEDIATE plan, at the activation deadline if that has passed (a SIM provisioned
        back in time). Deciding it here, in the provisioning transaction, makes the answer
        final at once: left to the activation worker, it would wait for the worker's next
        run, which a restart runs at start, so the same calls would leave two states."""
        sim = Sim(iccid, account_id, plan.plan_id, at, SimState.PROVISIONED)
        decided = decide_billing_start(plan, at, None, self._clock.now())
        return sim if decided is None else started_sim(sim, *decided)

    async def suspend(self, iccid: str) -> Sim:
        def change(sim: Sim) -> Sim:
            if sim.state is SimState.SUSPENDED:
                return sim
            if sim.state is not SimState.ACTIVE:
                raise FailedPrecondition(f"SIM is {sim.state.name}; only ACTIVE SIMs suspend")
            return dataclasses.replace(
                sim, state=SimState.SUSPENDED, suspended_at=self._clock.now()
            )

        return await self._transition(iccid, change)

    async def resume(self, iccid: str) -> Sim:
        def change(sim: Sim) -> Sim:
            if sim.state is SimState.ACTIVE:
                return sim
            if sim.state is not SimState.SUSPENDED:
                raise FailedPrecondition(f"SIM is {sim.state.name}; only SUSPENDED SIMs resume")
            return dataclasses.replace(sim, state=SimState.ACTIVE, suspended_at=None)

        return await self._transition(iccid, change)

    async def terminate(self, iccid: str, effective_at: datetime | None) -> Sim:
        at = self._not_in_future("effective_at", effective_at or self._clock.now())

        def change(sim: Sim) -> Sim:
            if sim.state is SimState.TERMINATED:
                return sim  # a retried termination changes nothing
            if at < sim.provisioned_at:
                raise InvalidArgument("effective_at", "must not be before provisioned_at")
            self._refuse_settled_history(sim.account_id, at, "effective_at")
            return dataclasses.replace(sim, state=SimState.TERMINATED, terminated_at=at)

        return await self._transition(iccid, change)

    def _refuse_settled_history(self, account_id: str, at: datetime, field: str) -> None:
        """A SIM provisioned or terminated at `at` changes the billed days of every period
        from the one containing `at` on; refuse if one of them is settled: settled invoices
        never change, and the SIM's history must keep agreeing with them."""
        account = self._cache.account(account_id)
        period = period_containing(at, account.timezone, account.billing_day)
        now = self._clock.now()
        while period.start <= now:
            if (account_id, period.name) in self._cache.settled:
                raise FailedPrecondition(
                    f"{field} {at.isoformat()} reaches settled period {period.name}; "
                    "settled invoices never change"
                )
            period = next_period(period, account.timezone, account.billing_day)

    async def _transition(self, iccid: str, change: Callable[[Sim], Sim]) -> Sim:
        if not iccid:
            raise InvalidArgument("iccid", "is required")
        async with self._state_lock:
            self._count_committed()
            sim = self._cache.sim(iccid)
            changed = change(sim)
            if changed is sim:
                return sim
            await transactions.retried(self._pool, lambda conn: update_sims(conn, [changed]))
            self._publish([changed])
            return changed

    def _publish(self, sims: Sequence[Sim]) -> None:
        self._cache.put_sims(sims)
