"""Proto messages <-> domain objects, every conversion of the API in one place. No rules here
beyond field presence and enum range (the bounds are `domain.limits`)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.timestamp_pb2 import Timestamp

from rating.v1 import types_pb2 as pb
from service.domain import model as m
from service.domain.errors import InvalidArgument
from service.domain.limits import MAX_ID_LENGTH, MAX_RECORD_QUANTITY, id_problem
from service.ingestion.records import InvalidRecord, RecordResult
from service.ops.hotpath import positional
from service.usecases.sim_status import SimView

E = TypeVar("E", bound=enum.Enum)

# Timestamp.ToDatetime accepts 0001-01-01..9999-12-31; outside that, the field is invalid.
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799


# By enum type, its members by value: a dict look-up costs a fifth of calling the type.
_MEMBERS: dict[type[enum.Enum], dict[object, enum.Enum]] = {}


def number(member: enum.Enum | None) -> int:
    """The proto number of a domain enum member (the values are shared); 0 (unspecified)
    for None. Read as `_value_`, the member's own attribute: `.value` is a property of
    Enum, and a dict keyed by members calls Enum's `__hash__` in Python, ~0.1 us either
    way, several times per GetSimStatus."""
    return 0 if member is None else member._value_  # type: ignore[no-any-return]


def enum_from_proto(enum_type: type[E], value: int, field: str) -> E:
    """Proto enum number -> domain enum (values are shared); 0 and unknown numbers are invalid."""
    members = _MEMBERS.get(enum_type)
    if members is None:
        members = _MEMBERS[enum_type] = {member.value: member for member in enum_type}
    member = members.get(value)
    if member is None:
        raise InvalidArgument(field, f"unknown or unspecified value {value}")
    return member  # type: ignore[return-value]


def time_from_proto(ts: Timestamp, field: str) -> datetime:
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS) or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument(field, "out of range")
    return datetime.fromtimestamp(ts.seconds, UTC) + timedelta(microseconds=ts.nanos // 1000)


def optional_time(msg: object, name: str, field: str) -> datetime | None:
    if not msg.HasField(name):  # type: ignore[attr-defined]
        return None
    return time_from_proto(getattr(msg, name), field)


def time_to_proto(when: datetime | None, target: Timestamp) -> None:
    if when is None:
        return
    if when.tzinfo is None:  # naive: taken as UTC, as Timestamp.FromDatetime does
        target.FromDatetime(when)
        return
    # The same value as FromDatetime, without its calendar arithmetic (several times cheaper).
    delta = when - _EPOCH
    target.seconds = delta.days * 86_400 + delta.seconds
    target.nanos = delta.microseconds * 1_000


def duration_from_proto(d: Duration, field: str) -> timedelta:
    if d.seconds < 0 or d.nanos < 0 or d.seconds > 100 * 365 * 86400:
        raise InvalidArgument(field, "must be between 0 and 100 years")
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


# --- catalog -------------------------------------------------------------------------------


def plan_from_proto(p: pb.Plan) -> m.Plan:
    return m.Plan(
        plan_id=p.plan_id,
        currency=p.currency,
        subscription_fee_micros=p.subscription_fee_micros,
        activation_mode=enum_from_proto(
            m.ActivationMode, p.activation.mode, "plan.activation.mode"
        ),
        thresholds=tuple(
            m.Threshold(
                enum_from_proto(
                    m.UsageType, t.usage_type, f"plan.activation.thresholds[{i}].usage_type"
                ),
                t.quantity,
            )
            for i, t in enumerate(p.activation.thresholds)
        ),
        grace_period=duration_from_proto(p.activation.grace_period, "plan.activation.grace_period"),
        billing_mode=enum_from_proto(m.BillingMode, p.billing_mode, "plan.billing_mode"),
        proration=enum_from_proto(m.Proration, p.proration, "plan.proration"),
        usage_rates=tuple(
            m.UsageRate(
                usage_type=enum_from_proto(
                    m.UsageType, r.usage_type, f"plan.usage_rates[{i}].usage_type"
                ),
                unit_quantity=r.unit_quantity,
                rounding_increment=r.rounding_increment,
                included_quantity=r.included_quantity,
                pooled=r.pooled,
                tiers=tuple(m.Tier(t.up_to_quantity, t.price_micros) for t in r.tiers),
            )
            for i, r in enumerate(p.usage_rates)
        ),
    )


def plan_to_proto(plan: m.Plan) -> pb.Plan:
    out = pb.Plan(
        plan_id=plan.plan_id,
        currency=plan.currency,
        subscription_fee_micros=plan.subscription_fee_micros,
        billing_mode=plan.billing_mode.value,  # type: ignore[arg-type]
        proration=plan.proration.value,  # type: ignore[arg-type]
        activation=pb.Activation(
            mode=plan.activation_mode.value,  # type: ignore[arg-type]
            thresholds=[
                pb.ActivationThreshold(usage_type=t.usage_type.value, quantity=t.quantity)  # type: ignore[arg-type]
                for t in plan.thresholds
            ],
        ),
        usage_rates=[
            pb.UsageRate(
                usage_type=r.usage_type.value,  # type: ignore[arg-type]
                unit_quantity=r.unit_quantity,
                rounding_increment=r.rounding_increment,
                included_quantity=r.included_quantity,
                pooled=r.pooled,
                tiers=[
                    pb.Tier(up_to_quantity=t.up_to_quantity, price_micros=t.price_micros)
                    for t in r.tiers
                ],
            )
            for r in plan.usage_rates
        ],
    )
    if plan.grace_period:
        out.activation.grace_period.FromTimedelta(plan.grace_period)
    return out


def account_from_proto(a: pb.Account) -> m.Account:
    return m.Account(
        account_id=a.account_id,
        currency=a.currency,
        timezone=a.timezone or "UTC",
        billing_day=a.billing_day or 1,
        commitment_schedule=tuple(
            m.CommitmentStep(
                effective_period=s.effective_period,
                min_billable_sims=s.min_billable_sims,
                sim_commitment_plan_id=s.sim_commitment_plan_id,
                min_spend_micros=s.min_spend_micros,
            )
            for s in a.commitment_schedule
        ),
    )


def account_to_proto(a: m.Account) -> pb.Account:
    return pb.Account(
        account_id=a.account_id,
        currency=a.currency,
        timezone=a.timezone,
        billing_day=a.billing_day,
        commitment_schedule=[
            pb.CommitmentStep(
                effective_period=s.effective_period,
                min_billable_sims=s.min_billable_sims,
                sim_commitment_plan_id=s.sim_commitment_plan_id,
                min_spend_micros=s.min_spend_micros,
            )
            for s in a.commitment_schedule
        ],
    )


# --- usage ---------------------------------------------------------------------------------

_MAX_ID = MAX_ID_LENGTH
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def records_from_proto(
    records: Iterable[pb.UsageRecord],
) -> list[m.UsageRecord | InvalidRecord]:
    """Domain records, each bad one replaced by an InvalidRecord naming its first bad field.

    The ingestion hot path: one loop for the batch, a well-formed record passes the cheap
    tests inline (the rules of `domain.limits`, written out), and only a record failing one
    goes through `record_from_proto`, which applies them one by one and names the field.
    A test checks that both paths agree.
    """
    out: list[m.UsageRecord | InvalidRecord] = []
    append = out.append
    usage_types = m.USAGE_TYPES_BY_VALUE
    epoch, new, delta = _EPOCH, positional, timedelta
    for r in records:
        record_id, iccid, session_id = r.record_id, r.iccid, r.session_id
        usage_type = usage_types.get(r.usage_type)
        quantity = r.quantity
        ts = r.event_time
        seconds, nanos = ts.seconds, ts.nanos
        if (
            0 < len(record_id) <= _MAX_ID
            and record_id.isprintable()
            and 0 < len(iccid) <= _MAX_ID
            and iccid.isprintable()
            and (not session_id or (len(session_id) <= _MAX_ID and session_id.isprintable()))
            and usage_type is not None
            and 0 <= quantity <= MAX_RECORD_QUANTITY
            # seconds == 0 also when event_time is missing: the full check tells them apart
            and (0 < seconds <= _MAX_SECONDS or _MIN_SECONDS <= seconds < 0)
            and 0 <= nanos < 1_000_000_000
        ):
            event_time = epoch + delta(0, seconds, nanos // 1000)
            record = (record_id, iccid, usage_type, quantity, event_time, session_id)
            append(new(m.UsageRecord, record))  # hotpath: positional construction
        else:
            append(record_from_proto(r))
    return out


def record_from_proto(r: pb.UsageRecord) -> m.UsageRecord | InvalidRecord:
    """A domain record, or an InvalidRecord naming the first bad field."""
    record_id, iccid, session_id = r.record_id, r.iccid, r.session_id
    invalid = _invalid_ids(record_id, iccid, session_id)
    if invalid is not None:
        return invalid
    usage_type = m.USAGE_TYPES_BY_VALUE.get(r.usage_type)
    if usage_type is None:
        return InvalidRecord(
            record_id, "usage_type", f"unknown or unspecified value {r.usage_type}"
        )
    if not 0 <= r.quantity <= MAX_RECORD_QUANTITY:
        return InvalidRecord(record_id, "quantity", f"must be between 0 and {MAX_RECORD_QUANTITY}")
    if not r.HasField("event_time"):
        return InvalidRecord(record_id, "event_time", "is required")
    ts = r.event_time
    seconds, nanos = ts.seconds, ts.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS) or not 0 <= nanos < 1_000_000_000:
        return InvalidRecord(record_id, "event_time", "out of range")
    event_time = _EPOCH + timedelta(0, seconds, nanos // 1000)
    return m.UsageRecord(record_id, iccid, usage_type, r.quantity, event_time, session_id)


def _invalid_ids(record_id: str, iccid: str, session_id: str) -> InvalidRecord | None:
    for field, value, required in (
        ("record_id", record_id, True),
        ("iccid", iccid, True),
        ("session_id", session_id, False),
    ):
        problem = id_problem(value, required=required)
        if problem is not None:
            return InvalidRecord(record_id[:_MAX_ID], field, problem)
    return None


def add_results(
    target: RepeatedCompositeFieldContainer[pb.RecordResult], results: Iterable[RecordResult]
) -> None:
    """Append results to a response's repeated field, built in place (the hot path)."""
    add = target.add
    # Attributes set on an added message: cheaper than keywords, and zero values are the
    # proto3 defaults, so they are skipped.
    for record_id, status, detail, rated, charged, charge, started in results:
        result = add()
        result.record_id = record_id
        result.status = status  # type: ignore[assignment]
        if detail:
            result.detail = detail
            continue
        result.rated_quantity = rated
        if charged:
            result.charged = True
        if charge:
            result.estimated_charge_micros = charge
        if started:
            result.started_billing = True


