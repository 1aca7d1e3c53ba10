"""`simrating sims provision` (ICCIDs from a CSV, in calls of at most 10,000) and
`simrating sims status`."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from rating.v1 import provisioning_service_pb2 as p
from rating.v1 import provisioning_service_pb2_grpc as p_grpc
from service.cli.connection import Target, is_content_error
from service.cli.timestamps import parse_rfc3339

MAX_ICCIDS_PER_CALL = 10_000
ACCEPTED = frozenset({"CREATED", "ALREADY_PROVISIONED"})
MALFORMED = "MALFORMED"


class InputError(Exception):
    """The file cannot be used at all (unreadable, no `iccid` column)."""


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    values: list[str]  # the CSV row as read, for the rejects file
    iccid: str
    provisioned_at: Timestamp | None


@dataclass
class ProvisionFile:
    path: Path
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    # (line, values, status, reason) of every row not CREATED or ALREADY_PROVISIONED
    rejected: list[tuple[int, list[str], str, str]] = field(default_factory=list)


def read_provision_file(path: Path) -> ProvisionFile:
    """The rows of a provisioning CSV; a row with a bad provisioned_at is rejected here."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as source:
            reader = csv.reader(source)
            columns = next(reader, None)
            if columns is None or "iccid" not in columns:
                raise InputError(f"{path}: the header must name an `iccid` column")
            out = ProvisionFile(path, columns)
            iccid_at = columns.index("iccid")
            time_at = columns.index("provisioned_at") if "provisioned_at" in columns else None
            for values in reader:
                if not values or values == [""]:
                    continue
                line = reader.line_num
                if len(values) != len(columns):
                    out.rejected.append(
                        (
                            line,
                            values,
                            MALFORMED,
                            f"{len(values)} fields, header has {len(columns)}",
                        )
                    )
                    continue
                at = None
                if time_at is not None and values[time_at].strip():
                    try:
                        at = parse_rfc3339(values[time_at].strip())
                    except ValueError as exc:
                        out.rejected.append((line, values, MALFORMED, f"provisioned_at: {exc}"))
                        continue
                out.rows.append(Row(line, values, values[iccid_at].strip(), at))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
    return out


def calls(rows: list[Row]) -> list[list[Row]]:
    """Rows grouped by provisioned_at (the request carries one time for all its ICCIDs),
    in file order of each group's first row, split into calls of at most 10,000."""
    groups: dict[tuple[int, int] | None, list[Row]] = {}
    for row in rows:
        key = None if row.provisioned_at is None else _key(row.provisioned_at)
        groups.setdefault(key, []).append(row)
    return [
        group[start : start + MAX_ICCIDS_PER_CALL]
        for group in groups.values()
        for start in range(0, len(group), MAX_ICCIDS_PER_CALL)
    ]


def _key(ts: Timestamp) -> tuple[int, int]:
    return ts.seconds, ts.nanos


async def provision_call(
    target: Target, channel: Any, account_id: str, plan_id: str, rows: list[Row]
) -> list[tuple[Row, str, str]]:
    """One ProvisionSims call: (row, status, detail) per row. A refusal of the whole call
    (unknown account, a time in the future, ...) is every row's status."""
    stub = p_grpc.ProvisioningServiceStub(channel)
    request = p.ProvisionSimsRequest(
        account_id=account_id, plan_id=plan_id, iccids=[row.iccid for row in rows]
    )
    if rows[0].provisioned_at is not None:
        request.provisioned_at.CopyFrom(rows[0].provisioned_at)
    try:
        response = await stub.ProvisionSims(request, metadata=target.metadata, timeout=300)
    except grpc.aio.AioRpcError as exc:
        if not is_content_error(exc):
            raise
        status, detail = exc.code().name, str(exc.details())
        return [(row, status, detail) for row in rows]
    if len(response.results) != len(rows):
        raise RuntimeError(f"{len(response.results)} results for {len(rows)} ICCIDs")
    return [
        (
            row,
            p.ProvisionStatus.Name(result.status).removeprefix("PROVISION_STATUS_"),
            result.detail,
        )
        for row, result in zip(rows, response.results, strict=True)
    ]


def tally(file: ProvisionFile, results: list[tuple[Row, str, str]]) -> Counter[str]:
    counts: Counter[str] = Counter(status for _, _, status, _ in file.rejected)
    for row, status, detail in results:
        counts[status] += 1
        if status not in ACCEPTED:
            file.rejected.append((row.line, row.values, status, detail))
    return counts


def format_time(ts: Any) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    when: datetime = ts.ToDatetime()
    return when.isoformat(timespec="seconds") + "Z"
