"""The cache's gauges. The SIM gauges (`rating_sims{state}`, `rating_activation_pending`)
are kept by the cache's SIM changes: counted once at start, then moved by each change,
never recounted. The sizes (`rating_cache_entries{kind}`) are read at scrape time."""

from __future__ import annotations

from service.domain.model import ActivationMode, Sim, SimState
from service.ops.metrics import Metrics
from service.state.cache import StateCache


class SimGauges:
    def __init__(self, cache: StateCache, metrics: Metrics) -> None:
        self._cache = cache
        self._metrics = metrics
        self._waiting = sum(self._waits_for_first_use(sim) for sim in cache.sims.values())
        for state, count in cache.state_counts.items():
            metrics.sims.labels(state.name).set(count)
        metrics.activation_pending.set(self._waiting)

    def sim_changed(self, previous: Sim | None, sim: Sim) -> None:
        """A cache SIM listener: move the gauges (and count an activation) for one change."""
        metrics = self._metrics
        if sim.billing_started_at is not None and (
            previous is None or previous.billing_started_at is None
        ):
            reason = sim.billing_start_reason.name if sim.billing_start_reason else "UNKNOWN"
            metrics.activations.labels(reason).inc()
        self._waiting += self._waits_for_first_use(sim)
        if previous is not None:
            self._waiting -= self._waits_for_first_use(previous)
        # Only the gauges this change moved: bulk changes call this once per SIM.
        for state in {sim.state, previous.state if previous else sim.state}:
            metrics.sims.labels(state.name).set(self._cache.state_counts[state])
        metrics.activation_pending.set(self._waiting)

    def _waits_for_first_use(self, sim: Sim) -> int:
        """1 for a FIRST_USE SIM whose billing has not started (and not terminated)."""
        plan = self._cache.plans[sim.plan_id]
        return int(
            plan.activation_mode is ActivationMode.FIRST_USE
            and sim.billing_started_at is None
            and sim.state is not SimState.TERMINATED
        )


def watch_cache_sizes(cache: StateCache, metrics: Metrics) -> None:
    """`rating_cache_entries{kind}`, computed when /metrics is scraped (in the HTTP server's
    thread): plain `len()`s, except `sim_periods`, one pass over the SIMs with usage. The
    values are copied first in one C call, so a SIM added meanwhile cannot break it."""

    def sim_periods() -> int:
        return sum(usage.period_count() for usage in list(cache.usage.values()))

    sizes = {
        "plans": lambda: len(cache.plans),
        "accounts": lambda: len(cache.accounts),
        "sims": lambda: len(cache.sims),
        "sim_periods": sim_periods,
        "settled_periods": lambda: len(cache.settled),
    }
    for kind, size in sizes.items():
        metrics.cache_entries.labels(kind).set_function(size)
