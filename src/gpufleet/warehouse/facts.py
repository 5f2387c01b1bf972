"""Additive facts and the measures derived from them. Pure: plain dicts in, plain dicts out.

Every tier of the warehouse holds the same additive facts (sums of seconds, of
utilisation x seconds, of bytes x seconds, of joules, a time-weighted utilisation histogram,
and maxima), so a coarse bucket is the exact sum of its fine ones: no average of averages.

How one sample counts: a GPU sample at ``ts`` stands for the sample's ``interval_seconds``
and belongs to the bucket that holds ``ts``. A GPU is *held* while any process holds it,
*busy* while its utilisation is above ``busy_util_percent``, *idle-held* when held and not
busy. Users sharing a GPU at one sample each get an equal share of that sample's seconds,
so per-user GPU-hours add up to the fleet's.

p95 comes from the histogram (20 buckets of 5 points, time-weighted), interpolated within
the bucket where the 95th percentile falls: it is within ``P95_ERROR_BOUND_PERCENT`` (5
utilisation points) of the exact time-weighted p95 of the samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HIST_BUCKETS = 20
HIST_WIDTH_PERCENT = 100.0 / HIST_BUCKETS
P95_ERROR_BOUND_PERCENT = HIST_WIDTH_PERCENT
HIST_COLUMNS = tuple(f"util_hist_{i:02d}" for i in range(HIST_BUCKETS))

# Facts of a GPU tier row, summed when buckets merge.
GPU_SUM_FACTS = (
    "samples", "sample_seconds", "util_seconds", "util_percent_seconds", "busy_seconds",
    "held_seconds", "idle_held_seconds", "memory_byte_seconds", "energy_joules", *HIST_COLUMNS,
)  # fmt: skip
# Facts merged with max.
GPU_MAX_FACTS = ("util_max_percent", "memory_max_bytes", "power_max_watts")
# Facts of a user tier row (a user's share of one GPU), summed.
USER_SUM_FACTS = (
    "held_seconds", "util_seconds", "util_percent_seconds", "busy_seconds",
    "idle_held_seconds", "memory_byte_seconds", "energy_joules", *HIST_COLUMNS,
)  # fmt: skip
USER_MAX_FACTS = ("peak_gpus",)

Facts = dict[str, float | None]

# The measures of a report row, in column order (CSV and table), with their meaning.
MEASURES: dict[str, str] = {
    "gpu_hours": "GPU-hours held (any process on the GPU)",
    "busy_gpu_hours": "GPU-hours with utilisation above the busy threshold",
    "idle_held_hours": "GPU-hours held but not busy",
    "avg_util": "time-weighted mean utilisation, percent",
    "p95_util": "time-weighted 95th percentile of utilisation, percent (within 5 points)",
    "max_util": "highest utilisation seen, percent",
    "mem_gb_hours": "GPU memory used x hours, GB-hours (1 GB = 1e9 bytes)",
    "energy_kwh": "GPU energy, kWh",
    "availability_hours": "GPU-hours with data (the GPU's host reported)",
    "peak_concurrent_gpus": "most GPUs held at once (users: summed over hosts, per minute)",
}


def merge(
    rows: Iterable[Mapping[str, Any]], sum_facts: Iterable[str], max_facts: Iterable[str]
) -> Facts:
    """One fact row from many: sums and maxima (None where no row had a value)."""
    sums = tuple(sum_facts)
    maxes = tuple(max_facts)
    out: Facts = {k: 0.0 for k in sums}
    out.update({k: None for k in maxes})
    for row in rows:
        for k in sums:
            out[k] = (out[k] or 0.0) + float(row.get(k) or 0.0)
        for k in maxes:
            v = row.get(k)
            if v is not None:
                cur = out[k]
                out[k] = float(v) if cur is None else max(cur, float(v))
    return out


def percentile_from_hist(hist: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of a time-weighted histogram of 5-point buckets, interpolated."""
    total = sum(hist)
    if total <= 0:
        return None
    target = q * total
    cum = 0.0
    for i, w in enumerate(hist):
        if w > 0 and cum + w >= target:
            frac = (target - cum) / w
            return round((i + frac) * HIST_WIDTH_PERCENT, 6)
        cum += w
    return 100.0


def _div(a: float | None, b: float | None) -> float | None:
    return None if not b or a is None else a / b


def measures(f: Mapping[str, Any], *, user: bool = False) -> dict[str, float | None]:
    """The report measures of one merged fact row."""
    hist = [float(f.get(c) or 0.0) for c in HIST_COLUMNS]
    avg = _div(f.get("util_percent_seconds"), f.get("util_seconds"))
    out: dict[str, float | None] = {
        "gpu_hours": (f.get("held_seconds") or 0.0) / 3600,
        "busy_gpu_hours": (f.get("busy_seconds") or 0.0) / 3600,
        "idle_held_hours": (f.get("idle_held_seconds") or 0.0) / 3600,
        "avg_util": None if avg is None else round(avg, 6),
        "p95_util": percentile_from_hist(hist, 0.95),
        "max_util": None if user else f.get("util_max_percent"),
        "mem_gb_hours": (f.get("memory_byte_seconds") or 0.0) / 1e9 / 3600,
        "energy_kwh": (f.get("energy_joules") or 0.0) / 3.6e6,
        "availability_hours": None if user else (f.get("sample_seconds") or 0.0) / 3600,
        "peak_concurrent_gpus": f.get("peak_gpus") if user else None,
    }
    return out
