"""`simrating catalog apply`: plans and accounts from JSON or YAML files.

A file holds documents `{"plan": {...}}` or `{"account": {...}}` in the proto's JSON
mapping (field names as in the .proto or in lowerCamelCase, enums by name, durations as
"2592000s"): a YAML stream of documents separated by `---`, or a JSON array of documents,
or one JSON document. Every document of every file is read and checked first; only then
are they applied in order, each compared with the object the service holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from rating.v1 import catalog_service_pb2 as c
from rating.v1 import catalog_service_pb2_grpc as c_grpc
from rating.v1 import types_pb2 as t
from service.api import convert
from service.cli.connection import Target, is_content_error
from service.domain.errors import InvalidArgument
from service.domain.model import Plan
from service.domain.validation import validate_account, validate_plan

KINDS: Mapping[str, type[Message]] = {"plan": t.Plan, "account": t.Account}


class DocumentError(Exception):
    """A document that cannot be applied: where it is and what is wrong."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class Document:
    where: str  # "FILE[index]"
    kind: str  # plan | account
    message: Any  # t.Plan | t.Account

    @property
    def object_id(self) -> str:
        return str(self.message.plan_id if self.kind == "plan" else self.message.account_id)


def read_documents(path: Path) -> list[Document]:
    """Every document of one file, parsed; DocumentError names the file, index and field."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(str(path), f"cannot read: {exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            loaded = json.loads(text)
            raw = loaded if isinstance(loaded, list) else [loaded]
        else:
            raw = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except (ValueError, yaml.YAMLError) as exc:
        raise DocumentError(str(path), f"not valid {_syntax(path)}: {exc}") from exc
    return [parse_document(f"{path}[{i}]", doc) for i, doc in enumerate(raw)]


def _syntax(path: Path) -> str:
    return "JSON" if path.suffix.lower() == ".json" else "YAML"


def parse_document(where: str, doc: object) -> Document:
    if not isinstance(doc, dict) or len(doc) != 1 or next(iter(doc)) not in KINDS:
        raise DocumentError(where, 'must be {"plan": {...}} or {"account": {...}}')
    kind, body = next(iter(doc.items()))
    if not isinstance(body, dict):
        raise DocumentError(where, f"{kind}: must be a mapping of fields")
    message = KINDS[kind]()
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as exc:
        field, problem = locate(body, message.DESCRIPTOR, kind)
        raise DocumentError(where, f"{field}: {problem or exc}") from None
    return Document(where, kind, message)


def locate(body: Mapping[str, Any], descriptor: Any, path: str) -> tuple[str, str]:
    """The path (`plan.usage_rates[0].tiers[1].price_micros`) of the first field of `body`
    json_format refuses, and why; (path, "") if no single field is at fault."""
    by_name = {**{f.json_name: f for f in descriptor.fields}, **descriptor.fields_by_name}
    for key, value in body.items():
        field = by_name.get(key)
        if field is None:
            return f"{path}.{key}", "unknown field"
        here = f"{path}.{field.name}"
        nested = field.message_type is not None and not field.message_type.full_name.startswith(
            "google.protobuf."
        )
        if _repeated(field):
            if not isinstance(value, list):
                return here, "must be a list"
            for i, item in enumerate(value):
                found = _locate_one(field, item, f"{here}[{i}]", nested)
                if found is not None:
                    return found
        else:
            found = _locate_one(field, value, here, nested)
            if found is not None:
                return found
    return path, ""


def _locate_one(field: Any, value: Any, here: str, nested: bool) -> tuple[str, str] | None:
    if nested:
        if not isinstance(value, dict):
            return here, "must be a mapping of fields"
        found = locate(value, field.message_type, here)
        return found if found[1] else None
    holder = field.containing_type._concrete_class()
    try:
        json_format.ParseDict({field.name: [value] if _repeated(field) else value}, holder)
    except json_format.ParseError as exc:
        return here, _last_reason(str(exc))
    return None


def _repeated(field: Any) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 6
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def _last_reason(message: str) -> str:
    """json_format's innermost reason, without its own 'Failed to parse X field:' prefixes
    and trailing ' at Plan.x.' location."""
    reason = message.rsplit("field: ", 1)[-1]
    reason = reason.split(" at ", 1)[0] if " at " in reason else reason
    return reason.rstrip(".") or message


def validate(documents: Sequence[Document], known_plans: Mapping[str, Plan]) -> None:
    """The catalog's own rules (as the service applies them), before anything is sent."""
    plans = dict(known_plans)
    for doc in documents:
        try:
            if doc.kind == "plan":
                plan = convert.plan_from_proto(doc.message)
                validate_plan(plan)
                plans[plan.plan_id] = plan
            else:
                validate_account(convert.account_from_proto(doc.message), plans)
        except InvalidArgument as exc:
            raise DocumentError(doc.where, str(exc)) from None


@dataclass(frozen=True, slots=True)
class Outcome:
    document: Document
    result: str  # created | unchanged | updated | refused
    detail: str = ""


async def known_plans(target: Target, channel: Any) -> dict[str, Plan]:
    stub = c_grpc.CatalogServiceStub(channel)
    response = await stub.ListPlans(c.ListPlansRequest(), metadata=target.metadata, timeout=30)
    return {p.plan_id: convert.plan_from_proto(p) for p in response.plans}


async def apply(target: Target, channel: Any, doc: Document) -> Outcome:
    """Put one document; compare with what the service held before."""
    stub = c_grpc.CatalogServiceStub(channel)
    md = target.metadata
    try:
        if doc.kind == "plan":
            put = await stub.PutPlan(c.PutPlanRequest(plan=doc.message), metadata=md, timeout=30)
            return Outcome(doc, "created" if put.created else "unchanged")
        before = await _account(stub, md, doc.object_id)
        response = await stub.PutAccount(
            c.PutAccountRequest(account=doc.message), metadata=md, timeout=30
        )
    except grpc.aio.AioRpcError as exc:
        if not is_content_error(exc):
            raise
        return Outcome(doc, "refused", f"{exc.code().name}: {exc.details()}")
    if response.created:
        return Outcome(doc, "created")
    return Outcome(doc, "unchanged" if before == response.account else "updated")


async def _account(stub: Any, metadata: Any, account_id: str) -> t.Account | None:
    try:
        response = await stub.GetAccount(
            c.GetAccountRequest(account_id=account_id), metadata=metadata, timeout=30
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise
    account: t.Account = response.account
    return account
