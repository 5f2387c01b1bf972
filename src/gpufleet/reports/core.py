"""A report from merged fact rows: measures per (period, key), totals, period-over-period
change and the fleet's long-tail measures. Pure: plain data in, plain data out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gpufleet.reports.facts import (
    GPU_MAX_FACTS,
    GPU_SUM_FACTS,
    MEASURES,
    P95_ERROR_BOUND_PERCENT,
    USER_MAX_FACTS,
    USER_SUM_FACTS,
    measures,
    merge,
)

# What a report can be grouped by, and whether the rows come from per-user facts.
GPU_KEYS = ("fleet", "host", "gpu_model", "gpu")
USER_KEYS = ("user", "group", "person")
BY = GPU_KEYS + USER_KEYS
TAIL_SHARE = 0.2  # "the busiest 20% of hosts", "the least-used 20%"
DIGITS = 9

COLUMNS = (
    "period_start", "key", *MEASURES, "gpu_hours_change_percent", "avg_util_change_points",
)  # fmt: skip


def is_user_key(by: str) -> bool:
    return by in USER_KEYS


def _round(v: Any) -> Any:
    return round(v, DIGITS) if isinstance(v, float) else v


def _facts_of(by: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (USER_SUM_FACTS, USER_MAX_FACTS) if is_user_key(by) else (GPU_SUM_FACTS, GPU_MAX_FACTS)


def gini(values: Sequence[float]) -> float | None:
    """Gini coefficient of non-negative values: 0 even, towards 1 all on one."""
    xs = sorted(v for v in values if v is not None)
    n, total = len(xs), sum(xs)
    if n == 0 or total <= 0:
        return None if n == 0 else 0.0
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return 2 * weighted / (n * total) - (n + 1) / n


def long_tail(host_facts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How unevenly the load is spread over hosts (one fact row per host, key = host)."""
    hosts = []
    for f in host_facts:
        m = measures(f)
        avail = m["availability_hours"] or 0.0
        held = m["gpu_hours"] or 0.0
        hosts.append(
            {
                "host": f["key"],
                "gpu_hours": _round(held),
                "avg_util": m["avg_util"],
                "availability_hours": _round(avail),
                "idle_gpu_hours": _round(max(avail - held, 0.0)),
            }
        )
    n = len(hosts)
    out: dict[str, Any] = {
        "hosts": n,
        "busiest_share": TAIL_SHARE,
        "busiest_hosts_gpu_hours_share": None,
        "host_util_gini": gini([h["avg_util"] for h in hosts if h["avg_util"] is not None]),
        "idle_gpu_hours": _round(sum(h["idle_gpu_hours"] for h in hosts)),
        "least_used_hosts": [],
        "least_used_idle_gpu_hours": 0.0,
        "hosts_ranked": sorted(hosts, key=lambda h: (-h["gpu_hours"], h["host"])),
    }
    if n == 0:
        return out
    k = max(1, math.ceil(TAIL_SHARE * n))
    total = sum(h["gpu_hours"] for h in hosts)
    if total > 0:
        top = sum(h["gpu_hours"] for h in out["hosts_ranked"][:k])
        out["busiest_hosts_gpu_hours_share"] = _round(top / total)
    least = sorted(hosts, key=lambda h: (h["avg_util"] or 0.0, h["gpu_hours"], h["host"]))[:k]
    out["least_used_hosts"] = [h["host"] for h in least]
    out["least_used_idle_gpu_hours"] = _round(sum(h["idle_gpu_hours"] for h in least))
    if out["host_util_gini"] is not None:
        out["host_util_gini"] = _round(out["host_util_gini"])
    return out


def _change(cur: Mapping[str, Any], prev: Mapping[str, Any] | None) -> dict[str, float | None]:
    if prev is None:
        return {"gpu_hours_change_percent": None, "avg_util_change_points": None}
    p_hours, c_hours = prev.get("gpu_hours") or 0.0, cur.get("gpu_hours") or 0.0
    pct = (c_hours - p_hours) / p_hours * 100 if p_hours else None
    pu, cu = prev.get("avg_util"), cur.get("avg_util")
    return {
        "gpu_hours_change_percent": _round(pct) if pct is not None else None,
        "avg_util_change_points": _round(cu - pu) if cu is not None and pu is not None else None,
    }


def build_report(
    *,
    period: str,
    by: str,
    periods: Sequence[str],
    previous: Mapping[str, str],
    fact_rows: Sequence[Mapping[str, Any]],
    host_facts: Sequence[Mapping[str, Any]] = (),
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report.

    periods: the period labels (ISO start dates) in the range, in order; previous: label ->
    the label of the period before it (whose rows, if given in ``fact_rows``, only feed the
    change columns); fact_rows: additive facts with ``period_start`` and ``key``, at most one
    row per (period, key) or several to merge; host_facts: one row per host over the range.
    """
    sums, maxes = _facts_of(by)
    user = is_user_key(by)
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in fact_rows:
        grouped.setdefault((r["period_start"], str(r["key"])), []).append(r)
    merged = {k: merge(v, sums, maxes) for k, v in grouped.items()}
    derived = {k: measures(f, user=user) for k, f in merged.items()}
    in_range = set(periods)
    order = {p: i for i, p in enumerate(periods)}
    rows = []
    for (label, key), m in sorted(
        derived.items(), key=lambda kv: (order.get(kv[0][0], -1), kv[0][1])
    ):
        if label not in in_range:
            continue
        prev_label = previous.get(label)
        prev = derived.get((prev_label, key)) if prev_label is not None else None
        row: dict[str, Any] = {"period_start": label, "key": key}
        row.update({k: _round(v) for k, v in m.items()})
        row.update(_change(m, prev))
        rows.append(row)
    total_facts = merge((merged[k] for k in merged if k[0] in in_range), sums, maxes)
    if user:
        total_facts["peak_gpus"] = None  # users' peaks do not add up to the fleet's
    totals = {k: _round(v) for k, v in measures(total_facts, user=user).items()}
    return {
        **(meta or {}),
        "period": period,
        "by": by,
        "columns": list(COLUMNS),
        "rows": rows,
        "totals": totals,
        "long_tail": long_tail(host_facts),
        "p95_error_bound_percent": P95_ERROR_BOUND_PERCENT,
    }
