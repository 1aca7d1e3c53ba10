"""What the fuzz test sends: hostile values, generic requests walked from the descriptors,
well-formed requests around the set-up world, and well-formed ones with one field made
hostile (see tests/test_fuzz.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import clock_service_pb2 as k
from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import rating_service_pb2 as r
from rating.v1 import types_pb2 as t
from tests.support.fuzz.model import (
    ACCOUNT_IDS,
    FREE,
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    PERIODS,
    PLAN_IDS,
    SETUP_PLAN,
    SETUP_SIMS,
    SUSPENDABLE,
    TERMINABLE,
    YEAR_1,
    YEAR_9999_END,
    ZONES,
    Model,
)

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
    assert field.enum_type is not None
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


def hostile_timestamps(model: Model, *, far_future: bool = True) -> st.SearchStrategy[Timestamp]:
    extremes = SECONDS_EXTREMES if far_future else [s for s in SECONDS_EXTREMES if s < 10**10]
    seconds = weighted(
        (3, st.integers(-40 * 86400, 600).map(lambda offset: model.now_seconds() + offset)),
        (2, st.sampled_from(extremes)),
        (1, st.integers(INT64_MIN, INT64_MAX if far_future else 0)),
    )
    nanos = weighted((3, st.just(0)), (1, st.sampled_from(NANOS)))
    return st.builds(lambda s, n: timestamp(s, n), seconds, nanos)


def timestamp(seconds: int, nanos: int) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


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
    message_type = field.message_type
    assert message_type is not None
    name = message_type.full_name
    if name == "google.protobuf.Timestamp":
        return hostile_timestamps(model, far_future=method != "AdvanceTime")
    if name == "google.protobuf.Duration":
        return hostile_durations()
    return generic(message_type, method, model, depth + 1)


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
        lambda back: timestamp(model.now_seconds() - back, 0)
    )


def valid_records(model: Model) -> st.SearchStrategy[t.UsageRecord]:
    def build(
        record_id: str, iccid: str, usage_type: int, quantity: int, when: Timestamp
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
            lambda ahead: k.AdvanceTimeRequest(to=timestamp(model.now_seconds() + ahead, 0))
        ),
    }
    return builders[method]


def r_billing() -> Any:
    from rating.v1 import billing_service_pb2

    return billing_service_pb2


# --- one field made hostile ---------------------------------------------------------------------


def leaves(msg: Message) -> Iterator[tuple[Message, FieldDescriptor, int | None]]:
    """Every field of the tree a mutation may replace: (parent, field, index if repeated)."""
    field: FieldDescriptor
    for field in msg.DESCRIPTOR.fields:  # type: ignore[assignment]  # upb's or pure Python's
        is_leaf_message = field.type == FieldDescriptor.TYPE_MESSAGE and (
            field.message_type is not None
            and field.message_type.full_name.startswith("google.protobuf.")
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
