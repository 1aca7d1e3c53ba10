"""The committed generated code is what the pinned generators write from protos/.

`make proto` was run after every change to a .proto file, with the grpcio-tools and
mypy-protobuf that constraints.txt pins, and pyproject.toml's floors for grpcio and protobuf
are ones the generated code accepts.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support import REPO

PROTOS = REPO / "protos"
GENERATED = PROTOS / "rating" / "v1"
# The two packages whose output is committed: protoc (inside grpcio-tools) writes *_pb2.py and
# *_pb2_grpc.py, mypy-protobuf writes the .pyi stubs.
GENERATORS = ("grpcio-tools", "mypy-protobuf")


def pinned_versions() -> dict[str, str]:
    """constraints.txt as {canonical name: exact version}."""
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, separator, version = requirement.partition("==")
            assert separator, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def declared_floor(package: str) -> Version:
    """The `>=` bound pyproject.toml's runtime dependencies give `package`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == package:
            floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
            assert floors, f"pyproject.toml states no minimum version of {package}"
            return max(floors)
    raise AssertionError(f"{package} is not a runtime dependency in pyproject.toml")


def generated_versions(pattern: str, glob: str) -> set[str]:
    """Every version the generated files matching `glob` state through `pattern`."""
    found = {
        ".".join(match.groups())
        for path in GENERATED.glob(glob)
        for match in re.finditer(pattern, path.read_text())
    }
    assert found, f"no generated file {glob} states a version"
    return found


@pytest.mark.parametrize("generator", GENERATORS)
def test_installed_generator_is_the_pinned_one(generator: str) -> None:
    pinned = pinned_versions()[generator]
    installed = importlib.metadata.version(generator)
    assert installed == pinned, (
        f"{generator} {installed} is installed but constraints.txt pins {pinned}:"
        " run `make install` (and `make proto` if you meant to change the pin)"
    )


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    shutil.copytree(
        PROTOS / "rating",
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
            *sorted(f"rating/v1/{p.name}" for p in GENERATED.glob("*.proto")),
        ],
        cwd=tmp_path,
        check=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(PROTOS) for p in PROTOS.rglob("*_pb2*.py*"))
    assert generated == committed
    stale = [
        str(path)
        for path in generated
        if (tmp_path / path).read_bytes() != (PROTOS / path).read_bytes()
    ]
    assert not stale, f"run `make install`, then `make proto`: stale generated files {stale}"


def test_grpcio_floor_accepts_the_generated_code() -> None:
    # Each *_pb2_grpc.py raises at import on a grpcio older than the generator that wrote it.
    [needed] = generated_versions(r"GRPC_GENERATED_VERSION = '(\d+)\.(\d+)\.(\d+)'", "*_grpc.py")
    floor = declared_floor("grpcio")
    assert floor >= Version(needed), f"raise pyproject.toml's grpcio floor to {needed}"


def test_protobuf_floor_accepts_the_generated_code() -> None:
    # Each *_pb2.py raises at import on a protobuf runtime older than the protoc that wrote it.
    [needed] = generated_versions(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
        r"\s*(\d+),\s*(\d+),\s*(\d+),",
        "*_pb2.py",
    )
    floor = declared_floor("protobuf")
    assert floor >= Version(needed), f"raise pyproject.toml's protobuf floor to {needed}"
