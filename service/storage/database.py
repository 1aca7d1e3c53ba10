"""PostgreSQL: the embedded server, the connection pool and the schema migrations.

Migrations are numbered SQL files in `service/storage/migrations/`, applied in order at start,
each in its own transaction, under an advisory lock so instances starting together
do not race; applying them again changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from service.storage.timestamptz_codec import decode_timestamptz, encode_timestamptz

log = structlog.get_logger("db")


async def init_connection(conn: asyncpg.Connection) -> None:
    """Every connection's codecs: jsonb as Python values, timestamptz in binary through
    `timestamptz_codec` (the COPY of usage_records spent most of its time in asyncpg's)."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec(
        "timestamptz",
        encoder=encode_timestamptz,
        decoder=decode_timestamptz,
        schema="pg_catalog",
        format="binary",
    )


_MIGRATION_LOCK_KEY = 0x51A7_0001  # advisory lock id of the migration runner
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found = []
    for entry in resources.files("service.storage.migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection, *, until: int | None = None) -> list[str]:
    """Apply the migrations not yet applied (those up to version `until` if given: tests
    build a database of an older schema); return their names."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in migrations():
            if migration.version in done or (until is not None and migration.version > until):
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    if applied:
        log.info("migrations applied", migrations=applied)
    return applied


def start_embedded(data_dir: Path) -> Any:
    """Start (or reuse) the embedded PostgreSQL under `data_dir`; blocking, run in a thread.

    The server keeps running after this process exits, so a restart (even after kill -9)
    finds its data and its server where it left them.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: only the embedded mode needs it

    data_dir.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(data_dir.resolve(), cleanup_mode=None)  # type: ignore[attr-defined]


async def embedded_url(data_dir: Path) -> str:
    server = await asyncio.to_thread(start_embedded, data_dir)
    url: str = server.get_uri()
    return url


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=60,
        timeout=10,
        init=init_connection,
        # Short statements over indexes: JIT compilation costs more than it saves (0.8 s of
        # a settlement's 2.7 s statement on 1,000,000 SIMs, before its plan was fixed).
        server_settings={"jit": "off"},
    )
    return pool
