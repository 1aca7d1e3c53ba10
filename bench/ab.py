"""Before/after pairs: the same benchmarks against two commits of the service, alternately.

    python -m bench.ab BEFORE [AFTER] [--pairs 5] [--only ingestion --only hot] [-- BENCH_ARGS]

    python -m bench.ab 7424118 HEAD --pairs 6                   # full size (hours)
    python -m bench.ab 7424118 HEAD --pairs 2 -- --records 20000 --sims 2000 \\
        --hot-sims 5000 --hot-records 5000 --hot-calls 2000      # a quick try

Each commit is exported (`git archive`, no worktree, nothing in the repository changes)
into `--workdir`. Pair i runs `python -m bench --only ...` once from each, one after the
other, BEFORE first in pairs 1, 3, ... and AFTER first in pairs 2, 4, ..., so a slow
hour of the machine falls on both sides alike. Every run uses this checkout's
interpreter and, by default, the **same benchmark code** (`--bench-from current`: this
checkout's `bench/`, copied once when the script starts): the service, `workers` and the
generated `rating` code come from the commit under test (first on PYTHONPATH, ahead of
the editable install), so a difference comes from the service, not from a changed
benchmark.
`--bench-from each` runs each commit's own `bench/` instead (when the current benchmarks
cannot drive the older service: then the two sides measure different workloads).

Any failed run (a verification that failed, a crash) stops the script, naming its log.
At the end: per figure, a table of the pairs (before, after, change) with the mean and
median change and the standard error of the mean, on stdout and in `ab.md`; every run's
results.json and stderr stay in `runs/` of the work directory, and `ab.json` holds the
figures by pair.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIDES = ("before", "after")
DEFAULT_ONLY = ("ingestion", "hot")
CALLS = ("AuthorizeSession", "GetSimStatus")

Results = dict[str, Any]  # one run's results.json


@dataclass(frozen=True, slots=True)
class Metric:
    """A number read from one run's results; None when the run has no such figure."""

    label: str
    read: Callable[[Results], float | None]
    higher_is_better: bool
    # The change as after / before - 1; False: as after - before (a figure that can be
    # near zero or negative, such as the µs a call adds to the no-op's).
    relative: bool = True


def _figure(name: str, key: str = "value") -> Callable[[Results], float | None]:
    def read(results: Results) -> float | None:
        figure = results["figures"].get(name)
        return None if figure is None else figure.get(key)

    return read


def _detail(name: str, key: str) -> Callable[[Results], float | None]:
    def read(results: Results) -> float | None:
        figure = results["figures"].get(name)
        return None if figure is None else figure["details"].get(key)

    return read


METRICS = (
    Metric("ingestion records/s", _figure("ingestion"), True),
    Metric("ingestion / COPY", _figure("ingestion", "vs_copy"), True),
    *(
        metric
        for call in CALLS
        for metric in (
            Metric(f"{call} c=50 QPS / no-op", _figure(f"hot_{call}_c50_qps", "vs_baseline"), True),
            Metric(
                f"{call} c=50 p99 / no-op", _figure(f"hot_{call}_c50_p99", "vs_baseline"), False
            ),
            Metric(
                f"{call} c=50 µs added",
                _detail(f"hot_{call}_c50_qps", "added_us"),
                False,
                relative=False,
            ),
            Metric(f"{call} c=50 µs in server", _detail(f"hot_{call}_c50_qps", "server_us"), False),
        )
    ),
)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def export(commit: str, into: Path) -> Path:
    """The tree of `commit` under `into/<sha>` (git archive; reused if already there)."""
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    tree = into / sha[:12]
    if not (tree / "service").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as archive:
            subprocess.run(
                ["git", "-C", str(REPO), "archive", "--format=tar", sha],
                check=True,
                stdout=archive,
            )
            archive.seek(0)
            with tarfile.open(fileobj=archive) as tar:
                tar.extractall(tree, filter="data")
    return tree


def copy_bench(source: Path, into: Path) -> Path:
    """`source`'s bench package alone under `into` (what `--bench-from current` runs)."""
    target = into / "bench-code"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(
        source / "bench", target / "bench", ignore=shutil.ignore_patterns("__pycache__", "*.json")
    )
    return target


