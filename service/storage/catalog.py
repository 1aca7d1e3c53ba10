"""Plans and accounts."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from service.domain.model import (
    Account,
    Plan,
)
from service.storage import plan_codec


async def load_plans(conn: asyncpg.Connection) -> list[Plan]:
    rows = await conn.fetch("SELECT body FROM plans ORDER BY plan_id")
    return [plan_codec.plan_from_json(row["body"]) for row in rows]


async def insert_plan(conn: asyncpg.Connection, plan: Plan, now: datetime) -> Plan | None:
    """Insert a new plan; if one with its id is stored already, return that one instead."""
    inserted = await conn.fetchval(
        """INSERT INTO plans (plan_id, currency, body, created_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (plan_id) DO NOTHING RETURNING true""",
        plan.plan_id,
        plan.currency,
        plan_codec.plan_to_json(plan),
        now,
    )
    if inserted:
        return None
    body = await conn.fetchval("SELECT body FROM plans WHERE plan_id = $1", plan.plan_id)
    return plan_codec.plan_from_json(body)


async def load_accounts(conn: asyncpg.Connection) -> list[Account]:
    rows = await conn.fetch(
        "SELECT account_id, currency, timezone, billing_day, commitment_schedule"
        " FROM accounts ORDER BY account_id"
    )
    return [
        Account(
            account_id=row["account_id"],
            currency=row["currency"],
            timezone=row["timezone"],
            billing_day=row["billing_day"],
            commitment_schedule=plan_codec.schedule_from_json(row["commitment_schedule"]),
        )
        for row in rows
    ]


async def upsert_account(conn: asyncpg.Connection, account: Account, now: datetime) -> None:
    await conn.execute(
        """INSERT INTO accounts (account_id, currency, timezone, billing_day,
                                 commitment_schedule, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $6)
           ON CONFLICT (account_id) DO UPDATE SET
               currency = EXCLUDED.currency, timezone = EXCLUDED.timezone,
               billing_day = EXCLUDED.billing_day,
               commitment_schedule = EXCLUDED.commitment_schedule,
               updated_at = EXCLUDED.updated_at""",
        account.account_id,
        account.currency,
        account.timezone,
        account.billing_day,
        plan_codec.schedule_to_json(account.commitment_schedule),
        now,
    )