# --- SIM status and invoices ---------------------------------------------------------------


def sim_status_to_proto(view: SimView) -> pb.SimStatus:
    out = pb.SimStatus()
    fill_sim_status(view, out)
    return out


def fill_sim_status(view: SimView, out: pb.SimStatus) -> None:
    """Write the view into `out` (e.g. a response's own `status`, so it is not copied)."""
    sim = view.sim
    out.iccid = sim.iccid
    out.account_id = sim.account_id
    out.plan_id = sim.plan_id
    out.state = sim.state._value_  # type: ignore[assignment]
    if sim.billing_start_reason is not None:
        out.billing_start_reason = sim.billing_start_reason._value_  # type: ignore[assignment]
    for usage_type, quantity, threshold in view.first_use_progress:
        out.first_use_progress.add(
            usage_type=usage_type._value_,  # type: ignore[arg-type]
            quantity=quantity,
            threshold=threshold,
        )
    out.current_period = view.current_period
    for usage_type, quantity in view.period_usage:
        out.period_usage.add(usage_type=usage_type._value_, quantity=quantity)  # type: ignore[arg-type]
    # A timestamp field is reached only when it is set: reading `out.<field>` builds a
    # Python object for the submessage even when nothing is written into it.
    time_to_proto(sim.provisioned_at, out.provisioned_at)
    if sim.billing_started_at is not None:
        time_to_proto(sim.billing_started_at, out.billing_started_at)
    if view.activation_deadline is not None:
        time_to_proto(view.activation_deadline, out.activation_deadline)
    if sim.terminated_at is not None:
        time_to_proto(sim.terminated_at, out.terminated_at)
    if sim.suspended_at is not None:
        time_to_proto(sim.suspended_at, out.suspended_at)


def invoice_to_proto(invoice: m.Invoice) -> pb.Invoice:
    out = pb.Invoice(
        account_id=invoice.account_id,
        period=invoice.period.name,
        currency=invoice.currency,
        billable_sims=invoice.billable_sims,
        lines=[
            pb.InvoiceLine(
                kind=line.kind.value,  # type: ignore[arg-type]
                plan_id=line.plan_id,
                usage_type=line.usage_type.value if line.usage_type else 0,  # type: ignore[arg-type]
                quantity=line.quantity,
                chargeable_quantity=line.chargeable_quantity,
                amount_micros=line.amount_micros,
                description=line.description,
            )
            for line in invoice.lines
        ],
        total_micros=invoice.total_micros,
        final=invoice.final,
    )
    time_to_proto(invoice.period.start, out.period_start)
    time_to_proto(invoice.period.end, out.period_end)
    time_to_proto(invoice.settled_at, out.settled_at)
    return out
