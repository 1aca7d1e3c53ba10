"""Throughput benchmarks of simrating, run with `python -m bench` (`make bench`).

Modules:

- `registry`  — named benchmarks (`@benchmark("name")`), their options, the `Figure`s;
- `context`   — the run's options, progress lines on stderr, fresh databases;
- `workload`  — the deterministic usage records every benchmark shares;
- `client`    — the StreamUsage load generator, run in a child process;
- `ingestion` — the real service, end to end (records durably acknowledged per second);
- `transport` — baseline A: a no-op gRPC server driven by the same client;
- `storage`   — baseline B: asyncpg COPY of the same rows into a table of the same shape;
- `hot`, `hot_traffic` — the session-start calls beside a no-op server, answers checked;
- `hotpath`   — micro-benchmarks of the hot-path techniques against the plain way;
- `service_process` — `python -m service` as a child process (history, rss);
- `ab`        — before/after pairs of benchmarks against two commits, alternately;
- `report`    — the table on stdout and `bench/results.json`.

A new benchmark is a module with a function decorated `@benchmark(...)` (its options a
dataclass in the same module), listed in `registry.MODULES`.
"""
