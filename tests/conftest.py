"""Fixtures: a PostgreSQL per test run (RATING_TEST_DATABASE_URL or embedded pgserver),
a fresh database per test cloned from a migrated template, and real gRPC servers."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from hypothesis import settings

from service.app import Application
from service.ops.metrics import Metrics
from service.ops.settings import Settings
from service.storage import database
from tests.support import T0, Stubs
from tests.support.postgres import create_database, with_database

RUN_ID = uuid.uuid4().hex[:8]

# Property tests run five times as many examples in CI (CI=true) as the default a local
# `make test` keeps; no per-example deadline there, a busy runner is not a slow rule.
# HYPOTHESIS_PROFILE=ci (or default) chooses one anywhere.
settings.register_profile("ci", max_examples=500, deadline=None)
settings.load_profile(
    os.environ.get(
        "HYPOTHESIS_PROFILE",
        "ci" if os.environ.get("CI", "").lower() == "true" else "default",
    )
)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a maintenance database on the server the tests use."""
    external = os.environ.get("RATING_TEST_DATABASE_URL")
    if external:
        yield external
        return
    import pgserver

    # Not under pytest's tmp_path: concurrent pytest runs reset its base to mode 0700, which
    # locks out the unprivileged user pgserver runs PostgreSQL as when we are root.
    base = Path(tempfile.mkdtemp(prefix="simrating-test-pg-"))
    base.chmod(0o755)
    server = pgserver.get_server(base / "data", cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
async def template_db(server_url: str) -> AsyncIterator[str]:
    """A migrated template database; every test gets a copy of it."""
    name = f"simrating_{RUN_ID}_template"
    admin = await asyncpg.connect(server_url)
    created: list[str] = []
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        conn = await asyncpg.connect(with_database(server_url, name))
        try:
            await database.migrate(conn)
        finally:
            await conn.close()
        yield name
    finally:
        for leftover in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", f"simrating_{RUN_ID}_%"
        ):
            await admin.execute(f'DROP DATABASE IF EXISTS "{leftover["datname"]}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(server_url: str, template_db: str) -> str:
    return await create_database(
        server_url, template_db, f"simrating_{RUN_ID}_{uuid.uuid4().hex[:12]}"
    )


def test_settings(database_url: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "grpc_addr": "127.0.0.1:0",
        "metrics_addr": None,
        "database_url": database_url,
        "test_clock": True,
        "clock_start": T0,
        "log_format": "console",
        "shutdown_grace_s": 2.0,
    }
    base.update(overrides)
    return Settings(**base)


AppFactory = Callable[..., Awaitable[tuple[Application, Stubs]]]


@pytest.fixture
async def start_app(database_url: str) -> AsyncIterator[AppFactory]:
    """Start in-process servers on port 0 against this test's database; stopped at the end."""
    running: list[tuple[Application, grpc.aio.Channel]] = []

    async def start(**overrides: Any) -> tuple[Application, Stubs]:
        app = Application(test_settings(database_url, **overrides), Metrics())
        await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        running.append((app, channel))
        return app, Stubs(channel)

    yield start
    for app, channel in reversed(running):
        await channel.close()
        await app.stop()


@pytest.fixture
async def app_stubs(start_app: AppFactory) -> tuple[Application, Stubs]:
    return await start_app()


@pytest.fixture
async def stubs(app_stubs: tuple[Application, Stubs]) -> Stubs:
    return app_stubs[1]
