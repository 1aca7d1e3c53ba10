"""Process-wide settings of the service, applied by its entry point (`python -m service`)
and by the benchmarks, which run the service in their own process."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

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


@contextlib.contextmanager
def loading_heap() -> Iterator[None]:
    """Around the start's cache load: no cyclic collection while it builds millions of
    long-lived objects, then every object alive moves into the permanent generation
    (`gc.freeze`), which no collection traverses again.

    During the load each young collection promotes what it finds alive, and the middle
    generation's collections walk millions of objects (1,000,000 SIMs built with the
    collector on: 1.1 s of 3.4 s in collections). The load leaves no cycles worth a
    collection (rows and lists are freed by reference counting; a full collection over
    1,000,000 loaded SIMs took ~1 s of the start), so none runs before the freeze.
    Afterwards the cache, most of the heap and as long-lived as the process, is never
    walked again: without the freeze each full collection would walk all of it (hundreds
    of ms at a million SIMs), stalling every call in flight. Objects created later (new
    SIMs, usage) are collected as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()
