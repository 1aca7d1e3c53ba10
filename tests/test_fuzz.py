"""Fuzzing every rating.v1 RPC through a real channel against one real server per test.

What is sent: for each of the 19 RPCs of the five services (`service.app.SERVICE_NAMES`,
ClockService included, StreamUsage as a stream of random batches), requests drawn by
hypothesis from three kinds of strategies:

- generic: the request descriptor walked field by field (depth-limited), each field set or
  left unset, values biased towards hostile ones: empty, over-long (129 characters) and huge
  (up to 300,000 characters) strings, NUL / DEL / newline, RTL marks, emoji and combining
  characters in every id, period, currency and time zone; int64 and int32 extremes; unknown
  enum numbers (proto3 enums are open: 99, -5, int32 extremes); timestamps at year 1 and
  9999 and with out-of-range seconds or nanos; likewise durations;
- well-formed: valid plans, accounts, provisioning, lifecycle changes, usage batches,
  settlements and small clock advances, built around one plan, account and four SIMs set
  up at the start of the test, so that calls succeed and change state;
- mutated: a well-formed request with one field (anywhere in the tree) replaced by a
  hostile value, so validation of each field is reached past the other checks.
Usage batches also come over the 10,000-record limit and at exactly 10,000 (one record
repeated: one RATED, the rest DUPLICATE).

How hypothesis drives an async server: the app, its database and the channel come from
the usual async fixtures on the session event loop. The hypothesis engine runs in a worker
thread (`asyncio.to_thread`) while the loop keeps serving; each example draws a few calls
with `st.data()` and hands each one to the loop with `run_coroutine_threadsafe`. So
hypothesis sees every call's outcome (a failing call is reported and shrunk like any
hypothesis failure) and the test still ends with checks over the whole run, which a plain
`@given` test (one body per example) could not do.

What is asserted:
- every answer is OK or a documented error code (INVALID_ARGUMENT with a message, NOT_FOUND,
  ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED), never UNKNOWN or INTERNAL, and
  every per-record / per-ICCID status is a defined one; the codes seen are printed per RPC;
- the server stays up: health SERVING and known-good calls still work after the run;
- state changed only by accepted calls, checked against a model fed with the answers:
  ListPlans is exactly the plans PutPlan accepted (same content), GetAccount shows the last
  accepted PutAccount of each account and NOT_FOUND for ids never accepted, GetSimStatus is
  NOT_FOUND for every ICCID never CREATED, and each SIM's period_usage equals the sum of
  the quantities of its records answered RATED in that period (a DUPLICATE counts nothing).
  Records of a stream that failed after they were sent are in doubt (they may be committed
  without an acknowledgement): like a mediation platform, the test sends them again, and a
  DUPLICATE answer for an id not counted yet then means a failed stream had stored it. The
  fuzz reuses ids (`fz-dup-N`) with other contents, so which of the records sent with that
  id was stored is read from PostgreSQL (and must be one of them); that one is counted.

The clock only moves by small steps here: AdvanceTime gets hostile times that must be
refused (year 1, the past, out-of-range seconds or nanos, unset) but no jump to year 9999,
which would make the settlement worker close ninety thousand periods and leave the rest
of the run at the end of time. That jump is not covered yet.

Replaying a failure: every run draws a fresh seed and prints it ("fuzz seed N: replay with
RATING_FUZZ_SEED=N", in the captured output and in the failure's message).

    RATING_FUZZ_SEED=N pytest tests/test_fuzz.py::test_fuzz_every_rpc

reruns that seed: hypothesis's `@seed` draws the same calls, and the server (a fresh
database, the test clock at T0) answers them alike, so the run fails at the same call.
Only timing can differ (which batches share a group commit). A failure is caught outside
hypothesis (see `run_fuzz`), so hypothesis's own replay of one example (`print_blob`,
`@reproduce_failure`) does not apply: a failure here depends on the state every earlier
example left, and the seed replays the whole run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import clock_service_pb2 as k
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from service.app import SERVICE_NAMES, Application
from service.domain.periods import period_containing
from tests.conftest import AppFactory
from tests.support import T0, Stubs, iccids

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
YEAR_1 = -62135596800  # 0001-01-01T00:00:00Z
YEAR_9999_END = 253402300799  # 9999-12-31T23:59:59Z
CALL_TIMEOUT = 60.0
SEED_VARIABLE = "RATING_FUZZ_SEED"
MESSAGE_LIMIT = 8 * 1024 * 1024  # the server's default receive limit
# grpc.aio client bug (grpc/grpc#36066, fix proposed in grpc/grpc#43486): when the server ends
# a stream while the client is still writing (a batch over the limit followed by more
# batches), the failed write overwrites the server's status with this INTERNAL one.
CLIENT_WRITE_RACE = "Internal error from Core"

DEFINED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
RECORD_STATUSES = set(t.RecordStatus.values()) - {t.RECORD_STATUS_UNSPECIFIED}
PROVISION_STATUSES = set(p.ProvisionStatus.values()) - {p.PROVISION_STATUS_UNSPECIFIED}

# --- the world set up before the fuzz --------------------------------------------------------

SETUP_PLAN = "fz-plan"
SETUP_ACCOUNT = "fz-account"
PROTECTED = iccids(1, 2)  # set up; never suspended or terminated by the fuzz: usage keeps rating
SUSPENDABLE = iccids(3, 1)  # set up; the fuzz may suspend and resume it, never terminate it
TERMINABLE = iccids(4, 1)  # set up; the fuzz may also terminate it
SETUP_SIMS = PROTECTED + SUSPENDABLE + TERMINABLE
FREE = iccids(100, 12)  # valid ICCIDs the fuzz may provision
PLAN_IDS = [SETUP_PLAN, "fz-p1", "fz-p2", "fz-p3"]
ACCOUNT_IDS = [SETUP_ACCOUNT, "fz-a1", "fz-a2"]
PERIODS = ["2025-12", "2026-01", "2026-02", "2025-11"]
ZONES = ["UTC", "Europe/Berlin", "Pacific/Kiritimati", "Etc/GMT+12", "America/St_Johns"]

# --- hostile values ---------------------------------------------------------------------------

HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x7f",
    "\n",
    "\t",
    "\r\n",
    "\u202e",  # right-to-left override
    "\u200f",  # right-to-left mark
    "\u200b",  # zero width space
    "\ufeff",
    "🙂",
    "👩\u200d👩\u200d👧",
    "e\u0301\u0301\u0301",  # combining accents
    "٨٩",  # Arabic-Indic digits
    "\uff18\uff19",  # full-width digits
    "x" * 128,
    "x" * 129,
    "é" * 129,
    "'; DROP TABLE plans; --",
    "%s%n%x",
    "../../etc/passwd",
    "null",
    "NaN",
    "\\",
    '"',
    "0001-01",
    "9999-12",
    "9999-11",
    "0000-01",
    "2026-13",
    "2026-00",
    "2026-1",
    "+2026-01",
    "\uff12\uff10\uff12\uff16-\uff10\uff11",  # full-width digits
    "2026-01\n",
    "EUR",
    "eur",
    "XXX",
    "EURO",
    "JPY",
    "BHD",
    "localtime",
    "posixrules",
    "Factory",
    "right/UTC",
    "posix/UTC",
    "UTC\x00",
    " UTC",
    "EST5EDT",
    "Europe/../UTC",
    "89" + "0" * 17,  # 19 digits, bad Luhn
    "8900000000000000000000000000",
]
UNITS = ["x", "8", "é", "🙂", "\u202e", "\x00", "e\u0301", "\x7f"]


def huge_strings() -> st.SearchStrategy[str]:
    """A few hundred KB at most: big, yet under the 8 MiB message limit."""
    return st.builds(
        lambda unit, n: unit * n,
        st.sampled_from(UNITS),
        st.sampled_from([1_000, 65_536, 100_000, 300_000]),
    )


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """one_of with weights: a strategy of weight 3 is drawn three times as often as one of 1."""
    strategies = [s for weight, s in choices for _ in range(weight)]
    return st.one_of(*strategies)


def hostile_strings(valid: list[str]) -> st.SearchStrategy[str]:
    return weighted(
        (4, st.sampled_from(valid) if valid else st.just("")),
        (4, st.sampled_from(HOSTILE_TEXT)),
        (2, st.text(st.characters(codec="utf-8"), max_size=40)),
        (1, huge_strings()),
    )


INT64_EXTREMES = [INT64_MIN, INT64_MAX, 0, -1, 1, INT64_MAX - 1, INT64_MIN + 1, 2**62, 10**18]
INT32_EXTREMES = [INT32_MIN, INT32_MAX, 0, -1, 1, 28, 29, 31]


def hostile_ints(field: FieldDescriptor) -> st.SearchStrategy[int]:
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        return st.one_of(st.sampled_from(INT32_EXTREMES), st.integers(INT32_MIN, INT32_MAX))
    return weighted(
        (3, st.sampled_from(INT64_EXTREMES)),
        (2, st.integers(0, 10_000_000)),
        (1, st.integers(-10_000_000, -1)),
        (1, st.integers(INT64_MIN, INT64_MAX)),
    )


def hostile_enums(field: FieldDescriptor) -> st.SearchStrategy[int]:
    defined = [v.number for v in field.enum_type.values]
    return st.sampled_from([*defined, *defined, 99, -5, INT32_MAX, INT32_MIN])


SECONDS_EXTREMES = [
    YEAR_1,
    YEAR_1 - 1,
    YEAR_9999_END,
    YEAR_9999_END + 1,
    INT64_MIN,
    INT64_MAX,
    0,
    -1,
]
NANOS = [0, 999_999_999, 1_000_000_000, -1, INT32_MAX, INT32_MIN, 500]


def hostile_timestamps(model: Model, *, far_future: bool = True) -> st.SearchStrategy[Message]:
    extremes = SECONDS_EXTREMES if far_future else [s for s in SECONDS_EXTREMES if s < 10**10]
    seconds = weighted(
        (3, st.integers(-40 * 86400, 600).map(lambda offset: model.now_seconds() + offset)),
        (2, st.sampled_from(extremes)),
        (1, st.integers(INT64_MIN, INT64_MAX if far_future else 0)),
    )
    nanos = weighted((3, st.just(0)), (1, st.sampled_from(NANOS)))
    return st.builds(lambda s, n: _timestamp(s, n), seconds, nanos)


def _timestamp(seconds: int, nanos: int) -> Message:
    ts = t.UsageRecord().event_time.__class__()
    ts.seconds, ts.nanos = seconds, nanos
    return ts


def hostile_durations() -> st.SearchStrategy[Message]:
    seconds = st.sampled_from(
        [0, 1, 86400, 30 * 86400, -1, INT64_MIN, INT64_MAX, 100 * 365 * 86400 + 1, 315_576_000_001]
    )
    nanos = st.sampled_from([0, 0, 1, 999_999_999, 1_000_000_000, -1, INT32_MAX, INT32_MIN])

    def build(s: int, n: int) -> Message:
        d = t.Activation().grace_period.__class__()
        d.seconds, d.nanos = s, n
        return d

    return st.builds(build, seconds, nanos)


# --- the model of what the server should hold --------------------------------------------------


@dataclasses.dataclass
class Model:
    now: datetime = T0
    plans: dict[str, t.Plan] = dataclasses.field(default_factory=dict)
    accounts: dict[str, t.Account] = dataclasses.field(default_factory=dict)
    sims: dict[str, tuple[str, str]] = dataclasses.field(
        default_factory=dict
    )  # iccid -> acct, plan
    asked_accounts: set[str] = dataclasses.field(default_factory=set)
    asked_iccids: set[str] = dataclasses.field(default_factory=set)
    # (iccid, period) -> usage type -> quantity of the records answered RATED
    rated: dict[tuple[str, str], Counter[int]] = dataclasses.field(
        default_factory=lambda: defaultdict(Counter)
    )
    rated_ids: set[str] = dataclasses.field(default_factory=set)
    in_doubt: list[t.UsageRecord] = dataclasses.field(default_factory=list)
    codes: dict[str, Counter[str]] = dataclasses.field(default_factory=lambda: defaultdict(Counter))
    record_statuses: Counter[str] = dataclasses.field(default_factory=Counter)

    def now_seconds(self) -> int:
        return int(self.now.timestamp())


def every_method() -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [m for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods]


# --- generic requests: walk the descriptor ------------------------------------------------------

ID_POOLS: dict[str, list[str]] = {
    "plan_id": PLAN_IDS,
    "sim_commitment_plan_id": PLAN_IDS,
    "account_id": ACCOUNT_IDS,
    "period": PERIODS,
    "effective_period": PERIODS,
    "currency": ["EUR", "JPY"],
    "timezone": ZONES,
    "record_id": ["fz-r1", "fz-r2"],
    "session_id": ["s-1"],
    "batch_id": ["b-1"],
}


def iccid_pool(method: str) -> list[str]:
    if method in ("SuspendSim", "ResumeSim"):
        return SUSPENDABLE + TERMINABLE + FREE
    if method == "TerminateSim":
        return TERMINABLE + FREE
    return SETUP_SIMS + FREE


def string_values(field: FieldDescriptor, method: str) -> st.SearchStrategy[str]:
    if field.name in ("iccid", "iccids"):
        return hostile_strings(iccid_pool(method))
    return hostile_strings(ID_POOLS.get(field.name, []))


def message_values(
    field: FieldDescriptor, method: str, model: Model, depth: int
) -> st.SearchStrategy[Message]:
    name = field.message_type.full_name
    if name == "google.protobuf.Timestamp":
        return hostile_timestamps(model, far_future=method != "AdvanceTime")
    if name == "google.protobuf.Duration":
        return hostile_durations()
    return generic(field.message_type, method, model, depth + 1)


def scalar_values(
    field: FieldDescriptor, method: str, model: Model, depth: int
) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return string_values(field, method)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return hostile_enums(field)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_values(field, method, model, depth)
    return hostile_ints(field)


def assign(msg: Message, field: FieldDescriptor, value: Any) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(msg, field.name).CopyFrom(value)
    else:
        setattr(msg, field.name, value)


MAX_DEPTH = 4


@st.composite
def generic(draw: st.DrawFn, descriptor: Descriptor, method: str, model: Model, depth: int = 0):  # type: ignore[no-untyped-def]
    msg = message_factory.GetMessageClass(descriptor)()
    if depth > MAX_DEPTH or draw(st.integers(0, 9)) == 0:
        return msg  # the empty message
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        values = scalar_values(field, method, model, depth)
        if field.is_repeated:
            items = draw(st.lists(values, max_size=3))
            target = getattr(msg, field.name)
            for item in items:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
        else:
            assign(msg, field, draw(values))
    return msg


# --- well-formed requests ----------------------------------------------------------------------


def rate(usage_type: int, unit: int, increment: int, included: int, pooled: bool) -> t.UsageRate:
    tiers = [t.Tier(up_to_quantity=0, price_micros=100_000)]
    if pooled:
        tiers = [t.Tier(up_to_quantity=10 * unit, price_micros=200_000), *tiers]
    return t.UsageRate(
        usage_type=usage_type,  # type: ignore[arg-type]
        unit_quantity=unit,
        rounding_increment=increment,
        included_quantity=included,
        pooled=pooled,
        tiers=tiers,
    )


def setup_plan() -> t.Plan:
    return t.Plan(
        plan_id=SETUP_PLAN,
        currency="EUR",
        subscription_fee_micros=2_000_000,
        activation=t.Activation(mode=t.ACTIVATION_MODE_IMMEDIATE),
        billing_mode=t.BILLING_MODE_ALWAYS,
        proration=t.PRORATION_DAILY,
        usage_rates=[
            rate(t.USAGE_TYPE_DATA, 1_048_576, 1_024, 10_485_760, False),
            rate(t.USAGE_TYPE_SMS, 1, 1, 10, True),
        ],
    )


def build_plan(
    plan_id: str, currency: str, fee: int, first_use: bool, when_used: bool, pooled: bool
) -> t.Plan:
    plan = t.Plan(
        plan_id=plan_id,
        currency=currency,
        subscription_fee_micros=fee,
        billing_mode=t.BILLING_MODE_WHEN_USED if when_used else t.BILLING_MODE_ALWAYS,
        proration=t.PRORATION_NONE if when_used else t.PRORATION_DAILY,
        usage_rates=[rate(t.USAGE_TYPE_DATA, 1_000_000, 1_000, 5_000_000, pooled)],
    )
    if first_use:
        plan.activation.mode = t.ACTIVATION_MODE_FIRST_USE
        plan.activation.thresholds.append(
            t.ActivationThreshold(usage_type=t.USAGE_TYPE_DATA, quantity=1_000_000)
        )
        plan.activation.grace_period.FromSeconds(3 * 86400)
    else:
        plan.activation.mode = t.ACTIVATION_MODE_IMMEDIATE
    return plan


def valid_plans() -> st.SearchStrategy[t.Plan]:
    return st.one_of(
        st.just(setup_plan()),
        st.builds(
            build_plan,
            st.sampled_from(PLAN_IDS[1:]),
            st.sampled_from(["EUR", "EUR", "JPY"]),
            st.sampled_from([0, 1_000_000]),
            st.booleans(),
            st.booleans(),
            st.booleans(),
        ),
    )


def build_account(
    account_id: str, currency: str, timezone: str, billing_day: int, commit_plan: str | None
) -> t.Account:
    account = t.Account(
        account_id=account_id, currency=currency, timezone=timezone, billing_day=billing_day
    )
    if commit_plan is not None:
        account.commitment_schedule.append(
            t.CommitmentStep(
                effective_period="2026-01",
                min_billable_sims=3,
                sim_commitment_plan_id=commit_plan,
                min_spend_micros=5_000_000,
            )
        )
    return account


def valid_accounts() -> st.SearchStrategy[t.Account]:
    return st.builds(
        build_account,
        st.sampled_from(ACCOUNT_IDS),
        st.sampled_from(["EUR", "EUR", "JPY"]),
        st.sampled_from(ZONES),
        st.sampled_from([0, 1, 5, 28]),
        st.one_of(st.none(), st.sampled_from(PLAN_IDS)),
    )


def past(model: Model, most_days: int) -> st.SearchStrategy[Message]:
    return st.integers(0, most_days * 86400).map(
        lambda back: _timestamp(model.now_seconds() - back, 0)
    )


def valid_records(model: Model) -> st.SearchStrategy[t.UsageRecord]:
    def build(
        record_id: str, iccid: str, usage_type: int, quantity: int, when: Message
    ) -> t.UsageRecord:
        out = t.UsageRecord(
            record_id=record_id,
            iccid=iccid,
            usage_type=usage_type,  # type: ignore[arg-type]
            quantity=quantity,
            session_id="s",
        )
        out.event_time.CopyFrom(when)
        return out

    return st.builds(
        build,
        st.one_of(
            st.integers(0, 30).map(lambda n: f"fz-dup-{n}"), st.uuids().map(lambda u: f"fz-{u}")
        ),
        st.sampled_from(SETUP_SIMS + SETUP_SIMS + FREE),
        st.sampled_from([1, 2, 3]),
        st.one_of(st.integers(0, 10_000_000), st.sampled_from([0, 1, 1_048_576])),
        past(model, 3),
    )


def batches(model: Model) -> st.SearchStrategy[list[t.UsageRecord]]:
    """Records of a batch; sometimes exactly the limit or one over it."""
    record = valid_records(model)
    return weighted(
        (20, st.lists(st.one_of(record, mutated(record, "RateUsage", model)), max_size=8)),
        (1, st.builds(lambda rec, n: [rec] * n, record, st.sampled_from([10_000, 10_001]))),
    )


@st.composite
def stream_of_batches(draw: st.DrawFn, model: Model, hostile: bool) -> list[r.StreamUsageRequest]:
    out = []
    for n in range(draw(st.integers(0, 4))):
        if hostile and draw(st.booleans()):
            out.append(draw(generic(r.StreamUsageRequest.DESCRIPTOR, "StreamUsage", model)))
        else:
            out.append(r.StreamUsageRequest(batch_id=f"b{n}", records=draw(batches(model))))
    return out


def valid_request(method: str, model: Model) -> st.SearchStrategy[Any]:
    iccid = st.sampled_from(SETUP_SIMS + FREE)
    suspendable = st.sampled_from(iccid_pool("SuspendSim"))
    terminable = st.sampled_from(iccid_pool("TerminateSim"))
    account = st.sampled_from(ACCOUNT_IDS)
    period = st.sampled_from(["2025-12", "2026-01", ""])
    optional_past = st.one_of(st.none(), past(model, 40))

    def with_time(message: Message, field: str, when: Message | None) -> Message:
        if when is not None:
            getattr(message, field).CopyFrom(when)
        return message

    builders: dict[str, st.SearchStrategy[Any]] = {
        "PutPlan": valid_plans().map(lambda plan: c.PutPlanRequest(plan=plan)),
        "GetPlan": st.sampled_from(PLAN_IDS).map(lambda i: c.GetPlanRequest(plan_id=i)),
        "ListPlans": st.just(c.ListPlansRequest()),
        "PutAccount": valid_accounts().map(lambda a: c.PutAccountRequest(account=a)),
        "GetAccount": account.map(lambda i: c.GetAccountRequest(account_id=i)),
        "ProvisionSims": st.builds(
            lambda a, plan, ids, when: with_time(
                p.ProvisionSimsRequest(account_id=a, plan_id=plan, iccids=ids),
                "provisioned_at",
                when,
            ),
            account,
            st.sampled_from(PLAN_IDS),
            st.lists(st.sampled_from(FREE + SETUP_SIMS), max_size=5),
            optional_past,
        ),
        "SuspendSim": suspendable.map(lambda i: p.SuspendSimRequest(iccid=i)),
        "ResumeSim": suspendable.map(lambda i: p.ResumeSimRequest(iccid=i)),
        "TerminateSim": st.builds(
            lambda i, when: with_time(p.TerminateSimRequest(iccid=i), "effective_at", when),
            terminable,
            st.one_of(st.none(), past(model, 3)),
        ),
        "AuthorizeSession": st.builds(
            lambda i, u, q: r.AuthorizeSessionRequest(
                iccid=i,
                usage_type=u,  # type: ignore[arg-type]
                requested_quantity=q,
            ),
            iccid,
            st.sampled_from([1, 2, 3]),
            st.integers(0, 10**9),
        ),
        "GetSimStatus": iccid.map(lambda i: r.GetSimStatusRequest(iccid=i)),
        "RateUsage": batches(model).map(lambda records: r.RateUsageRequest(records=records)),
        "StreamUsage": stream_of_batches(model, hostile=False),
        "GetBillPreview": st.builds(
            lambda a, x: r_billing().GetBillPreviewRequest(account_id=a, period=x), account, period
        ),
        "SettlePeriod": st.builds(
            lambda a, x: r_billing().SettlePeriodRequest(account_id=a, period=x), account, period
        ),
        "GetInvoice": st.builds(
            lambda a, x: r_billing().GetInvoiceRequest(account_id=a, period=x), account, period
        ),
        "ListInvoices": account.map(lambda a: r_billing().ListInvoicesRequest(account_id=a)),
        "GetTime": st.just(k.GetTimeRequest()),
        "AdvanceTime": st.integers(0, 6 * 3600).map(
            lambda ahead: k.AdvanceTimeRequest(to=_timestamp(model.now_seconds() + ahead, 0))
        ),
    }
    return builders[method]


def r_billing() -> Any:
    from rating.v1 import billing_service_pb2

    return billing_service_pb2


# --- one field made hostile ---------------------------------------------------------------------


def leaves(msg: Message) -> Iterator[tuple[Message, FieldDescriptor, int | None]]:
    """Every field of the tree a mutation may replace: (parent, field, index if repeated)."""
    for field in msg.DESCRIPTOR.fields:
        is_leaf_message = field.type == FieldDescriptor.TYPE_MESSAGE and (
            field.message_type.full_name.startswith("google.protobuf.")
        )
        if field.is_repeated:
            items = getattr(msg, field.name)
            for i, item in enumerate(items):
                if field.type == FieldDescriptor.TYPE_MESSAGE and not is_leaf_message:
                    yield from leaves(item)
                else:
                    yield msg, field, i
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not is_leaf_message:
            yield msg, field, None
            if msg.HasField(field.name):
                yield from leaves(getattr(msg, field.name))
        else:
            yield msg, field, None


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[Message], method: str, model: Model):  # type: ignore[no-untyped-def]
    msg = draw(valid)
    out = msg.__class__()
    out.CopyFrom(msg)
    candidates = list(leaves(out))
    if not candidates:
        return out
    parent, field, index = draw(st.sampled_from(candidates))
    value = draw(scalar_values(field, method, model, 0))
    if index is None:
        if draw(st.integers(0, 4)) == 0:
            parent.ClearField(field.name)
        else:
            assign(parent, field, value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(parent, field.name)[index].CopyFrom(value)
    else:
        getattr(parent, field.name)[index] = value
    return out


def request_strategy(method: MethodDescriptor, model: Model) -> st.SearchStrategy[Any]:
    name = method.name
    if method.client_streaming:
        return st.one_of(
            stream_of_batches(model, hostile=False), stream_of_batches(model, hostile=True)
        )
    valid = valid_request(name, model)
    return weighted(
        (2, generic(method.input_type, name, model)),
        (2, valid),
        (2, mutated(valid, name, model)),
    )


# --- calling the server from hypothesis' thread and feeding the model --------------------------


@dataclasses.dataclass
class Answer:
    code: grpc.StatusCode
    details: str
    responses: list[Any]


class Fuzzer:
    def __init__(self, loop: asyncio.AbstractEventLoop, channel: grpc.aio.Channel) -> None:
        self.loop = loop
        self.channel = channel
        self.model = Model()
        self.calls = 0
        self.failure: str | None = None

    async def call(self, method: MethodDescriptor, request: Any) -> Answer:
        path = f"/{method.containing_service.full_name}/{method.name}"
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        responses: list[Any] = []
        try:
            if method.client_streaming:
                stream = self.channel.stream_stream(
                    path,
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString,
                )
                async for response in stream(iter(request), timeout=CALL_TIMEOUT):
                    responses.append(response)
            else:
                unary = self.channel.unary_unary(
                    path,
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString,
                )
                responses.append(await unary(request, timeout=CALL_TIMEOUT))
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "", responses)
        return Answer(grpc.StatusCode.OK, "", responses)

    def call_from_thread(self, method: MethodDescriptor, request: Any) -> Answer:
        future = asyncio.run_coroutine_threadsafe(self.call(method, request), self.loop)
        try:
            return future.result(CALL_TIMEOUT + 10)
        except FutureTimeout:
            future.cancel()
            raise AssertionError(f"{method.name} hung: the server stopped answering") from None

    def check(self, method: MethodDescriptor, request: Any, answer: Answer) -> None:
        """Record the answer in the model, then assert it is a defined one."""
        self.calls += 1
        learn = getattr(self, f"_learn_{method.name}", None)
        if learn is not None:
            learn(request, answer)
        if method.client_streaming and answer.details == CLIENT_WRITE_RACE:
            # The server answered (its own code is checked in its metrics at the end), but
            # the client was still writing when the server ended the stream.
            self.model.codes[method.name]["INTERNAL (client write race)"] += 1
            return
        self.model.codes[method.name][answer.code.name] += 1
        assert answer.code in DEFINED_CODES, (method.name, answer.code, answer.details, request)
        if answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            messages = request if method.client_streaming else [request]
            assert max(m.ByteSize() for m in messages) > MESSAGE_LIMIT, (method.name, answer)
        if answer.code == grpc.StatusCode.INVALID_ARGUMENT:
            assert answer.details, (method.name, "INVALID_ARGUMENT without a message")

    # Each _learn_* feeds the model with what an answer says changed, and checks the answer
    # agrees with what the model knew before.

    def _learn_PutPlan(self, request: c.PutPlanRequest, answer: Answer) -> None:
        plan_id = request.plan.plan_id
        known = self.model.plans.get(plan_id)
        if answer.code == grpc.StatusCode.OK:
            response = answer.responses[0]
            assert response.created == (known is None), plan_id
            assert response.plan.plan_id == plan_id
            if known is None:
                self.model.plans[plan_id] = response.plan
            else:
                assert response.plan == known, "an idempotent PutPlan changed the plan"
        elif answer.code == grpc.StatusCode.ALREADY_EXISTS:
            assert known is not None, f"ALREADY_EXISTS for unknown plan {plan_id!r}"

    def _learn_PutAccount(self, request: c.PutAccountRequest, answer: Answer) -> None:
        account_id = request.account.account_id
        self.model.asked_accounts.add(account_id)
        if answer.code == grpc.StatusCode.OK:
            response = answer.responses[0]
            assert response.created == (account_id not in self.model.accounts)
            assert response.account.account_id == account_id
            self.model.accounts[account_id] = response.account

    def _learn_GetAccount(self, request: c.GetAccountRequest, answer: Answer) -> None:
        self.model.asked_accounts.add(request.account_id)

    def _learn_ProvisionSims(self, request: p.ProvisionSimsRequest, answer: Answer) -> None:
        self.model.asked_iccids.update(request.iccids)
        if answer.code != grpc.StatusCode.OK:
            return
        results = answer.responses[0].results
        assert [x.iccid for x in results] == list(request.iccids)
        owner = (request.account_id, request.plan_id)
        for result in results:
            assert result.status in PROVISION_STATUSES, result
            if result.status == p.PROVISION_STATUS_CREATED:
                assert result.iccid not in self.model.sims, result.iccid
                self.model.sims[result.iccid] = owner
            elif result.status == p.PROVISION_STATUS_ALREADY_PROVISIONED:
                assert self.model.sims.get(result.iccid) == owner, result.iccid

    def _learn_iccid(self, request: Any, answer: Answer) -> None:
        self.model.asked_iccids.add(request.iccid)
        if answer.code == grpc.StatusCode.OK and request.iccid not in self.model.sims:
            raise AssertionError(f"found a SIM never CREATED: {request.iccid!r}")

    _learn_SuspendSim = _learn_ResumeSim = _learn_TerminateSim = _learn_iccid
    _learn_GetSimStatus = _learn_iccid

    def _learn_AuthorizeSession(self, request: r.AuthorizeSessionRequest, answer: Answer) -> None:
        self.model.asked_iccids.add(request.iccid)
        if answer.code == grpc.StatusCode.OK and request.iccid not in self.model.sims:
            response = answer.responses[0]
            assert not response.allowed, request.iccid
            assert response.deny_reason == r.DENY_REASON_UNKNOWN_SIM, response

    def _learn_AdvanceTime(self, request: k.AdvanceTimeRequest, answer: Answer) -> None:
        if answer.code == grpc.StatusCode.OK:
            now = answer.responses[0].now.ToDatetime(UTC)
            assert now >= self.model.now, "time went back"
            self.model.now = now

    def _learn_RateUsage(self, request: r.RateUsageRequest, answer: Answer) -> None:
        if answer.code == grpc.StatusCode.OK:
            self._learn_results(list(request.records), list(answer.responses[0].results))

    def _learn_StreamUsage(self, request: list[r.StreamUsageRequest], answer: Answer) -> None:
        acks = answer.responses
        assert len(acks) <= len(request)
        if answer.code == grpc.StatusCode.OK:
            assert len(acks) == len(request), "a batch went unacknowledged"
        for batch, ack in zip(request, acks, strict=False):
            assert ack.batch_id == batch.batch_id, "acknowledgements out of order"
            self._learn_results(list(batch.records), list(ack.results))
        for batch in request[len(acks) :]:  # sent, not acknowledged: maybe committed
            self.model.in_doubt.extend(batch.records)

    def _learn_results(
        self,
        records: list[t.UsageRecord],
        results: list[t.RecordResult],
        stored: dict[str, t.UsageRecord] | None = None,
    ) -> None:
        """`stored` (a retry of records in doubt): for each of their ids stored before the
        retry, the record stored with it. A DUPLICATE of an id not counted yet then means a
        failed stream stored it: that record is counted, whichever of the records sent with
        the id it was (the fuzz reuses ids with other contents)."""
        assert len(results) == len(records), "one result per record"
        for record, result in zip(records, results, strict=True):
            # An INVALID record's id is echoed cut to 128 characters: no 300 KB echoes.
            echoed = record.record_id[:128] if result.status == t.RECORD_STATUS_INVALID else None
            assert result.record_id in (record.record_id, echoed)
            assert result.status in RECORD_STATUSES, result
            self.model.record_statuses[t.RecordStatus.Name(result.status)] += 1
            if result.status == t.RECORD_STATUS_RATED:
                self._count(record)
            elif (
                stored is not None
                and result.status == t.RECORD_STATUS_DUPLICATE
                and record.record_id not in self.model.rated_ids
            ):
                assert record.record_id in stored, f"DUPLICATE, never stored: {record.record_id}"
                self._count(stored[record.record_id])

    def _count(self, record: t.UsageRecord) -> None:
        assert record.record_id not in self.model.rated_ids, f"counted twice: {record.record_id}"
        assert record.iccid in self.model.sims, f"rated for an unknown SIM {record.iccid!r}"
        self.model.rated_ids.add(record.record_id)
        account = self.model.accounts[self.model.sims[record.iccid][0]]
        period = period_containing(
            record.event_time.ToDatetime(UTC), account.timezone or "UTC", account.billing_day or 1
        )
        self.model.rated[(record.iccid, period.name)][record.usage_type] += record.quantity


# --- the test -----------------------------------------------------------------------------------


async def set_up(fuzzer: Fuzzer) -> None:
    methods = {m.name: m for m in every_method()}
    provision = p.ProvisionSimsRequest(
        account_id=SETUP_ACCOUNT, plan_id=SETUP_PLAN, iccids=SETUP_SIMS
    )
    provision.provisioned_at.FromDatetime(T0 - timedelta(days=1))
    for name, request in (
        ("PutPlan", c.PutPlanRequest(plan=setup_plan())),
        (
            "PutAccount",
            c.PutAccountRequest(account=build_account(SETUP_ACCOUNT, "EUR", "UTC", 1, None)),
        ),
        ("ProvisionSims", provision),
    ):
        answer = await fuzzer.call(methods[name], request)
        assert answer.code == grpc.StatusCode.OK, (name, answer.details)
        fuzzer.check(methods[name], request, answer)


async def known_good_tour(fuzzer: Fuzzer) -> None:
    """One call per RPC that must succeed whatever the fuzz did, checked like the others."""
    from rating.v1 import billing_service_pb2 as b

    record = t.UsageRecord(
        record_id="fz-tour", iccid=PROTECTED[1], usage_type=t.USAGE_TYPE_DATA, quantity=7
    )
    record.event_time.FromDatetime(fuzzer.model.now)
    requests: dict[str, Any] = {
        "PutPlan": c.PutPlanRequest(plan=setup_plan()),
        "GetPlan": c.GetPlanRequest(plan_id=SETUP_PLAN),
        "ListPlans": c.ListPlansRequest(),
        "PutAccount": c.PutAccountRequest(account=fuzzer.model.accounts[SETUP_ACCOUNT]),
        "GetAccount": c.GetAccountRequest(account_id=SETUP_ACCOUNT),
        "ProvisionSims": p.ProvisionSimsRequest(
            account_id=SETUP_ACCOUNT, plan_id=SETUP_PLAN, iccids=PROTECTED
        ),
        "SuspendSim": p.SuspendSimRequest(iccid=SUSPENDABLE[0]),
        "ResumeSim": p.ResumeSimRequest(iccid=SUSPENDABLE[0]),
        "TerminateSim": p.TerminateSimRequest(iccid=TERMINABLE[0]),
        "AuthorizeSession": r.AuthorizeSessionRequest(
            iccid=PROTECTED[0], usage_type=t.USAGE_TYPE_DATA, requested_quantity=1
        ),
        "GetSimStatus": r.GetSimStatusRequest(iccid=PROTECTED[0]),
        "RateUsage": r.RateUsageRequest(records=[record]),
        "StreamUsage": [r.StreamUsageRequest(batch_id="tour")],
        "GetBillPreview": b.GetBillPreviewRequest(account_id=SETUP_ACCOUNT),
        "SettlePeriod": b.SettlePeriodRequest(account_id=SETUP_ACCOUNT, period="2025-12"),
        "GetInvoice": b.GetInvoiceRequest(account_id=SETUP_ACCOUNT, period="2025-12"),
        "ListInvoices": b.ListInvoicesRequest(account_id=SETUP_ACCOUNT),
        "GetTime": k.GetTimeRequest(),
        "AdvanceTime": k.AdvanceTimeRequest(to=_timestamp(fuzzer.model.now_seconds(), 0)),
    }
    for method in every_method():
        request = requests[method.name]
        answer = await fuzzer.call(method, request)
        fuzzer.check(method, request, answer)
        assert answer.code == grpc.StatusCode.OK, (method.name, answer.details)


def run_fuzz(fuzzer: Fuzzer, examples: int, fuzz_seed: int) -> None:
    methods = every_method()

    @seed(fuzz_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(1, 12))):
            method = data.draw(st.sampled_from(methods))
            request = data.draw(request_strategy(method, fuzzer.model))
            if fuzzer.failure is not None:
                # Nothing after a failure is meaningful; drawing on keeps every example's
                # draws independent of the server, as hypothesis requires.
                continue
            answer = fuzzer.call_from_thread(method, request)
            try:
                fuzzer.check(method, request, answer)
            except AssertionError as exc:
                fuzzer.failure = f"{method.name}: {exc}\nrequest: {shown(request)}"

    fuzz()
    # Raised here, not inside the example: hypothesis would replay the failing example to
    # report it, against a server whose state has moved on (a "flaky" failure).
    assert fuzzer.failure is None, fuzzer.failure


def shown(request: Any) -> str:
    text = str(request)
    return text if len(text) < 3_000 else text[:3_000] + f"... ({len(text)} characters)"


async def resolve_in_doubt(fuzzer: Fuzzer, app: Application) -> None:
    """Send the records in doubt again, in the order they were first sent."""
    rate_usage = next(m for m in every_method() if m.name == "RateUsage")
    doubt = fuzzer.model.in_doubt
    stored = await stored_in_doubt(app, doubt, fuzzer.model.rated_ids)
    for records in retry_batches(doubt):
        request = r.RateUsageRequest(records=records)
        answer = await fuzzer.call(rate_usage, request)
        assert answer.code == grpc.StatusCode.OK, answer.details
        fuzzer._learn_results(records, list(answer.responses[0].results), stored)


async def stored_in_doubt(
    app: Application, doubt: list[t.UsageRecord], counted: set[str]
) -> dict[str, t.UsageRecord]:
    """Of the records in doubt whose id is not `counted` (answered RATED), the one stored
    with each id stored now: read from PostgreSQL, as no answer tells which of several
    records sent with an id a failed stream stored. Each must be one of those records."""
    sent: dict[str, list[t.UsageRecord]] = defaultdict(list)
    for record in doubt:
        # An id with a NUL is never stored (PostgreSQL text cannot hold it).
        if record.record_id not in counted and "\x00" not in record.record_id:
            sent[record.record_id].append(record)
    async with app.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT record_id, iccid, usage_type, quantity, event_time FROM usage_records"
            " WHERE record_id = ANY($1::text[])",
            list(sent),
        )
    stored = {}
    for row in rows:
        content = (row["iccid"], row["usage_type"], row["quantity"], row["event_time"])
        matches = [x for x in sent[row["record_id"]] if record_content(x) == content]
        assert matches, f"stored {row['record_id']!r} as no record sent with that id: {content}"
        stored[row["record_id"]] = matches[0]
    return stored


def record_content(record: t.UsageRecord) -> tuple[str, int, int, datetime]:
    return (record.iccid, record.usage_type, record.quantity, record.event_time.ToDatetime(UTC))


def retry_batches(records: list[t.UsageRecord]) -> Iterator[list[t.UsageRecord]]:
    """Batches of at most 5,000 records and half the message limit, in order."""
    batch: list[t.UsageRecord] = []
    size = 0
    for record in records:
        record_size = record.ByteSize() + 8  # with its tag and length
        if batch and (len(batch) == 5_000 or size + record_size > MESSAGE_LIMIT // 2):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += record_size
    if batch:
        yield batch


async def check_state(fuzzer: Fuzzer, stubs: Stubs) -> None:
    model = fuzzer.model
    listed = (await stubs.catalog.ListPlans(c.ListPlansRequest())).plans
    assert {plan.plan_id: plan for plan in listed} == model.plans
    assert len(listed) == len(model.plans)
    for account_id, account in model.accounts.items():
        got = await stubs.catalog.GetAccount(c.GetAccountRequest(account_id=account_id))
        assert got.account == account
    for account_id in sorted(model.asked_accounts - set(model.accounts))[:200]:
        if account_id:
            code = await code_of(
                stubs.catalog.GetAccount(c.GetAccountRequest(account_id=account_id))
            )
            assert code == grpc.StatusCode.NOT_FOUND, account_id[:50]
    for iccid in sorted(model.asked_iccids - set(model.sims))[:300]:
        if iccid:
            code = await code_of(stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid)))
            assert code == grpc.StatusCode.NOT_FOUND, iccid[:50]
    for iccid, (account_id, plan_id) in model.sims.items():
        status = (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=iccid))).status
        assert (status.account_id, status.plan_id) == (account_id, plan_id)
        shown = {u.usage_type: u.quantity for u in status.period_usage if u.quantity}
        expected = {
            usage_type: quantity
            for usage_type, quantity in model.rated.get((iccid, status.current_period), {}).items()
            if quantity
        }
        assert shown == expected, (iccid, status.current_period)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def check_still_serving(stubs: Stubs, model: Model) -> None:
    health = health_pb2_grpc.HealthStub(stubs.channel)
    for service in ("", *SERVICE_NAMES):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    record = t.UsageRecord(
        record_id="fz-known-good", iccid=PROTECTED[0], usage_type=t.USAGE_TYPE_DATA, quantity=5
    )
    record.event_time.FromDatetime(model.now)
    results = (await stubs.rating.RateUsage(r.RateUsageRequest(records=[record]))).results
    assert [x.status for x in results] == [t.RECORD_STATUS_RATED]
    await stubs.catalog.GetPlan(c.GetPlanRequest(plan_id=SETUP_PLAN))


def report(model: Model, calls: int, seconds: float) -> None:
    print(f"\nfuzz: {calls} calls in {seconds:.1f} s")
    for method in every_method():
        codes = ", ".join(f"{code} {n}" for code, n in sorted(model.codes[method.name].items()))
        print(f"  {method.name:<17} {codes}")
    print(
        "  record statuses: "
        + ", ".join(f"{s} {n}" for s, n in sorted(model.record_statuses.items()))
    )


def fuzz_seed() -> int:
    """The seed of this run: RATING_FUZZ_SEED when set (a replay), else a fresh one."""
    chosen = os.environ.get(SEED_VARIABLE, "").strip()
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


async def test_fuzz_every_rpc(start_app: AppFactory) -> None:
    fuzz_seed_ = fuzz_seed()
    replay = f"{SEED_VARIABLE}={fuzz_seed_}"
    print(f"fuzz seed {fuzz_seed_}: replay with {replay}")
    try:
        await fuzz_every_rpc(start_app, fuzz_seed_)
    except AssertionError as exc:
        exc.add_note(f"fuzz seed {fuzz_seed_}: replay with {replay}")
        raise


async def fuzz_every_rpc(start_app: AppFactory, fuzz_seed: int) -> None:
    methods = every_method()
    assert len(methods) == 19
    app, stubs = await start_app()
    fuzzer = Fuzzer(asyncio.get_running_loop(), stubs.channel)
    await set_up(fuzzer)
    started = time.perf_counter()
    try:
        await asyncio.to_thread(run_fuzz, fuzzer, 250, fuzz_seed)
    finally:
        report(fuzzer.model, fuzzer.calls, time.perf_counter() - started)
    await known_good_tour(fuzzer)
    await resolve_in_doubt(fuzzer, app)
    for method in methods:
        assert fuzzer.model.codes[method.name].total() >= 20, method.name
    await check_state(fuzzer, stubs)
    await check_still_serving(stubs, fuzzer.model)
    handled = app.metrics.registry.get_sample_value
    for method in methods:
        service = method.containing_service.full_name
        grpc_type = "bidi_stream" if method.client_streaming else "unary"
        for code in ("INTERNAL", "UNKNOWN"):
            labels = {
                "grpc_type": grpc_type,
                "grpc_service": service,
                "grpc_method": method.name,
                "grpc_code": code,
            }
            assert handled("grpc_server_handled_total", labels) is None, (method.name, code)
    ok = {"grpc_type": "unary", "grpc_service": SERVICE_NAMES[0], "grpc_method": "ListPlans"}
    assert handled("grpc_server_handled_total", {**ok, "grpc_code": "OK"})  # labels are right


# --- regressions: bugs the fuzz found -----------------------------------------------------------


async def test_estimate_beyond_int64_saturates(start_app: AppFactory) -> None:
    """Found by the fuzz: an estimate beyond int64 (2**62 SMS at 0.10 each) failed the answer
    INTERNAL; for RateUsage that was after the record had been committed and counted."""
    _, stubs = await start_app()
    fuzzer = Fuzzer(asyncio.get_running_loop(), stubs.channel)
    await set_up(fuzzer)
    answer = await stubs.rating.AuthorizeSession(
        r.AuthorizeSessionRequest(
            iccid=PROTECTED[0], usage_type=t.USAGE_TYPE_SMS, requested_quantity=2**62
        )
    )
    assert answer.allowed and answer.estimated_charge_micros == INT64_MAX
    dear = build_plan("dear", "EUR", 0, False, False, False)
    dear.usage_rates[0].usage_type = t.USAGE_TYPE_SMS
    dear.usage_rates[0].unit_quantity = dear.usage_rates[0].rounding_increment = 1
    dear.usage_rates[0].included_quantity = 0
    dear.usage_rates[0].tiers[0].price_micros = INT64_MAX
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=dear))
    iccid = FREE[0]
    await stubs.provisioning.ProvisionSims(
        p.ProvisionSimsRequest(account_id=SETUP_ACCOUNT, plan_id="dear", iccids=[iccid])
    )
    record = t.UsageRecord(record_id="dear", iccid=iccid, usage_type=t.USAGE_TYPE_SMS, quantity=2)
    record.event_time.FromDatetime(T0)
    results = (await stubs.rating.RateUsage(r.RateUsageRequest(records=[record]))).results
    assert [x.status for x in results] == [t.RECORD_STATUS_RATED]
    assert results[0].estimated_charge_micros == INT64_MAX


async def test_int64_quantities_are_invalid_records(start_app: AppFactory) -> None:
    """Found by the fuzz: two records of 2**63-1 bytes were RATED, after which the SIM's
    period usage (their sum) no longer fit in int64: every SimStatus answer (GetSimStatus,
    Suspend/Resume/TerminateSim) and the bill preview failed INTERNAL."""
    _, stubs = await start_app()
    fuzzer = Fuzzer(asyncio.get_running_loop(), stubs.channel)
    await set_up(fuzzer)
    records = []
    for n, quantity in enumerate((INT64_MAX, INT64_MAX, 10**12 + 1, 10**12)):
        record = t.UsageRecord(
            record_id=f"big-{n}",
            iccid=PROTECTED[0],
            usage_type=t.USAGE_TYPE_DATA,
            quantity=quantity,
        )
        record.event_time.FromDatetime(T0)
        records.append(record)
    results = (await stubs.rating.RateUsage(r.RateUsageRequest(records=records))).results
    assert [x.status for x in results] == [t.RECORD_STATUS_INVALID] * 3 + [t.RECORD_STATUS_RATED]
    assert all(x.detail.startswith("quantity:") for x in results[:3])
    status = (await stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=PROTECTED[0]))).status
    assert [(u.usage_type, u.quantity) for u in status.period_usage] == [(1, 10**12)]
    from rating.v1 import billing_service_pb2 as b

    await stubs.billing.GetBillPreview(b.GetBillPreviewRequest(account_id=SETUP_ACCOUNT))


async def test_error_quoting_a_huge_id_keeps_its_code(stubs: Stubs) -> None:
    """Found by the fuzz: NOT_FOUND for a 300,000-character id quoted the id in full; the
    status message overflowed the client's metadata limit and arrived as RESOURCE_EXHAUSTED."""
    huge = "\u202e" * 300_000
    for call in (
        stubs.catalog.GetAccount(c.GetAccountRequest(account_id=huge)),
        stubs.rating.GetSimStatus(r.GetSimStatusRequest(iccid=huge)),
    ):
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            assert len(exc.details() or "") < 1_000
        else:
            raise AssertionError("found an account or SIM that does not exist")


