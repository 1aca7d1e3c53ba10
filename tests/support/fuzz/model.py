"""The fuzz test's constants, the world it sets up, and the model of what the server should
hold, fed with the answers (see tests/test_fuzz.py)."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from datetime import UTC, datetime

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import types_pb2 as t
from service.app import SERVICE_NAMES
from service.domain.periods import period_containing
from tests.support import T0, iccids

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
YEAR_1 = -62135596800  # 0001-01-01T00:00:00Z
YEAR_9999_END = 253402300799  # 9999-12-31T23:59:59Z
CALL_TIMEOUT = 60.0
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
    # The idempotency keys counted: a record id within its period (docs/storage.md).
    rated_ids: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    in_doubt: list[t.UsageRecord] = dataclasses.field(default_factory=list)
    codes: dict[str, Counter[str]] = dataclasses.field(default_factory=lambda: defaultdict(Counter))
    record_statuses: Counter[str] = dataclasses.field(default_factory=Counter)

    def key(self, record: t.UsageRecord) -> tuple[str, str] | None:
        """(record_id, period name) of a record of a known SIM; None for another, and for a
        record whose event time is no valid timestamp or lies in no period of its account
        (before 0001-01 or after 9999-12 there): the service never stores such a record."""
        sim = self.sims.get(record.iccid)
        if sim is None:
            return None
        account = self.accounts[sim[0]]
        try:
            when = record.event_time.ToDatetime(UTC)
            period = period_containing(when, account.timezone or "UTC", account.billing_day or 1)
        except (ValueError, OverflowError):
            return None
        return record.record_id, period.name

    def now_seconds(self) -> int:
        return int(self.now.timestamp())


def every_method() -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [m for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods]