def run_once(
    tree: Path, bench_root: Path, only: list[str], extra: list[str], output: Path, log: Path
) -> Results:
    """`python -m bench` with the service of `tree` and the bench package of `bench_root`."""
    path = [str(bench_root), str(tree), str(tree / "protos")]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    command = [sys.executable, "-m", "bench", *(f"--only={name}" for name in only)]
    command += [*extra, "--output", str(output)]
    with log.open("w") as stderr:
        # cwd = the bench package's root: `-m bench` finds it first; the service is found
        # on PYTHONPATH, ahead of the editable install of this checkout.
        done = subprocess.run(
            command,
            cwd=bench_root,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        raise SystemExit(f"bench.ab: the run failed (exit {done.returncode}); see {log}")
    results: Results = json.loads(output.read_text())
    return results


def summary(runs: list[dict[str, Results]], commits: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The markdown tables and the JSON document of the pairs."""
    lines = [
        f"before = {commits['before']}, after = {commits['after']}; {len(runs)} pairs,"
        " alternately (pair 1 before first, pair 2 after first, ...)",
        "",
    ]
    document: dict[str, Any] = {"commits": commits, "metrics": {}}
    for metric in METRICS:
        pairs = [(metric.read(run["before"]), metric.read(run["after"])) for run in runs]
        if all(before is None and after is None for before, after in pairs):
            continue
        lines += [
            f"**{metric.label}** ({'higher' if metric.higher_is_better else 'lower'} is better)",
            "",
            "| pair | first | before | after | change |",
            "| --- | --- | --- | --- | --- |",
        ]
        changes = []
        shown = "{:+.1%}" if metric.relative else "{:+.1f}"
        for n, (before, after) in enumerate(pairs):
            change = None
            if before is not None and after is not None:
                if not metric.relative:
                    change = after - before
                elif before:
                    change = after / before - 1
            if change is not None:
                changes.append(change)
            lines.append(
                f"| {n + 1} | {SIDES[n % 2]} | {_number(before)} | {_number(after)}"
                f" | {'' if change is None else shown.format(change)} |"
            )
        if changes:
            mean = statistics.fmean(changes)
            error = statistics.stdev(changes) / len(changes) ** 0.5 if len(changes) > 1 else None
            lines.append(
                f"| change | | | | mean {shown.format(mean)},"
                f" median {shown.format(statistics.median(changes))}"
                + ("" if error is None else f", standard error {shown.format(error)[1:]}")
                + " |"
            )
        lines.append("")
        document["metrics"][metric.label] = {"pairs": pairs, "changes": changes}
    return "\n".join(lines), document


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("before", help="commit of the service before the change")
    parser.add_argument("after", nargs="?", default="HEAD", help="commit after it (HEAD)")
    parser.add_argument("--pairs", type=int, default=5, help="before/after pairs (5)")
    parser.add_argument(
        "--only", action="append", help=f"benchmark to run (repeatable; {', '.join(DEFAULT_ONLY)})"
    )
    parser.add_argument(
        "--bench-from",
        choices=("current", "each"),
        default="current",
        help="the bench code of this checkout for both sides (default), or each commit's own",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "simrating-ab",
        help="where the exported trees, runs and tables go",
    )
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")
    only = args.only or list(DEFAULT_ONLY)
    workdir: Path = args.workdir.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_dir = workdir / "runs" / stamp
    runs_dir.mkdir(parents=True)
    trees = {
        side: export(commit, workdir / "trees")
        for side, commit in zip(SIDES, (args.before, args.after), strict=True)
    }
    commits = {side: tree.name for side, tree in trees.items()}
    current = copy_bench(REPO, runs_dir) if args.bench_from == "current" else None
    runs: list[dict[str, Results]] = []
    for pair in range(args.pairs):
        order = SIDES if pair % 2 == 0 else SIDES[::-1]
        run: dict[str, Results] = {}
        for side in order:
            name = f"pair{pair + 1}-{side}"
            started = time.perf_counter()
            print(f"bench.ab: {name} ({commits[side]}) ...", file=sys.stderr, flush=True)
            run[side] = run_once(
                trees[side],
                current or trees[side],
                only,
                extra,
                runs_dir / f"{name}.json",
                runs_dir / f"{name}.log",
            )
            print(
                f"bench.ab: {name} done in {time.perf_counter() - started:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        runs.append(run)
    table, document = summary(runs, commits)
    document.update(only=only, bench_args=extra, bench_from=args.bench_from, runs=str(runs_dir))
    (runs_dir / "ab.md").write_text(table + "\n")
    (runs_dir / "ab.json").write_text(json.dumps(document, indent=2) + "\n")
    print(table)
    print(f"bench.ab: tables in {runs_dir / 'ab.md'}, runs in {runs_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
