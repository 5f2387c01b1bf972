"""The server's garbage-collector policy: keep long-lived objects out of the collector's way.

Why: the server holds a large, steadily renewed heap of small objects: every host's latest
sample in live state (about 100 tracked objects per host), and the batches acknowledged into
the ingest log but not yet moved into the database. CPython's full (generation 2) collection
walks every tracked object while holding the GIL. With 5,000 hosts at 1,000 batches/s it ran
about twice a second, took 400-500 ms each time and found no garbage (measured with
``gc.callbacks``): the event loop stood still for most of each second, and ingest latency
went to seconds.

What: these objects die by reference counting (samples are replaced, batches are dropped
once applied), not by the cycle collector. So once a second everything that has survived is
moved to the permanent generation (``gc.freeze``): the automatic collections then look only
at what is younger than a second, and objects frozen and later dropped are still freed by
reference counting. What the freeze can hold back is reference *cycles* that become garbage
after being frozen (a closed connection's objects, an exception's traceback); every
``SWEEP_SECONDS`` the permanent generation is unfrozen and collected once, in full, so those
are reclaimed. That sweep is one pause of the size above (a few hundred ms at 5,000 hosts)
every ten minutes instead of twice a second.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

FREEZE_SECONDS = 1.0
SWEEP_SECONDS = 600.0


def sweep() -> tuple[int, float]:
    """Collect everything, frozen objects included, then freeze what survives.
    Returns (objects collected, seconds it took)."""
    t = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    return collected, time.perf_counter() - t


async def run(freeze_seconds: float = FREEZE_SECONDS, sweep_seconds: float = SWEEP_SECONDS) -> None:
    """Apply the policy until cancelled; on the way out, the collector is left as it was."""
    collected, took = sweep()
    log.debug("gc: start-up sweep collected %d objects in %.0f ms", collected, took * 1000)
    next_sweep = time.monotonic() + sweep_seconds
    try:
        while True:
            await asyncio.sleep(freeze_seconds)
            if time.monotonic() >= next_sweep:
                collected, took = sweep()
                next_sweep = time.monotonic() + sweep_seconds
                log.info(
                    "gc: swept %d frozen objects in %.0f ms, collected %d",
                    gc.get_freeze_count(), took * 1000, collected,
                )  # fmt: skip
            else:
                gc.freeze()
    finally:
        gc.unfreeze()
