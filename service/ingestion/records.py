"""What ingestion says of a record: its status and result, and the forms a record takes
between arrival and commit (InvalidRecord, Candidate, UnlessCounted)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from service.domain.model import UsageType


class RecordStatus(enum.IntEnum):
    RATED = 1
    DUPLICATE = 2
    UNKNOWN_SIM = 3
    INVALID = 4
    PERIOD_CLOSED = 5
    BEFORE_PROVISIONING = 6
    AFTER_TERMINATION = 7
    FUTURE_EVENT = 8


RATED = RecordStatus.RATED  # hotpath: enum members without Enum's machinery


class RecordResult(NamedTuple):
    record_id: str
    status: RecordStatus
    detail: str = ""
    rated_quantity: int = 0
    charged: bool = False
    estimated_charge_micros: int = 0
    started_billing: bool = False


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    """A record whose fields could not be read; `field` names the culprit."""

    record_id: str
    field: str
    problem: str


class Candidate(NamedTuple):
    """A record that passed every check and waits for its commit.

    It is the record's usage_records row: the fields are the table's columns in order
    (`storage.usage_records.USAGE_COLUMNS`, checked by a test), so the persister COPYs candidates as
    they are.
    """

    record_id: str
    iccid: str
    usage_type: UsageType
    quantity: int
    rated_quantity: int
    event_time: datetime
    session_id: str
    period: str  # the account period of event_time


@dataclass(frozen=True, slots=True)
class UnlessCounted:
    """A record refused because of what happened since it may have been counted (its period
    was settled, its SIM terminated): DUPLICATE if its id was counted before it in its
    period (stored before its group, or by a record before it in the group), else
    `refusal`. (record id, period) is the idempotency key (docs/storage.md), so a retry
    never gets a different answer."""

    refusal: RecordResult
    period: str  # the account period of the record's event_time


Checked = Candidate | UnlessCounted | RecordResult
