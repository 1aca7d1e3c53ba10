"""Schema migrations: applied once, idempotently, safely from instances starting together."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from service.storage import database
from tests.conftest import _with_database


async def test_concurrent_migrations_apply_each_file_once(server_url: str) -> None:
    name = f"simrating_migrations_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conns = [await asyncpg.connect(_with_database(server_url, name)) for _ in range(4)]
        try:
            applied = await asyncio.gather(*(database.migrate(conn) for conn in conns))
            names = [m.name for m in database.migrations()]
            # Exactly one instance applied everything; the others found nothing to do.
            assert sorted(applied, key=len) == [[], [], [], names]
            assert await database.migrate(conns[0]) == []
            rows = await conns[0].fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
            assert [(r["version"], r["name"]) for r in rows] == [
                (m.version, m.name) for m in database.migrations()
            ]
        finally:
            for conn in conns:
                await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
