"""Process-wide settings of the service, applied by its entry point (`python -m service`)
and by the benchmarks, which run the service in their own process."""

from __future__ import annotations

import gc

# The cyclic garbage collector, sized for this service's heap: many long-lived objects
# (the state cache) and a stream of short-lived acyclic ones (records, candidates,
# results), which reference counting frees. With the default first threshold (700
# allocations) a young collection ran every ~150 records, and records still in flight
# were promoted into the older generations, whose collections traverse the whole cache:
# at full benchmark size that was about 5 s of collection per million records, about 1 s
# with these thresholds. Cyclic garbage (rare here) waits up to 100,000 allocations.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_loaded_heap() -> None:
    """Once the state cache is loaded: move every object alive into the permanent
    generation (`gc.freeze`), which no collection traverses again. The cache is most of
    the heap and lives as long as the process; without this, each full collection walks
    all of it (hundreds of ms at a million SIMs), stalling every call in flight. Objects
    created later (new SIMs, usage) are collected as usual. No collection first: the load
    leaves no cycles worth one (rows and lists are freed by reference counting), and a
    full collection over 1,000,000 loaded SIMs took ~1 s of the start.
    """
    gc.freeze()
