"""The domain vocabulary: frozen dataclasses for plans, accounts, SIMs and usage.

Money is integer micros; quantities are integers in the usage type's base unit
(bytes, seconds, messages). Instants are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple


class UsageType(enum.IntEnum):  # IntEnum: hashed in C, it keys the hot counters
    DATA = 1  # bytes
    VOICE = 2  # seconds
    SMS = 3  # messages


# By proto/database value (hotpath: enum members without Enum's machinery, service/ops/hotpath.py).
USAGE_TYPES_BY_VALUE = {t.value: t for t in UsageType}


class ActivationMode(enum.Enum):
    IMMEDIATE = 1
    FIRST_USE = 2


class BillingMode(enum.Enum):
    ALWAYS = 1
    WHEN_USED = 2


class Proration(enum.Enum):
    DAILY = 1
    NONE = 2


class SimState(enum.Enum):
    PROVISIONED = 1
    ACTIVE = 2
    SUSPENDED = 3
    TERMINATED = 4


class BillingStartReason(enum.Enum):
    IMMEDIATE = 1
    FIRST_USE = 2
    GRACE_EXPIRED = 3


class LineKind(enum.Enum):
    SUBSCRIPTION = 1
    USAGE = 2
    SIM_COMMITMENT_SHORTFALL = 3
    MINIMUM_SPEND_TRUE_UP = 4


@dataclass(frozen=True, slots=True)
class Tier:
    up_to_quantity: int  # cumulative upper bound; 0 = unbounded (last tier only)
    price_micros: int  # per unit_quantity


@dataclass(frozen=True, slots=True)
class UsageRate:
    usage_type: UsageType
    unit_quantity: int
    rounding_increment: int
    included_quantity: int
    pooled: bool
    tiers: tuple[Tier, ...]


@dataclass(frozen=True, slots=True)
class Threshold:
    usage_type: UsageType
    quantity: int


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    currency: str
    subscription_fee_micros: int
    activation_mode: ActivationMode
    thresholds: tuple[Threshold, ...]
    grace_period: timedelta  # zero: no deadline
    billing_mode: BillingMode
    proration: Proration
    usage_rates: tuple[UsageRate, ...]

    def rate_for(self, usage_type: UsageType) -> UsageRate | None:
        for rate in self.usage_rates:
            if rate.usage_type is usage_type:
                return rate
        return None


@dataclass(frozen=True, slots=True)
class CommitmentStep:
    effective_period: str  # "YYYY-MM"
    min_billable_sims: int
    sim_commitment_plan_id: str
    min_spend_micros: int


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    currency: str
    timezone: str = "UTC"
    billing_day: int = 1
    commitment_schedule: tuple[CommitmentStep, ...] = ()


@dataclass(frozen=True, slots=True)
class Sim:
    iccid: str
    account_id: str
    plan_id: str
    provisioned_at: datetime
    state: SimState
    billing_started_at: datetime | None = None
    billing_start_reason: BillingStartReason | None = None
    suspended_at: datetime | None = None
    terminated_at: datetime | None = None


class UsageRecord(NamedTuple):
    """One usage record (CDR). A NamedTuple: millions are built on the ingestion path."""

    record_id: str
    iccid: str
    usage_type: UsageType
    quantity: int
    event_time: datetime
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class Period:
    """One billing period of an account: [start, end) in UTC, named by its local start date."""

    name: str  # "YYYY-MM"
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    kind: LineKind
    plan_id: str
    usage_type: UsageType | None
    quantity: int
    chargeable_quantity: int
    amount_micros: int
    description: str


@dataclass(frozen=True, slots=True)
class Invoice:
    account_id: str
    period: Period
    currency: str
    billable_sims: int
    lines: tuple[InvoiceLine, ...]
    total_micros: int
    final: bool
    settled_at: datetime | None = None
    sims: tuple[SimBreakdown, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class SimUsageFacts:
    """What one SIM did with one usage type in one period."""

    raw_quantity: int = 0  # every accepted record, charged or not
    charged_rated_quantity: int = 0  # rated quantity of charged records
    charged_raw_quantity: int = 0  # raw quantity of charged records (> 0: used, for WHEN_USED)
    records: int = 0
    charged_records: int = 0


@dataclass(frozen=True, slots=True)
class SimPeriodFacts:
    """Everything settlement needs to know about one SIM in one period."""

    iccid: str
    plan_id: str
    billing_started_at: datetime | None
    terminated_at: datetime | None
    usage: dict[UsageType, SimUsageFacts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SimBreakdown:
    """Per-SIM trace of an invoice: why each SIM is (not) billed."""

    iccid: str
    plan_id: str
    billable: bool
    billed_days: int
    subscription_micros_exact: str  # exact rational as "n/d" before the line's rounding
    usage: dict[UsageType, SimUsageFacts]
