"""Micro-benchmarks of the hot-path techniques: does each one still gain what it claims?

    python -m bench --only hotpath                  # through the runner (results.json)
    python -m bench.hotpath [--hotpath-sims N]      # on its own, the table only

The service's hot paths (ingestion's record loop, the session-start reads, the RPC
wrapper) use a few techniques that make the code less plain, each with a comment that
states what it gains. Here every such claim is measured again, on the service's own
classes where the technique uses them: the technique and the plain way it replaces, the
same work and the same result (checked before timing), timed alternately in rounds
(`timeit`, the loop's own cost subtracted, the lowest of the rounds) so a busy moment of
the machine falls on both. A few are one-shot timings of a larger step (the cache load,
PostgreSQL COPY and fetch of int8 against numeric).

Printed: per technique, where it is used, the claim, ns per operation each way and the
measured ratio (plain / technique). Nothing is asserted about timings: a ratio that no
longer supports its claim is a reason to revisit the technique, not a failed run; a
technique whose result differs from the plain way's fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import itertools
import math
import random
import sys
import time
import timeit
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter, Histogram

from bench.context import BenchContext, Progress
from bench.registry import (
    BENCHMARKS,
    Figure,
    VerificationFailed,
    add_options,
    benchmark,
    option,
    options_from,
)
from bench.workload import Workload
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.api.convert import time_to_proto
from service.domain.model import (
    USAGE_TYPES_BY_VALUE,
    Account,
    BillingStartReason,
    Sim,
    SimState,
    UsageRecord,
    UsageType,
)
from service.domain.periods import period_containing
from service.ingestion.records import RATED, Candidate, RecordResult, RecordStatus
from service.ops.hotpath import positional
from service.ops.metrics import RpcMetrics
from service.state.cache import SimUsage, StateCache, UsageCounters
from service.state.periods import PeriodLookup
from service.usecases.session_authorization import Authorization, DenyReason

ROUNDS = 5  # alternating rounds per comparison; the lowest of each side is kept
ROUND_SECONDS = 0.02  # how long one timed loop of a statement runs, about
ONE_SHOT_ROUNDS = 5
FIGURE_UNIT = "ns"
# Below this many ns per operation (after the loop's own cost is taken off) a timing is
# at the resolution of the method: the ratio is then given as at least plain / this.
RESOLUTION_NS = 10.0


@dataclass(frozen=True, slots=True)
class HotpathOptions:
    # The size of the SIM dicts of the look-up comparison: the service's are a million.
    sims: int = field(
        default=1_000_000,
        metadata=option("--hotpath-sims", "SIMs in the look-up dicts", minimum=1),
    )
    # SIMs of the cache-load and rows of the PostgreSQL comparisons (one-shot timings).
    rows: int = field(
        default=100_000,
        metadata=option("--hotpath-rows", "SIMs loaded, and rows copied or fetched", minimum=1),
    )


@dataclass(frozen=True, slots=True)
class Statements:
    """A technique and the plain way, as statements timed with `timeit` in `namespace`;
    each leaves its result in `out`, which must be equal both ways (`same`)."""

    name: str
    where: str  # file and function that use the technique
    claim: str  # what the code (or docs/performance.md) says it gains
    technique: str
    plain: str
    namespace: dict[str, Any]
    same: bool = True


@dataclass(frozen=True, slots=True)
class OneShot:
    """A technique and the plain way, each timed once per round by `measure(technique)`
    (seconds for `per` operations)."""

    name: str
    where: str
    claim: str
    measure: Callable[[bool], Awaitable[float]]
    per: int  # operations in one measurement


Comparison = Statements | OneShot


@dataclass(frozen=True, slots=True)
class Measured:
    comparison: Comparison
    technique_ns: float
    plain_ns: float

    @property
    def ratio(self) -> float:
        """plain / technique: how many times the technique is cheaper (a lower bound when
        the technique costs less than RESOLUTION_NS)."""
        return self.plain_ns / max(self.technique_ns, RESOLUTION_NS)

    @property
    def ratio_text(self) -> str:
        bound = "≥ " if self.technique_ns < RESOLUTION_NS else ""
        return f"{bound}{self.ratio:.1f}x"


# --- the comparisons ------------------------------------------------------------------------

_NEW = positional  # the service's positional construction (service.ops.hotpath)
_NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)
_BERLIN = ZoneInfo("Europe/Berlin")


def _records() -> list[Statements]:
    candidate = ("rec-1", "8900000000000000018", UsageType.DATA, 1_000, 1_024, _NOW, "", "2026-01")
    result = ("rec-1", RecordStatus.RATED, "", 1_024, True, 0, False)
    record = ("rec-1", "8900000000000000018", UsageType.DATA, 1_000, _NOW, "session")
    claim = "a NamedTuple's own __new__ is 3x slower"
    return [
        Statements(
            "positional_new_candidate",
            "service/ingestion/engine.py UsageEngine.check_all",
            claim,
            "out = new(Candidate, row)",
            "out = Candidate(*row)",
            {"new": _NEW, "Candidate": Candidate, "row": candidate},
        ),
        Statements(
            "positional_new_record_result",
            "service/ingestion/engine.py UsageEngine.count (its loop)",
            claim,
            "out = new(RecordResult, row)",
            "out = RecordResult(*row)",
            {"new": _NEW, "RecordResult": RecordResult, "row": result},
        ),
        Statements(
            "positional_new_usage_record",
            "service/api/convert.py records_from_proto",
            claim,
            "out = new(UsageRecord, row)",
            "out = UsageRecord(*row)",
            {"new": _NEW, "UsageRecord": UsageRecord, "row": record},
        ),
    ]


def _answers() -> list[Statements]:
    row = (True, None, SimState.ACTIVE, True, False, 100_000, 1_048_576, 524_288, 0)
    keywords = dict(zip(Authorization._fields, row, strict=True))
    frozen = dataclasses.make_dataclass(
        "FrozenAuthorization", Authorization._fields, frozen=True, slots=True
    )
    return [
        Statements(
            "namedtuple_vs_frozen_dataclass",
            "service/usecases/session_authorization.py Authorization",
            "a frozen dataclass of nine fields takes ~2.5 us to build, this ~0.5 us",
            "out = new(Authorization, row)",
            "out = Frozen(**keywords)",
            {
                "new": _NEW,
                "Authorization": Authorization,
                "Frozen": frozen,
                "row": row,
                "keywords": keywords,
            },
            same=False,  # different types; the fields are the same
        ),
        Statements(
            "namedtuple_positional_vs_keywords",
            "service/usecases/session_authorization.py authorize",
            "positional, through tuple.__new__ (0.3 us less warm than keywords;"
            " docs/performance.md)",
            "out = new(Authorization, row)",
            "out = Authorization(**keywords)",
            {"new": _NEW, "Authorization": Authorization, "row": row, "keywords": keywords},
        ),
        Statements(
            "response_non_default_fields",
            "service/api/rating.py RatingServicer.AuthorizeSession",
            "only the fields that differ from their default are written: a protobuf"
            " constructor's keywords are each looked up by name, ~2x the cost per call",
            "out = Response()\n"
            "out.allowed = True\n"
            "out.state = 2\n"
            "out.billing_started = True\n"
            "out.price_micros = 100_000\n"
            "out.unit_quantity = 1_048_576\n"
            "out.remaining_included_quantity = 524_288",
            "out = Response(allowed=True, deny_reason=0, state=2, billing_started=True,"
            " would_start_billing=False, price_micros=100_000, unit_quantity=1_048_576,"
            " remaining_included_quantity=524_288, estimated_charge_micros=0)",
            {"Response": r.AuthorizeSessionResponse},
        ),
    ]


def _enums() -> list[Statements]:
    by_number = {SimState.SUSPENDED._value_: DenyReason.SUSPENDED}
    by_member = {SimState.SUSPENDED: DenyReason.SUSPENDED}
    return [
        Statements(
            "enum_value_attribute",
            "service/api/convert.py number; service/usecases/sim_status.py _by_usage_type",
            "`_value_`: Enum's `.value` is a slower property (~0.1 us)",
            "out = state._value_",
            "out = state.value",
            {"state": SimState.ACTIVE},
        ),
        Statements(
            "dict_by_enum_number",
            "service/usecases/session_authorization.py _DENIED_STATES",
            "an int key: a dict keyed by Enum members calls Enum's __hash__ in Python at"
            " every look-up (~0.1 us)",
            "out = by_number.get(state._value_)",
            "out = by_member.get(state)",
            {"state": SimState.ACTIVE, "by_number": by_number, "by_member": by_member},
        ),
        Statements(
            "enum_from_number_dict",
            "service/domain/model.py USAGE_TYPES_BY_VALUE; service/api/convert.py enum_from_proto",
            "a dict look-up costs a fifth of calling the type",
            "out = members.get(number)",
            "out = UsageType(number)",
            {
                "members": USAGE_TYPES_BY_VALUE,
                "UsageType": UsageType,
                "number": t.USAGE_TYPE_DATA,
            },
        ),
        Statements(
            "enum_member_constant",
            "service/ingestion/records.py RATED (the record loops)",
            "a member read through its class in a loop is read once into a module constant",
            "out = RATED",
            "out = RecordStatus.RATED",
            {"RATED": RATED, "RecordStatus": RecordStatus},
        ),
    ]


def _times() -> list[Statements]:
    account = Account("account-1", "EUR", "Europe/Berlin")
    lookup = PeriodLookup()
    lookup.name(account, _NOW)  # remembered, as after the first call
    period = period_containing(_NOW, "Europe/Berlin", 1)
    utc = (period.start.astimezone(UTC), period.end.astimezone(UTC))
    zone_utc = (period.start.astimezone(ZoneInfo("UTC")), period.end.astimezone(ZoneInfo("UTC")))
    local = (period.start.astimezone(_BERLIN), period.end.astimezone(_BERLIN))
    where = "service/state/periods.py PeriodLookup.find"
    claim = (
        "two datetimes in different time zones compare through both zones' utcoffset():"
        " 0.6-1.7 us a comparison, against ~0.005 us in one zone"
    )
    bounds = "out = start <= now < end"
    return [
        Statements(
            "utc_bounds_vs_berlin",
            where,
            claim,
            bounds,
            bounds.replace("start", "local_start").replace("end", "local_end"),
            {
                "start": utc[0],
                "end": utc[1],
                "local_start": local[0],
                "local_end": local[1],
                "now": _NOW,
            },
        ),
        Statements(
            "utc_bounds_vs_zoneinfo_utc",
            where,
            claim,
            bounds,
            bounds.replace("start", "zone_start").replace("end", "zone_end"),
            {
                "start": utc[0],
                "end": utc[1],
                "zone_start": zone_utc[0],
                "zone_end": zone_utc[1],
                "now": _NOW,
            },
        ),
        Statements(
            "period_lookup_remembered",
            "service/state/periods.py PeriodLookup (GetSimStatus, AuthorizeSession)",
            "period_containing from the account's time zone ~40 us; remembered ~0.4 us"
            " (docs/performance.md)",
            "out = lookup.name(account, now)",
            "out = period_containing(now, account.timezone, account.billing_day).name",
            {
                "lookup": lookup,
                "account": account,
                "now": _NOW,
                "period_containing": period_containing,
            },
        ),
        Statements(
            "time_to_proto",
            "service/api/convert.py time_to_proto (GetSimStatus's timestamps)",
            "the same value as FromDatetime, without its calendar arithmetic (several"
            " times cheaper)",
            "time_to_proto(when, out)",
            "out.FromDatetime(when)",
            {"time_to_proto": time_to_proto, "when": _NOW, "out": Timestamp()},
            same=False,  # both write `out`; checked below (_check_time_to_proto)
        ),
    ]


def _lookups() -> list[Statements]:
    usage = SimUsage()
    usage.counters = (
        UsageCounters("2026-01", UsageType.SMS),
        UsageCounters("2026-01", UsageType.DATA),
    )
    return [
        Statements(
            "inlined_counters_lookup",
            "service/ingestion/engine.py UsageEngine.count (SimUsage.counters_for, inlined)",
            "every look-up done once, inline (one Python call less per record)",
            "for out in usage.counters:\n"
            "    if out.usage_type is usage_type and out.period == period:\n"
            "        break\n"
            "else:\n"
            "    out = usage.counters_for(period, usage_type)",
            "out = usage.counters_for(period, usage_type)",
            {"usage": usage, "usage_type": UsageType.DATA, "period": "2026-01"},
        ),
        Statements(
            "no_builtin_max",
            "service/domain/pricing.py estimate_charge",
            "not max(): a builtin call is slow on the ingestion hot path",
            "out = used - included\nif out < 0:\n    out = 0",
            "out = max(0, used - included)",
            {"used": 1_000_000, "included": 10_485_760},
        ),
        Statements(
            "integer_half_up",
            "service/domain/pricing.py estimate_charge",
            "half-up division of a non-negative integer: (2x + d) // 2d, no Fractions on"
            " the hot path",
            "out = (2 * scaled + unit) // (2 * unit)",
            "out = floor(Fraction(scaled, unit) + HALF)",
            {
                "scaled": 1_048_577 * 100_000,
                "unit": 1_048_576,
                "floor": math.floor,
                "Fraction": Fraction,
                "HALF": Fraction(1, 2),
            },
        ),
        Statements(
            "plain_function_handler",
            "service/api/interceptor.py (AuthorizeSession, GetSimStatus are plain functions)",
            "a handler written as a plain function is called directly, without a coroutine"
            " of its own (docs/performance.md)",
            "out = handler(request, None)",
            "coroutine = async_handler(request, None)\n"
            "try:\n"
            "    coroutine.send(None)\n"
            "except StopIteration as done:\n"
            "    out = done.value",
            {"handler": _plain_handler, "async_handler": _async_handler, "request": 7},
        ),
        Statements(
            "string_field_read_once",
            "service/api/rating.py RatingServicer.GetSimStatus",
            "each read of a string field builds a new str: read once",
            "out = request.iccid\nif not out:\n    pass\nout = len(out)",
            "if not request.iccid:\n    pass\nout = len(request.iccid)",
            {"request": r.GetSimStatusRequest(iccid="8900000000000000018")},
        ),
        _metrics_comparison(),
    ]


def _plain_handler(request: int, context: object) -> int:
    return request + 1


async def _async_handler(request: int, context: object) -> int:
    return request + 1


def _metrics_comparison() -> Statements:
    registry = CollectorRegistry()
    labels = ("unary", "rating.v1.RatingService", "AuthorizeSession")
    names = ("grpc_type", "grpc_service", "grpc_method")
    started = Counter("grpc_server_started", "", names, registry=registry).labels(*labels)
    handled = Counter("grpc_server_handled", "", (*names, "grpc_code"), registry=registry).labels(
        *labels, "OK"
    )
    seconds = Histogram("grpc_server_handling_seconds", "", names, registry=registry).labels(
        *labels
    )
    calls = Counter("rating_rpc_calls", "", ("caller",), registry=registry).labels("open")
    rpc = RpcMetrics()
    return Statements(
        "rpc_counts_vs_prometheus_children",
        "service/ops/metrics.py RpcCounts (the interceptor's per-call series)",
        "a prometheus_client child costs a lock, a validity check and a method call per"
        " update, several us per call over the four series",
        "counts.started += 1\ncounts.finished('OK', 0.0002)\nrpc.count_caller('open')\nout = 0",
        "started.inc()\nhandled.inc()\nseconds.observe(0.0002)\ncalls.inc()\nout = 0",
        {
            "counts": rpc.method(*labels),
            "rpc": rpc,
            "started": started,
            "handled": handled,
            "seconds": seconds,
            "calls": calls,
        },
    )


def _sim_lookup(options: HotpathOptions) -> Statements:
    """One look-up in a million-entry dict (the SIM's usage, which holds the SIM) against
    two (the SIM, then its usage): StateCache.sim_and_usage."""
    iccids = [f"89{n:017d}" for n in range(options.sims)]
    sims = {iccid: (iccid,) for iccid in iccids}
    usage = {iccid: (iccid,) for iccid in iccids}
    # New string objects, as a request's field is: compared by value, not identity.
    asked = [f"89{n:017d}" for n in random.Random(7).choices(range(options.sims), k=100_000)]
    return Statements(
        "one_lookup_sim_and_usage",
        "service/state/cache.py StateCache.sim_and_usage",
        "a look-up in a dict of a million SIMs misses the CPU caches several times,"
        " ~1.5 us of a session-start read: one look-up finds both",
        "key = next_key()\nout = usage.get(key)[0]",
        "key = next_key()\nsim = sims.get(key)[0]\nout = usage.get(key)[0]",
        {"next_key": itertools.cycle(asked).__next__, "sims": sims, "usage": usage},
        same=False,  # the key moves on between the two statements
    )


def _cache_load(options: HotpathOptions) -> OneShot:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    loaded = [
        Sim(
            f"89{n:017d}",
            f"account-{n % 100:03d}",
            "plan",
            at,
            SimState.ACTIVE,
            at,
            BillingStartReason.IMMEDIATE,
        )
        for n in range(options.rows)
    ]

    async def measure(technique: bool) -> float:
        cache = StateCache()
        enabled = gc.isenabled()
        gc.disable()  # as the service's load runs (service.ops.runtime.loading_heap)
        try:
            started = time.perf_counter()
            if technique:
                cache.load_sims(loaded)
            else:
                cache.put_sims(loaded)
            return time.perf_counter() - started
        finally:
            if enabled:
                gc.enable()

    return OneShot(
        "load_sims_vs_put_sims",
        "service/state/cache.py StateCache.load_sims (the start's cache load)",
        "what put_sims does, without its per-SIM look-ups of a previous version and with"
        " nobody listening (~3x faster at 1,000,000 SIMs)",
        measure,
        options.rows,
    )


def _postgres(url: str, options: HotpathOptions) -> list[OneShot]:
    rows = [
        ("2026-01", f"89{n:017d}", 1, n * 1_000, n * 999, n * 1_024) for n in range(options.rows)
    ]

    async def copy(technique: bool) -> float:
        kind = "int8" if technique else "numeric"
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                f"""CREATE TEMPORARY TABLE rows_{kind} (period text, iccid text,
                    usage_type int2, raw {kind}, charged_raw {kind}, charged_rated {kind})"""
            )
            started = time.perf_counter()
            await conn.copy_records_to_table(f"rows_{kind}", records=rows)
            return time.perf_counter() - started
        finally:
            await conn.close()

    async def fetch(technique: bool) -> float:
        cast = "int8" if technique else "numeric"
        conn = await asyncpg.connect(url)
        try:
            query = f"""SELECT n::{cast}, (n * 1000)::{cast}, (n * 1024)::{cast}
                          FROM generate_series(1, $1) AS n"""
            await conn.fetch(query, 10)  # prepared and its codecs set up
            started = time.perf_counter()
            fetched = await conn.fetch(query, options.rows)
            seconds = time.perf_counter() - started
            if int(fetched[-1][2]) != options.rows * 1024:
                raise VerificationFailed(f"hotpath fetch ({cast}): {fetched[-1]}")
            return seconds
        finally:
            await conn.close()

    return [
        OneShot(
            "copy_int8_vs_numeric",
            "service/storage/usage_state.py write_aggregates (usage checkpoints)",
            "asyncpg encodes a Python int as numeric ~10x slower (1,000,000 rows: 12.9 s of"
            " COPY as numeric, 1.3 s as int8)",
            copy,
            options.rows,
        ),
        OneShot(
            "fetch_int8_vs_numeric",
            "service/storage/usage_state.py period_aggregates",
            "as ints, decoded in C: 2-3x faster than numeric's Decimals",
            fetch,
            options.rows,
        ),
    ]


# --- measuring ------------------------------------------------------------------------------


def _check_same(comparison: Statements) -> None:
    """Both statements give the same `out` (a technique must not change the result)."""
    results = []
    for statement in (comparison.technique, comparison.plain):
        scope = dict(comparison.namespace)
        exec(statement, scope)
        results.append(scope["out"])
    if comparison.same and results[0] != results[1]:
        raise VerificationFailed(
            f"hotpath {comparison.name}: the technique gives {results[0]!r},"
            f" the plain way {results[1]!r}"
        )


def _check_special() -> None:
    """The comparisons whose results `_check_same` cannot compare directly."""
    row = (True, None, SimState.ACTIVE, True, False, 100_000, 1_048_576, 524_288, 0)
    frozen = dataclasses.make_dataclass("F", Authorization._fields, frozen=True)
    if tuple(_NEW(Authorization, row)) != dataclasses.astuple(frozen(*row)):
        raise VerificationFailed("hotpath: Authorization fields differ from the dataclass's")
    ours, theirs = Timestamp(), Timestamp()
    for when in (_NOW, _NOW + timedelta(microseconds=123_456), datetime(1969, 7, 20, tzinfo=UTC)):
        time_to_proto(when, ours)
        theirs.FromDatetime(when)
        if ours != theirs:
            raise VerificationFailed(f"hotpath time_to_proto({when}): {ours} != {theirs}")


def _per_op_ns(timer: timeit.Timer, number: int) -> float:
    return timer.timeit(number) / number * 1e9


def measure_statements(comparison: Statements) -> Measured:
    _check_same(comparison)
    technique = timeit.Timer(comparison.technique, globals=comparison.namespace)
    plain = timeit.Timer(comparison.plain, globals=comparison.namespace)
    empty = timeit.Timer("pass")
    # Loops of about ROUND_SECONDS for the slower of the two.
    probe = max(plain.timeit(100), technique.timeit(100)) / 100
    number = max(100, int(ROUND_SECONDS / max(probe, 1e-9)))
    sides: list[list[float]] = [[], []]
    loop = min(_per_op_ns(empty, number) for _ in range(3))
    for round_ in range(ROUNDS):
        for side in (0, 1) if round_ % 2 == 0 else (1, 0):
            sides[side].append(_per_op_ns((technique, plain)[side], number) - loop)
    return Measured(comparison, max(min(sides[0]), 0.1), max(min(sides[1]), 0.1))


async def measure_one_shot(comparison: OneShot) -> Measured:
    sides: list[list[float]] = [[], []]
    for round_ in range(ONE_SHOT_ROUNDS):
        for side in (0, 1) if round_ % 2 == 0 else (1, 0):
            seconds = await comparison.measure(side == 0)
            sides[side].append(seconds / comparison.per * 1e9)
    return Measured(comparison, min(sides[0]), min(sides[1]))


def table(results: list[Measured]) -> str:
    lines = [
        "| technique | where | claim | ns, technique | ns, plain way | plain / technique |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in results:
        c = m.comparison
        lines.append(
            f"| {c.name} | {c.where} | {c.claim} | {m.technique_ns:,.1f} | {m.plain_ns:,.1f}"
            f" | {m.ratio_text} |"
        )
    return "\n".join(lines)


async def run(ctx: BenchContext, options: HotpathOptions, database: bool = True) -> list[Measured]:
    """Every comparison (those on PostgreSQL only with `database`)."""
    progress = ctx.progress
    _check_special()
    results: list[Measured] = []
    with progress.phase("hotpath: statements"):
        for comparison in [*_records(), *_answers(), *_enums(), *_times(), *_lookups()]:
            results.append(measure_statements(comparison))
    with progress.phase(f"hotpath: look-ups in dicts of {options.sims:,} SIMs"):
        results.append(measure_statements(_sim_lookup(options)))
    with progress.phase(f"hotpath: cache load of {options.rows:,} SIMs"):
        results.append(await measure_one_shot(_cache_load(options)))
    if database:
        async with ctx.fresh_database() as url:
            with progress.phase(f"hotpath: PostgreSQL, {options.rows:,} rows"):
                for shot in _postgres(url, options):
                    results.append(await measure_one_shot(shot))
    return results


def figures(results: list[Measured]) -> list[Figure]:
    out: list[Figure] = []
    for m in results:
        c = m.comparison
        details = {"where": c.where, "claim": c.claim, "plain_over_technique": m.ratio_text}
        out.append(
            Figure(
                f"hotpath_{c.name}",
                f"{c.name}",
                m.technique_ns,
                FIGURE_UNIT,
                details,
                compare=False,
                baseline=f"hotpath_{c.name}_plain",
            )
        )
        out.append(
            Figure(
                f"hotpath_{c.name}_plain",
                "  the plain way",
                m.plain_ns,
                FIGURE_UNIT,
                compare=False,
            )
        )
    return out


@benchmark(
    "hotpath",
    "micro-benchmarks: each hot-path technique against the plain way it replaces",
    options=HotpathOptions,
)
async def hotpath(ctx: BenchContext) -> list[Figure]:
    results = await run(ctx, ctx.options_of(HotpathOptions))
    ctx.progress.line("hotpath:\n" + table(results))
    return figures(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hotpath", description=__doc__.splitlines()[0]
    )
    add_options(parser, [BENCHMARKS["hotpath"]])
    parser.add_argument(
        "--no-database", action="store_true", help="skip the PostgreSQL comparisons"
    )
    args = parser.parse_args(argv)
    options = options_from(args, [BENCHMARKS["hotpath"]])[HotpathOptions]
    ctx = BenchContext(Workload(), Progress(), options={HotpathOptions: options})

    async def measured() -> list[Measured]:
        try:
            return await run(ctx, options, database=not args.no_database)
        finally:
            await ctx.close()

    try:
        results = asyncio.run(measured())
    except VerificationFailed as exc:
        print(f"verification failed: {exc}", file=sys.stderr)
        return 1
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
