"""The registry of named benchmarks, their options, and the figures they report.

A benchmark is an async function taking the run's `BenchContext` and returning its
figures; `@benchmark("name", "what it measures")` registers it under the name that
`--only` selects. `MODULES` maps each name to the module that registers it, in the order
they run; `--only` imports only the modules it names, so a benchmark runs even where
another one's imports do not resolve (an older checkout of the service, see bench/ab.py).
To add one (activation throughput, settlement time, ...), write a module with a decorated
function and add its name and module to `MODULES`.

A benchmark with options of its own declares them in its module, as a frozen dataclass
whose fields carry `option(...)` metadata, passed as `@benchmark(..., options=TheClass)`:
`python -m bench` adds each such field as a command-line flag, and the benchmark reads
the values with `ctx.options_of(TheClass)` (the defaults when run another way).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.context import BenchContext

# Benchmark name -> the module that registers it; run in this order.
MODULES = {
    "ingestion": "bench.ingestion",
    "usage_send": "bench.usage_send",
    "transport": "bench.transport",
    "copy": "bench.storage",
    "activation": "bench.activation",
    "settlement": "bench.settlement",
    "history_ingestion": "bench.history_ingestion",
    "hot": "bench.hot",
    "soak": "bench.soak",
    "history": "bench.history",
    "hotpath": "bench.hotpath",
}

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
    options: type[Any] | None = None  # its options dataclass (fields with `option(...)`)


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(
    name: str, description: str, *, default: bool = True, options: type[Any] | None = None
) -> Callable[[BenchmarkFn], BenchmarkFn]:
    """Register the decorated function as the benchmark `name`; with default=False it runs
    only when selected with --only; `options` is its options dataclass, if it has one."""

    def register(run: BenchmarkFn) -> BenchmarkFn:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} registered twice")
        BENCHMARKS[name] = Benchmark(name, description, run, default, options)
        return run

    return register


# --- options --------------------------------------------------------------------------------

_OPTION = "bench_option"


@dataclass(frozen=True, slots=True)
class Option:
    flag: str  # e.g. "--hot-sims"
    help: str
    minimum: float | None = None  # smallest value accepted
    above: bool = False  # True: the value must be strictly above `minimum`

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def option(
    flag: str, help: str, *, minimum: float | None = None, above: bool = False
) -> dict[str, Option]:
    """Field metadata making a field of a benchmark's options dataclass the command-line
    option `flag`: `field(default=..., metadata=option("--hot-sims", "SIMs loaded", minimum=1))`.
    """
    return {_OPTION: Option(flag, help, minimum, above)}


def _parser_type(kind: Any, spec: Option) -> Callable[[str], Any]:
    """The argparse `type` of a field annotated `kind` (int, float, Path, `X | None`)."""
    if isinstance(kind, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        if spec.minimum is not None and (
            value <= spec.minimum if spec.above else value < spec.minimum
        ):
            relation = ">" if spec.above else ">="
            raise argparse.ArgumentTypeError(f"must be {relation} {spec.minimum:g}")
        return value

    return convert


def _option_fields(kind: type[Any]) -> list[tuple[dataclasses.Field[Any], Option, Any]]:
    hints = typing.get_type_hints(kind)
    return [
        (f, f.metadata[_OPTION], hints[f.name])
        for f in dataclasses.fields(kind)
        if _OPTION in f.metadata
    ]


def add_options(parser: argparse.ArgumentParser, benchmarks: Iterable[Benchmark]) -> None:
    """Every registered benchmark's options as flags, one argument group per benchmark."""
    seen: set[type[Any]] = set()
    for bench in benchmarks:
        if bench.options is None or bench.options in seen:
            continue
        seen.add(bench.options)
        group = parser.add_argument_group(f"{bench.name} options")
        for f, spec, kind in _option_fields(bench.options):
            group.add_argument(
                spec.flag,
                dest=spec.dest,
                type=_parser_type(kind, spec),
                default=f.default,
                help=spec.help if f.default is None else f"{spec.help} (default: {f.default})",
            )


def options_from(args: argparse.Namespace, benchmarks: Iterable[Benchmark]) -> dict[type, Any]:
    """Each benchmark's options dataclass, built from the parsed flags."""
    built: dict[type, Any] = {}
    for bench in benchmarks:
        if bench.options is not None and bench.options not in built:
            values = {
                f.name: getattr(args, spec.dest) for f, spec, _ in _option_fields(bench.options)
            }
            built[bench.options] = bench.options(**values)
    return built


def option_values(options: dict[type, Any]) -> dict[str, Any]:
    """The options as results.json records them: by flag name (`copy_batch`), JSON values."""
    values: dict[str, Any] = {}
    for kind, chosen in options.items():
        for f, spec, _ in _option_fields(kind):
            value = getattr(chosen, f.name)
            values[spec.dest] = (
                value if value is None or isinstance(value, int | float) else str(value)
            )
    return values


def load(names: Iterable[str] | None = None) -> dict[str, Benchmark]:
    """Import the modules of the benchmarks `names` (default: all); every benchmark
    registered so far (those modules import others), in MODULES order."""
    for name in MODULES if names is None else names:
        importlib.import_module(MODULES[name])
        if name not in BENCHMARKS:
            raise RuntimeError(f"{MODULES[name]} registers no benchmark {name!r}")
    return {name: BENCHMARKS[name] for name in MODULES if name in BENCHMARKS}
