"""What the commands print: Rich tables on stdout, progress and messages on stderr, and the
rejects files (`FILE.rejected.csv`)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

stdout = Console(highlight=False, markup=False)
stderr = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)

# Suffixes stripped from an input file's name before `.rejected.csv` is added.
_INPUT_SUFFIXES = (".gz", ".csv", ".jsonl", ".ndjson", ".json")


def rejects_path(path: Path) -> Path:
    """`sims.csv` -> `sims.rejected.csv`; `cdrs.jsonl.gz` -> `cdrs.rejected.csv`."""
    name = path.name
    for suffix in _INPUT_SUFFIXES:
        name = name.removesuffix(suffix)
    return path.with_name(f"{name}.rejected.csv")


def write_rejects(
    path: Path, columns: Sequence[str], rows: Iterable[tuple[int, Sequence[str], str, str]]
) -> int:
    """Write `line, <columns>, status, reason` rows, sorted by line; remove a stale file when
    there is nothing to write. Returns the number of rows written."""
    ordered = sorted(rows, key=lambda row: row[0])
    if not ordered:
        path.unlink(missing_ok=True)
        return 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("line", *columns, "status", "reason"))
        width = len(columns)
        for line, values, status, reason in ordered:
            cells = list(values[:width]) + [""] * (width - len(values))
            writer.writerow((line, *cells, status, reason))
    return len(ordered)


def counts_table(title: str, counts: Mapping[str, int], accepted: Iterable[str]) -> Table:
    """One row per status with its count, accepted statuses first, and a total."""
    good = set(accepted)
    table = Table(title=title, title_justify="left")
    table.add_column("status")
    table.add_column("count", justify="right")
    table.add_column("")
    ordered = sorted(counts.items(), key=lambda item: (item[0] not in good, item[0]))
    for status, count in ordered:
        table.add_row(status, f"{count:,}", "ok" if status in good else "rejected")
    table.add_row("total", f"{sum(counts.values()):,}", "", end_section=True)
    return table


class RateColumn(ProgressColumn):
    """Completed items per second since the task started."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} {self.unit}/s", style="progress.data.speed")


def progress_bar(unit: str) -> Progress:
    """A progress bar on stderr, drawn only on a terminal, refreshed 4 times a second."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        refresh_per_second=4,
        disable=not stderr.is_terminal,
    )
