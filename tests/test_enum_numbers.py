"""Every enum of the service is pinned, by name and number, to the proto enum of the same name
it is converted to (`service.api.convert.number` and `enum_from_proto` rely on the numbers
being shared): renumbering, renaming, adding or removing a member on either side fails here.

The numbers are also stored (sims.state, usage_records.usage_type, ...): a change that
moved both sides together would still change the meaning of stored rows, so the expected
numbers are written out below rather than read from one side.
"""

from __future__ import annotations

import enum
import importlib
import pkgutil
import re

import pytest
from google.protobuf.descriptor import EnumDescriptor

import service
from rating.v1 import (
    billing_service_pb2,
    catalog_service_pb2,
    clock_service_pb2,
    provisioning_service_pb2,
    rating_service_pb2,
    types_pb2,
)
from service.api.convert import enum_from_proto, number

PINNED: dict[str, dict[str, int]] = {
    "UsageType": {"DATA": 1, "VOICE": 2, "SMS": 3},
    "ActivationMode": {"IMMEDIATE": 1, "FIRST_USE": 2},
    "BillingMode": {"ALWAYS": 1, "WHEN_USED": 2},
    "Proration": {"DAILY": 1, "NONE": 2},
    "SimState": {"PROVISIONED": 1, "ACTIVE": 2, "SUSPENDED": 3, "TERMINATED": 4},
    "BillingStartReason": {"IMMEDIATE": 1, "FIRST_USE": 2, "GRACE_EXPIRED": 3},
    "LineKind": {
        "SUBSCRIPTION": 1,
        "USAGE": 2,
        "SIM_COMMITMENT_SHORTFALL": 3,
        "MINIMUM_SPEND_TRUE_UP": 4,
    },
    "RecordStatus": {
        "RATED": 1,
        "DUPLICATE": 2,
        "UNKNOWN_SIM": 3,
        "INVALID": 4,
        "PERIOD_CLOSED": 5,
        "BEFORE_PROVISIONING": 6,
        "AFTER_TERMINATION": 7,
        "FUTURE_EVENT": 8,
    },
    "ProvisionStatus": {"CREATED": 1, "ALREADY_PROVISIONED": 2, "CONFLICT": 3, "INVALID_ICCID": 4},
    "DenyReason": {"UNKNOWN_SIM": 1, "SUSPENDED": 2, "TERMINATED": 3},
}

PROTO_MODULES = (
    types_pb2,
    catalog_service_pb2,
    provisioning_service_pb2,
    rating_service_pb2,
    billing_service_pb2,
    clock_service_pb2,
)


def service_enums() -> dict[str, type[enum.Enum]]:
    """Every Enum class defined in the service's modules (wherever it lives), by name."""
    found: dict[str, type[enum.Enum]] = {}
    for module_info in pkgutil.walk_packages(service.__path__, "service."):
        if module_info.name.endswith(".__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, enum.Enum)
                and value.__module__ == module.__name__
            ):
                assert value.__name__ not in found, f"two enums named {value.__name__}"
                found[value.__name__] = value
    return found


def proto_enum(name: str) -> EnumDescriptor:
    found: list[EnumDescriptor] = [
        module.DESCRIPTOR.enum_types_by_name[name]
        for module in PROTO_MODULES
        if name in module.DESCRIPTOR.enum_types_by_name
    ]
    assert len(found) == 1, f"{len(found)} proto enums named {name}"
    return found[0]


def prefix(name: str) -> str:
    """buf's value prefix: the enum's name in upper snake case (UsageType -> USAGE_TYPE_)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper() + "_"


ENUMS = service_enums()


def test_every_enum_of_the_service_is_pinned() -> None:
    assert sorted(ENUMS) == sorted(PINNED)


def test_every_proto_enum_is_pinned() -> None:
    """A proto enum without a domain counterpart would be converted by hand somewhere."""
    names = {name for module in PROTO_MODULES for name in module.DESCRIPTOR.enum_types_by_name}
    assert sorted(names) == sorted(PINNED)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_domain_enum_numbers(name: str) -> None:
    assert {member.name: member.value for member in ENUMS[name]} == PINNED[name]


@pytest.mark.parametrize("name", sorted(PINNED))
def test_proto_enum_numbers(name: str) -> None:
    values = {value.name: value.number for value in proto_enum(name).values}
    assert values.pop(f"{prefix(name)}UNSPECIFIED") == 0
    assert values == {f"{prefix(name)}{member}": n for member, n in PINNED[name].items()}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_conversions_map_each_member_to_its_namesake(name: str) -> None:
    """What the API layer writes for a member (`number`) is the proto value of the same
    name, and what it reads back (`enum_from_proto`) is the member again."""
    values = proto_enum(name).values_by_name
    for member in ENUMS[name]:
        wire = values[f"{prefix(name)}{member.name}"].number
        assert number(member) == wire, member
        assert enum_from_proto(ENUMS[name], wire, "field") is member
