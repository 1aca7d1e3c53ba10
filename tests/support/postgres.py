"""PostgreSQL faults for tests: a server of one test alone that it may stop and start
again, and a proxy that loses the answer to a COMMIT."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

# Run in a child interpreter: as root, pgserver runs pg_ctl with subprocess.run(user=...),
# which must fork(); forking this process, full of gRPC threads, crashed pg_ctl (SIGSEGV).
# A child without gRPC forks safely, and starting the child itself uses vfork.
_PGSERVER = """
import sys, pgserver
from pathlib import Path
from typing import Literal
action, pgdata = sys.argv[1], Path(sys.argv[2])
server = pgserver.get_server(pgdata, cleanup_mode=None)  # inits and starts it if needed
if action == "start":
    (pgdata.parent / "uri").write_text(server.get_uri())
elif action in ("fast", "immediate"):
    # fast: roll back open transactions, disconnect every client, shut down cleanly.
    # immediate: kill every server process at once, no checkpoint (a crash: the next start
    # runs crash recovery).
    pgserver.pg_ctl(["-w", "stop", "-m", action], pgdata=pgdata, user=server.system_user)
elif action == "delete":
    server.cleanup_mode = "delete"
    server.cleanup()
"""


class StoppablePostgres:
    """A PostgreSQL of this test alone (pgserver), which the test may stop and start.

    Starting again uses the options pgserver used the first time (same socket directory),
    so the service's URL stays valid. Not under pytest's tmp_path: as root, pgserver runs
    PostgreSQL as another user, and every pytest session starting meanwhile makes
    /tmp/pytest-of-root private again (0700), so pg_ctl could no longer reach the data.
    """

    def __init__(self) -> None:
        self.pgdata = Path(tempfile.mkdtemp(prefix="simrating-durability-")) / "pg"
        self.start()
        self.uri = (self.pgdata.parent / "uri").read_text()

    def _run(self, action: str) -> None:
        subprocess.run(
            [sys.executable, "-c", _PGSERVER, action, str(self.pgdata)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        self._run("start")

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        self._run(mode)

    def cleanup(self) -> None:
        self._run("delete")
        shutil.rmtree(self.pgdata.parent)


class CommitAnswerLost:
    """A TCP proxy in front of PostgreSQL that can lose the answer to one COMMIT.

    `arm()`, then the next COMMIT a client sends is forwarded and executed, but its answer
    is dropped and the client's connection closed: the transaction is stored while the
    client sees its connection break in the middle of COMMIT, the one failure a service
    cannot tell from a rollback. Deterministic, unlike stopping PostgreSQL at the right
    moment. `url` is the database URL through the proxy. `arm(at_send=True)` cuts the
    client as soon as its COMMIT is forwarded, while PostgreSQL may still be executing it.
    """

    def __init__(self, url: str) -> None:
        self._target = url
        self._armed = False
        self._at_send = False
        self._server: asyncio.Server | None = None
        self.url = ""
        self.cut = asyncio.Event()  # set once a COMMIT's answer was dropped

    async def __aenter__(self) -> CommitAnswerLost:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self._target)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "host"]
        netloc = f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    def arm(self, *, at_send: bool = False) -> None:
        self._armed = True
        self._at_send = at_send
        self.cut.clear()

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self._target)
        socket_dir = dict(parse_qsl(parts.query)).get("host")
        if socket_dir:
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{parts.port or 5432}")
        return await asyncio.open_connection(parts.hostname, parts.port or 5432)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await self._open_target()
        commit_sent = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self._armed and b"COMMIT" in data:
                    self._armed = False
                    commit_sent.set()
                server_w.write(data)
                await server_w.drain()
                if commit_sent.is_set() and self._at_send:
                    client_w.close()  # the server keeps its end: it finishes the COMMIT
                    self.cut.set()
                    await server_r.read()  # until the server closes or answers and closes
                    return
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if commit_sent.is_set():  # the COMMIT's answer: drop it, cut the client
                    client_w.close()
                    server_w.close()
                    self.cut.set()
                    return
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        client_w.close()
        server_w.close()


def with_database(url: str, name: str) -> str:
    """`url` naming database `name` instead (host, port, user and query kept)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def create_database(server_url: str, template: str, name: str) -> str:
    """A new database `name` cloned from `template` on the server of `server_url`; its URL."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    """Drop the database of `url` (connections to it are ended)."""
    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
