"""The results: a table on stdout and a JSON file (bench/results.json by default).

Every records/s figure is compared with the two baselines of the same run, when they
ran: `vs COPY` = figure / copy (how much of the storage limit we reach), `vs transport`
= figure / transport (how much of the gRPC + protobuf limit we reach), `vs ingestion` =
figure / ingestion (e.g. how close `simrating usage send` of a file comes to it).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.registry import (
    COPY_BASELINE,
    INGESTION_FIGURE,
    THROUGHPUT_UNIT,
    TRANSPORT_BASELINE,
    Figure,
)
from bench.workload import Workload


def ratios(figure: Figure, by_name: dict[str, Figure]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, baseline in (
        ("vs_copy", COPY_BASELINE),
        ("vs_transport", TRANSPORT_BASELINE),
        ("vs_ingestion", INGESTION_FIGURE),
    ):
        base = by_name.get(baseline)
        comparable = (
            figure.compare
            and figure.unit == THROUGHPUT_UNIT
            and base is not None
            and base.value > 0
        )
        out[key] = round(figure.value / base.value, 3) if comparable else None  # type: ignore[union-attr]
    own = by_name.get(figure.baseline) if figure.baseline else None
    out["vs_baseline"] = round(figure.value / own.value, 3) if own and own.value > 0 else None
    return out


def _value(value: float) -> str:
    """Large figures as whole numbers; small ones (seconds, ratios) with two decimals."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _rounded(value: float) -> float:
    return round(value, 1) if abs(value) >= 100 else round(value, 3)


def table(figures: list[Figure]) -> str:
    by_name = {f.name: f for f in figures}
    rows = [("figure", "value", "unit", "vs COPY", "vs transport", "vs ingestion", "vs baseline")]
    for figure in figures:
        r = ratios(figure, by_name)
        rows.append(
            (
                figure.label,
                _value(figure.value),
                figure.unit,
                "-" if r["vs_copy"] is None else f"{r['vs_copy']:.2f}",
                "-" if r["vs_transport"] is None else f"{r['vs_transport']:.2f}",
                "-" if r["vs_ingestion"] is None else f"{r['vs_ingestion']:.2f}",
                "-" if r["vs_baseline"] is None else f"{r['vs_baseline']:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        numbers = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        cells = [row[0].ljust(widths[0]), *numbers]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "asyncpg": version("asyncpg"),
    }


def write_json(
    path: Path,
    figures: list[Figure],
    workload: Workload,
    options: dict[str, Any],
    postgres: dict[str, str] | None,
) -> None:
    by_name = {f.name: f for f in figures}
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "postgres": postgres,
        "workload": {
            "records": workload.records,
            "sims": workload.sims,
            "streams": workload.streams,
            "batch": workload.batch,
            "seed": workload.seed,
        },
        "options": options,
        "figures": {
            f.name: {
                "label": f.label,
                "value": _rounded(f.value),
                "unit": f.unit,
                **ratios(f, by_name),
                "details": f.details,
            }
            for f in figures
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
