"""The registry of named benchmarks and the figures they report.

A benchmark is an async function taking the run's `BenchContext` and returning its
figures; `@benchmark("name", "what it measures")` registers it under the name that
`--only` selects. Benchmarks run in registration order: the modules in `MODULES` are
imported in that order. To add one (activation throughput, settlement time, ...), write
a module with a decorated function and append the module to `MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.context import BenchContext

# Imported in this order; their @benchmark functions run in this order.
MODULES = (
    "bench.ingestion",
    "bench.usage_send",
    "bench.transport",
    "bench.storage",
    "bench.activation",
    "bench.settlement",
    "bench.history_ingestion",
    "bench.hot",
    "bench.soak",
    "bench.history",
)

# Unit of the figures the report compares with the baselines below.
THROUGHPUT_UNIT = "records/s"
COPY_BASELINE = "copy"
TRANSPORT_BASELINE = "transport"
INGESTION_FIGURE = "ingestion"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured number. `name` is unique in a run; ratios apply to records/s figures."""

    name: str
    label: str
    value: float
    unit: str
    details: dict[str, Any] = field(default_factory=dict)
    # False: no ratio columns (the figure has its own baseline, reported beside it).
    compare: bool = True
    # The name of a figure of the same run this one is compared with (`vs baseline`).
    baseline: str | None = None


class VerificationFailed(RuntimeError):
    """The benchmark ran but its outcome is wrong: its figure would mean nothing."""


BenchmarkFn = Callable[["BenchContext"], Awaitable[list[Figure]]]


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    description: str
    run: BenchmarkFn
    default: bool = True  # False: runs only when named with --only (e.g. the soak)


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(
    name: str, description: str, *, default: bool = True
) -> Callable[[BenchmarkFn], BenchmarkFn]:
    """Register the decorated function as the benchmark `name`; with default=False it runs
    only when selected with --only."""

    def register(run: BenchmarkFn) -> BenchmarkFn:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        BENCHMARKS[name] = Benchmark(name, description, run, default)
        return run

    return register


def load() -> dict[str, Benchmark]:
    """Import every benchmark module; return the registry."""
    for module in MODULES:
        importlib.import_module(module)
    return BENCHMARKS
