"""Throughput benchmarks of simrating, run with `python -m bench` (`make bench`).

Modules:

- `registry`  — named benchmarks (`@benchmark("name")`) and the `Figure` each one reports;
- `context`   — options, progress lines on stderr, fresh databases for a benchmark;
- `workload`  — the deterministic usage records every benchmark shares;
- `client`    — the StreamUsage load generator, run in a child process;
- `ingestion` — the real service, end to end (records durably acknowledged per second);
- `transport` — baseline A: a no-op gRPC server driven by the same client;
- `storage`   — baseline B: asyncpg COPY of the same rows into a table of the same shape;
- `report`    — the table on stdout and `bench/results.json`.

A new benchmark is a module with a function decorated `@benchmark(...)`, listed in
`registry.MODULES`.
"""
