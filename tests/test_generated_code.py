"""The committed generated code matches protos/: `make proto` was run after every change."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    protos = REPO / "protos"
    shutil.copytree(
        protos / "rating",
        tmp_path / "rating",
        ignore=shutil.ignore_patterns("*.py*", "__pycache__"),
    )
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            "--python_out=.",
            "--grpc_python_out=.",
            "--mypy_out=.",
            "--mypy_grpc_out=.",
            *sorted(
                p.name and f"rating/v1/{p.name}" for p in (protos / "rating/v1").glob("*.proto")
            ),
        ],
        cwd=tmp_path,
        check=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(protos) for p in protos.rglob("*_pb2*.py*"))
    assert generated == committed
    stale = [
        str(path)
        for path in generated
        if (tmp_path / path).read_bytes() != (protos / path).read_bytes()
    ]
    assert not stale, f"run `make proto`: stale generated files {stale}"
