"""The server's garbage-collector policy: keep long-lived objects out of the collector's way.

Why: the server holds a large, steadily renewed heap of small objects: every host's latest
sample in live state (about 100 tracked objects per host), and the batches acknowledged into
the ingest log but not yet moved into the database. CPython's full (generation 2) collection
walks every tracked object while holding the GIL. With 5,000 hosts at 1,000 batches/s it ran
about twice a second, took 400-500 ms each time and found no garbage (measured with
``gc.callbacks``): the event loop stood still for most of each second, and ingest latency
went to seconds.

What: these objects die by reference counting (samples are replaced, batches are dropped once
applied), not by the cycle collector. So once a second everything that has survived is moved to
the permanent generation (``gc.freeze``): the automatic collections then look only at what is
younger than a second, and objects frozen and later dropped are still freed by reference
counting. What the freeze can hold back is reference *cycles* that become garbage after being
frozen (a closed connection's objects, an exception's traceback). To reclaim those, the
permanent generation is unfrozen and collected in full (a *sweep*): one pause of the size above
(~0.5 s at 5,000 hosts, measured). The server makes little cyclic garbage (a sweep after 15 s
at 1,000 batches/s found 79 objects), so a sweep runs only when the frozen heap has grown by a
quarter since the last one (something accumulates: new hosts, or garbage), at most every
``SWEEP_MIN_SECONDS``, and at least every ``SWEEP_MAX_SECONDS`` whatever happens.

Young objects are collected after ``YOUNG_THRESHOLD`` net allocations instead of CPython's 700:
at 1,000 batches/s (~300 tracked objects each) the default ran the youngest collection hundreds
of times a second over the in-flight requests' objects. Measured side by side (bench/ingest.py,
alternating): 9-13% less server CPU per batch and 11-13% more batches/s at saturation; the p99
at 1,000/s offered did not change.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

FREEZE_SECONDS = 1.0
SWEEP_MIN_SECONDS = 600.0
SWEEP_MAX_SECONDS = 86400.0
SWEEP_GROWTH = 1.25  # the frozen heap, as a multiple of its size after the last sweep
YOUNG_THRESHOLD = 20_000  # generation-0 threshold while the policy runs (CPython's: 700)


def sweep() -> tuple[int, float]:
    """Collect everything, frozen objects included, then freeze what survives.
    Returns (objects collected, seconds it took)."""
    t = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    return collected, time.perf_counter() - t


def sweep_due(frozen: int, baseline: int, since_sweep: float) -> bool:
    """Whether to sweep now: the frozen heap grew by ``SWEEP_GROWTH`` since the last sweep
    (and that was at least ``SWEEP_MIN_SECONDS`` ago), or ``SWEEP_MAX_SECONDS`` have passed."""
    if since_sweep >= SWEEP_MAX_SECONDS:
        return True
    return since_sweep >= SWEEP_MIN_SECONDS and frozen > SWEEP_GROWTH * max(baseline, 10_000)


async def run(freeze_seconds: float = FREEZE_SECONDS) -> None:
    """Apply the policy until cancelled; on the way out, the collector is left as it was."""
    thresholds = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, *thresholds[1:])
    collected, took = sweep()
    log.debug("gc: start-up sweep collected %d objects in %.0f ms", collected, took * 1000)
    baseline, last = gc.get_freeze_count(), time.monotonic()
    try:
        while True:
            await asyncio.sleep(freeze_seconds)
            gc.freeze()
            frozen = gc.get_freeze_count()
            if sweep_due(frozen, baseline, time.monotonic() - last):
                collected, took = sweep()
                baseline, last = gc.get_freeze_count(), time.monotonic()
                log.info(
                    "gc: swept %d frozen objects in %.0f ms, collected %d; %d remain",
                    frozen, took * 1000, collected, baseline,
                )  # fmt: skip
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
