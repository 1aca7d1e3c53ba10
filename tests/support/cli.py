"""Running the `simrating` command as a real process against a test server."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO

# A summary table row: "│ RATED │ 1,234 │ ok │" (or with ASCII borders).
_ROW = re.compile(r"^[│|]\s*([A-Z_]+)\s*[│|]\s*([\d,]+)\s*[│|]", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def summary(self) -> dict[str, int]:
        """Status -> count of every summary table printed (the total row left out)."""
        counts: dict[str, int] = {}
        for status, count in _ROW.findall(self.out):
            counts[status] = counts.get(status, 0) + int(count.replace(",", ""))
        return counts


def cli_command(addr: str | None, *args: str) -> list[str]:
    prefix = ["--addr", addr] if addr else []
    return [sys.executable, "-m", "service.cli", *prefix, *args]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env.update({"COLUMNS": "200", "PYTHONIOENCODING": "utf-8", **(extra or {})})
    return env


async def simrating(
    addr: str | None,
    *args: str,
    cwd: Path = REPO,
    env: Mapping[str, str] | None = None,
    deadline_s: float = 120,
) -> Run:
    """`python -m service.cli [--addr ADDR] ARGS...` as a child process; its exit status and
    output. Async: the test's server runs in this process's event loop."""
    proc = await asyncio.create_subprocess_exec(
        *cli_command(addr, *args),
        cwd=cwd,
        env=cli_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), deadline_s)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as source:
        return list(csv.DictReader(source))


async def archive_command(*args: str, deadline_s: float = 120) -> Run:
    """`python -m service.cli.archive ARGS...` as a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.cli.archive",
        *args,
        cwd=REPO,
        env=cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), deadline_s)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
