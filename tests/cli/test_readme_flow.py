"""The README's "operator's first ten minutes", run as written against a real service with
the example files under examples/."""

from __future__ import annotations

import re
import shlex
from datetime import datetime

from tests.conftest import AppFactory
from tests.support import REPO
from tests.support.cli import simrating

SECTION = "## The operator's first ten minutes"


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [
        shlex.split(line) for line in block.group(1).splitlines() if line.startswith("simrating ")
    ]


async def test_the_readme_flow_works_with_the_example_files(start_app: AppFactory) -> None:
    commands = readme_commands()
    serve = commands.pop(0)
    assert serve[:2] == ["simrating", "serve"]
    clock = serve[serve.index("--clock") + 1].removeprefix("test:")
    app, _ = await start_app(clock_start=datetime.fromisoformat(clock))
    assert [c[1] for c in commands] == ["catalog", "sims", "usage", "sims", "invoices"]
    cdrs = (REPO / "examples" / "cdrs.csv").read_text().strip().splitlines()
    sims = (REPO / "examples" / "sims.csv").read_text().strip().splitlines()
    expected = {
        "apply": {},
        "provision": {"CREATED": len(sims) - 1},
        "send": {"RATED": len(cdrs) - 1},
    }
    for command in commands:
        run = await simrating(f"127.0.0.1:{app.port}", *command[1:])
        assert run.code == 0, (command, run.err)
        if command[2] in expected:
            assert run.summary() == expected[command[2]], command
        assert "rejected" not in run.err
    assert not list((REPO / "examples").glob("*.rejected.csv"))
    assert "total" in run.out and "preview" in run.out  # the last command: the bill so far
