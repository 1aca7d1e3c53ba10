"""Activation: first use, grace deadlines and the billing start decision."""

from __future__ import annotations

from datetime import datetime, timedelta
from random import Random

from hypothesis import given
from hypothesis import strategies as st

from service.domain.activation import (
    activation_deadline,
    decide_billing_start,
    first_use_time,
    is_charged,
    threshold_progress,
)
from service.domain.model import ActivationMode, BillingStartReason, Threshold, UsageType
from tests.support.builders import JAN_1, MIB, PROPERTY, SIM1_RECORDS, plan_p, utc

DATA_1MIB = (Threshold(UsageType.DATA, MIB),)


def test_worked_example_sim1_first_use() -> None:
    first_use = first_use_time(DATA_1MIB, SIM1_RECORDS)
    assert first_use == utc(2026, 1, 5, 10)
    decision = decide_billing_start(plan_p(), JAN_1, first_use, now=utc(2026, 2, 1))
    assert decision == (utc(2026, 1, 5, 10), BillingStartReason.FIRST_USE)
    assert not is_charged(SIM1_RECORDS[0][0], first_use)  # 500,000 bytes on Jan 2 are free
    assert is_charged(SIM1_RECORDS[1][0], first_use)  # the record reaching the threshold
    assert is_charged(SIM1_RECORDS[2][0], first_use)


def test_worked_example_sim2_grace_expires() -> None:
    assert first_use_time(DATA_1MIB, []) is None
    assert activation_deadline(plan_p(), JAN_1) == utc(2026, 1, 31)
    # Noticed at 00:05: billing still starts at the deadline itself.
    decision = decide_billing_start(plan_p(), JAN_1, None, now=utc(2026, 1, 31, 0, 5))
    assert decision == (utc(2026, 1, 31), BillingStartReason.GRACE_EXPIRED)


def test_worked_example_sim3_not_started_in_january() -> None:
    provisioned = utc(2026, 1, 20)
    assert decide_billing_start(plan_p(), provisioned, None, now=utc(2026, 2, 1)) is None
    assert activation_deadline(plan_p(), provisioned) == utc(2026, 2, 19)


def test_immediate_plans_start_at_provisioning() -> None:
    plan = plan_p(activation_mode=ActivationMode.IMMEDIATE, thresholds=())
    assert activation_deadline(plan, JAN_1) is None
    assert decide_billing_start(plan, JAN_1, None, now=JAN_1) == (
        JAN_1,
        BillingStartReason.IMMEDIATE,
    )


def test_no_grace_means_no_deadline() -> None:
    plan = plan_p(grace_period=timedelta(0))
    assert activation_deadline(plan, JAN_1) is None
    assert decide_billing_start(plan, JAN_1, None, now=utc(2030, 1, 1)) is None


def test_deadline_counts_only_once_reached() -> None:
    assert decide_billing_start(plan_p(), JAN_1, None, now=utc(2026, 1, 30, 23, 59)) is None
    assert decide_billing_start(plan_p(), JAN_1, None, now=utc(2026, 1, 31)) == (
        utc(2026, 1, 31),
        BillingStartReason.GRACE_EXPIRED,
    )


def test_first_use_exactly_at_deadline_is_grace_expired() -> None:
    deadline = utc(2026, 1, 31)
    assert decide_billing_start(plan_p(), JAN_1, deadline, now=deadline) == (
        deadline,
        BillingStartReason.GRACE_EXPIRED,
    )
    assert is_charged(deadline, deadline)


def test_first_use_after_deadline_is_grace_expired() -> None:
    decision = decide_billing_start(plan_p(), JAN_1, utc(2026, 2, 3), now=utc(2026, 2, 3))
    assert decision == (utc(2026, 1, 31), BillingStartReason.GRACE_EXPIRED)


def test_known_first_use_past_a_future_deadline_decides_now() -> None:
    # A record a few minutes ahead of the clock reaches the threshold after the deadline.
    first_use = utc(2026, 1, 31, 0, 3)
    decision = decide_billing_start(plan_p(), JAN_1, first_use, now=utc(2026, 1, 30, 23, 59))
    assert decision == (utc(2026, 1, 31), BillingStartReason.GRACE_EXPIRED)


def test_late_record_moves_first_use_before_a_passed_deadline() -> None:
    late = (utc(2026, 1, 15), UsageType.DATA, MIB)
    first_use = first_use_time(DATA_1MIB, [(utc(2026, 2, 2), UsageType.DATA, MIB), late])
    decision = decide_billing_start(plan_p(), JAN_1, first_use, now=utc(2026, 2, 2))
    assert decision == (utc(2026, 1, 15), BillingStartReason.FIRST_USE)


def test_several_thresholds_earliest_wins() -> None:
    thresholds = (Threshold(UsageType.DATA, 1000), Threshold(UsageType.SMS, 2))
    records = [
        (utc(2026, 1, 3), UsageType.SMS, 1),
        (utc(2026, 1, 4), UsageType.DATA, 999),
        (utc(2026, 1, 5), UsageType.SMS, 1),
        (utc(2026, 1, 6), UsageType.DATA, 1),
        (utc(2026, 1, 2), UsageType.VOICE, 10**6),  # not a threshold type
    ]
    assert first_use_time(thresholds, records) == utc(2026, 1, 5)
    assert first_use_time((), records) is None


def test_records_at_the_same_instant_count_together() -> None:
    records = [(utc(2026, 1, 3), UsageType.DATA, 600), (utc(2026, 1, 3), UsageType.DATA, 400)]
    assert first_use_time((Threshold(UsageType.DATA, 1000),), records) == utc(2026, 1, 3)


def test_threshold_progress_reports_raw_totals() -> None:
    thresholds = (Threshold(UsageType.DATA, MIB), Threshold(UsageType.SMS, 1))
    progress = threshold_progress(thresholds, {UsageType.DATA: 500_000, UsageType.VOICE: 9})
    assert progress == [(UsageType.DATA, 500_000, MIB), (UsageType.SMS, 0, 1)]


def test_is_charged_without_billing_start() -> None:
    assert not is_charged(utc(2026, 1, 3), None)


record_strategy = st.tuples(
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 1, 3)).map(
        lambda naive: naive.replace(second=0, microsecond=0, tzinfo=JAN_1.tzinfo)
    ),
    st.sampled_from(UsageType),
    st.integers(0, 1_000),
)
threshold_strategy = st.lists(
    st.builds(Threshold, st.sampled_from(UsageType), st.integers(1, 3_000)), max_size=3
)


def brute_force_first_use(
    thresholds: list[Threshold], records: list[tuple[datetime, UsageType, int]]
) -> datetime | None:
    """The definition, literally: the smallest t whose cumulative total reaches a threshold."""
    for instant in sorted({event_time for event_time, _, _ in records}):
        for threshold in thresholds:
            total = sum(
                quantity
                for event_time, usage_type, quantity in records
                if usage_type is threshold.usage_type and event_time <= instant
            )
            if total >= threshold.quantity:
                return instant
    return None


@given(threshold_strategy, st.lists(record_strategy, max_size=30), st.randoms())
@PROPERTY
def test_first_use_is_independent_of_record_order(
    thresholds: list[Threshold], records: list[tuple[datetime, UsageType, int]], random: Random
) -> None:
    shuffled = list(records)
    random.shuffle(shuffled)
    expected = brute_force_first_use(thresholds, records)
    assert first_use_time(thresholds, records) == expected
    assert first_use_time(thresholds, shuffled) == expected