async def test_a_bill_beyond_int64_is_a_failed_precondition(start_app: AppFactory) -> None:
    """Found by the fuzz: two SIMs on a plan whose fee is the int64 maximum made a bill whose
    total no longer fits in int64; GetBillPreview failed INTERNAL."""
    from rating.v1 import billing_service_pb2 as b

    app, stubs = await start_app()
    fuzzer = Fuzzer(asyncio.get_running_loop(), stubs.channel)
    await set_up(fuzzer)
    dear = build_plan("dear", "EUR", INT64_MAX, False, False, False)
    await stubs.catalog.PutPlan(c.PutPlanRequest(plan=dear))
    provision = p.ProvisionSimsRequest(account_id=SETUP_ACCOUNT, plan_id="dear", iccids=FREE[:2])
    provision.provisioned_at.FromDatetime(T0 - timedelta(days=40))
    await stubs.provisioning.ProvisionSims(provision)
    for call in (
        stubs.billing.GetBillPreview(b.GetBillPreviewRequest(account_id=SETUP_ACCOUNT)),
        stubs.billing.SettlePeriod(
            b.SettlePeriodRequest(account_id=SETUP_ACCOUNT, period="2025-12")
        ),
    ):
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            assert "beyond the int64 range" in (exc.details() or "")
        else:
            raise AssertionError("a bill beyond int64 was answered")
    metric = app.metrics.registry.get_sample_value
    assert metric("rating_settlements_total", {"result": "failed"}) == 1
    code = await code_of(
        stubs.billing.GetInvoice(b.GetInvoiceRequest(account_id=SETUP_ACCOUNT, period="2025-12"))
    )
    assert code == grpc.StatusCode.NOT_FOUND  # nothing was settled
    # The other account's bills are untouched.
    await stubs.catalog.PutAccount(
        c.PutAccountRequest(account=build_account("fz-a1", "EUR", "UTC", 1, None))
    )
    await stubs.billing.GetBillPreview(b.GetBillPreviewRequest(account_id="fz-a1"))
