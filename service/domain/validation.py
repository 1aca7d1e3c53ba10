"""Validation of plans and accounts before they enter the catalog.

Every rule raises `InvalidArgument(field, problem)` with the field path as the API spells
it (`plan.usage_rates[0].tiers[1].up_to_quantity`), so the caller learns exactly what to
fix. Integers are also bounded by the int64 range PostgreSQL `bigint` columns can hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from service.domain.errors import InvalidArgument
from service.domain.limits import INT64_MAX, MAX_ID_LENGTH
from service.domain.model import (
    Account,
    ActivationMode,
    CommitmentStep,
    Plan,
    Threshold,
    Tier,
    UsageRate,
)
from service.domain.money import is_currency
from service.domain.periods import is_period_name

# Keys zoneinfo accepts that are not IANA zone names: they follow the host's configuration.
_NOT_IANA = frozenset({"localtime", "posixrules"})


def validate_plan(plan: Plan) -> None:
    """Raise InvalidArgument naming the first field of `plan` that breaks a rule."""
    _check_id(plan.plan_id, "plan.plan_id")
    _check_currency(plan.currency, "plan.currency")
    _check_int(plan.subscription_fee_micros, "plan.subscription_fee_micros", minimum=0)
    _check_activation(plan)
    seen: set[object] = set()
    for i, rate in enumerate(plan.usage_rates):
        field = f"plan.usage_rates[{i}]"
        if rate.usage_type in seen:
            raise InvalidArgument(f"{field}.usage_type", "each usage type may be priced once")
        seen.add(rate.usage_type)
        _check_rate(rate, field)


def validate_account(account: Account, plans: Mapping[str, Plan]) -> None:
    """Raise InvalidArgument naming the first field of `account` that breaks a rule.

    `plans` must hold every plan the commitment schedule may name.
    """
    _check_id(account.account_id, "account.account_id")
    _check_currency(account.currency, "account.currency")
    if not is_timezone(account.timezone):
        raise InvalidArgument(
            "account.timezone", f"must be an IANA time zone name, got {account.timezone!r}"
        )
    if not 1 <= account.billing_day <= 28:
        # Days 29-31 do not exist in every month; a period must start on a real date.
        raise InvalidArgument("account.billing_day", "must be 1..28")
    _check_schedule(account, account.commitment_schedule, plans)


def is_timezone(name: str) -> bool:
    """True for an IANA time zone name known to zoneinfo (e.g. "Europe/Berlin", "UTC")."""
    if name in _NOT_IANA or name not in _known_timezones():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@cache
def _known_timezones() -> frozenset[str]:
    # available_timezones() walks the tz database on disk; once per process is enough.
    return frozenset(available_timezones())


def _check_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_ID_LENGTH} characters")
    if not value.isprintable() or any(char.isspace() for char in value):
        raise InvalidArgument(field, "must not contain whitespace or control characters")


def _check_currency(code: str, field: str) -> None:
    if not is_currency(code):
        raise InvalidArgument(field, f"must be an ISO 4217 code in upper case, got {code!r}")


def _check_int(value: int, field: str, *, minimum: int) -> None:
    if not minimum <= value <= INT64_MAX:
        raise InvalidArgument(field, f"must be between {minimum} and {INT64_MAX}")


def _check_activation(plan: Plan) -> None:
    thresholds = plan.thresholds
    if plan.activation_mode is ActivationMode.IMMEDIATE and thresholds:
        raise InvalidArgument("plan.activation.thresholds", "must be empty when mode is IMMEDIATE")
    if plan.activation_mode is ActivationMode.FIRST_USE and not thresholds:
        raise InvalidArgument(
            "plan.activation.thresholds", "FIRST_USE needs at least one threshold"
        )
    _check_thresholds(thresholds)
    if plan.grace_period < timedelta(0):
        raise InvalidArgument("plan.activation.grace_period", "must be >= 0")


def _check_thresholds(thresholds: Sequence[Threshold]) -> None:
    seen: set[object] = set()
    for i, threshold in enumerate(thresholds):
        field = f"plan.activation.thresholds[{i}]"
        if threshold.usage_type in seen:
            raise InvalidArgument(f"{field}.usage_type", "each usage type may appear once")
        seen.add(threshold.usage_type)
        _check_int(threshold.quantity, f"{field}.quantity", minimum=1)


def _check_rate(rate: UsageRate, field: str) -> None:
    _check_int(rate.unit_quantity, f"{field}.unit_quantity", minimum=1)
    _check_int(rate.rounding_increment, f"{field}.rounding_increment", minimum=1)
    _check_int(rate.included_quantity, f"{field}.included_quantity", minimum=0)
    _check_tiers(rate.tiers, f"{field}.tiers")


def _check_tiers(tiers: Sequence[Tier], field: str) -> None:
    """Bounds strictly ascend and the last tier is unbounded (0).

    Requiring an unbounded last tier means the plan states a price for every quantity,
    instead of the service inventing one above the last bound.
    """
    if not tiers:
        raise InvalidArgument(field, "must have at least one tier")
    previous_bound = 0
    last = len(tiers) - 1
    for i, tier in enumerate(tiers):
        _check_int(tier.price_micros, f"{field}[{i}].price_micros", minimum=0)
        bound_field = f"{field}[{i}].up_to_quantity"
        _check_int(tier.up_to_quantity, bound_field, minimum=0)
        if i == last:
            if tier.up_to_quantity != 0:
                raise InvalidArgument(bound_field, "the last tier must be unbounded (0)")
        elif tier.up_to_quantity == 0:
            raise InvalidArgument(bound_field, "only the last tier may be unbounded (0)")
        elif tier.up_to_quantity <= previous_bound:
            raise InvalidArgument(
                bound_field, "must be greater than the previous tier's up_to_quantity"
            )
        else:
            previous_bound = tier.up_to_quantity


def _check_schedule(
    account: Account, steps: Sequence[CommitmentStep], plans: Mapping[str, Plan]
) -> None:
    previous: str | None = None
    for i, step in enumerate(steps):
        field = f"account.commitment_schedule[{i}]"
        if not is_period_name(step.effective_period):
            raise InvalidArgument(f"{field}.effective_period", "must be YYYY-MM with month 01-12")
        if previous is not None and step.effective_period <= previous:
            raise InvalidArgument(
                f"{field}.effective_period", "steps must be in strictly ascending order"
            )
        previous = step.effective_period
        _check_int(step.min_billable_sims, f"{field}.min_billable_sims", minimum=0)
        _check_int(step.min_spend_micros, f"{field}.min_spend_micros", minimum=0)
        _check_commitment_plan(account, step, plans, f"{field}.sim_commitment_plan_id")


def _check_commitment_plan(
    account: Account, step: CommitmentStep, plans: Mapping[str, Plan], field: str
) -> None:
    plan_id = step.sim_commitment_plan_id
    if not plan_id:
        if step.min_billable_sims > 0:
            raise InvalidArgument(field, "required when min_billable_sims > 0")
        return
    plan = plans.get(plan_id)
    # The plan is part of the account's content, so a missing one is a bad argument.
    if plan is None:
        raise InvalidArgument(field, f"no plan {plan_id!r}")
    if plan.currency != account.currency:
        raise InvalidArgument(
            field, f"plan currency {plan.currency} differs from account {account.currency}"
        )
