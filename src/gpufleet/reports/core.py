"""A report from merged fact rows: measures per (period, key), totals, period-over-period
change and the fleet's long-tail measures. Pure: plain data in, plain data out.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from gpufleet.config import host_group
from gpufleet.warehouse.facts import (
    GPU_MAX_FACTS,
    GPU_SUM_FACTS,
    HIST_COLUMNS,
    HIST_WIDTH_PERCENT,
    MEASURES,
    P95_ERROR_BOUND_PERCENT,
    USER_MAX_FACTS,
    USER_SUM_FACTS,
    measures,
)

# What a report can be grouped by, and whether the rows come from per-user facts.
GPU_KEYS = ("fleet", "host_group", "host", "gpu_model", "gpu")
USER_KEYS = ("user", "group", "person")
BY = GPU_KEYS + USER_KEYS
P95_QUANTILE = 0.95
TAIL_SHARE = 0.2  # "the busiest 20% of hosts", "the least-used 20%"
# The per-host facts ``long_tail`` reads (a store may fetch only these).
LONG_TAIL_FACTS = ("held_seconds", "sample_seconds", "util_seconds", "util_percent_seconds")
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


def _measure_columns(m: np.ndarray, names: Sequence[str], *, user: bool) -> dict[str, Any]:
    """The report measures of many merged fact rows at once (one row of ``m`` each; columns
    in ``names`` order, NaN for a missing maximum): the vectorised ``facts.measures``."""
    col = {n: m[:, i] for i, n in enumerate(names)}
    n = m.shape[0]
    none = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        us = col["util_seconds"]
        avg = np.where(us != 0, np.round(col["util_percent_seconds"] / us, 6), np.nan)
        hist = m[:, [names.index(c) for c in HIST_COLUMNS]]
        cum = np.cumsum(hist, axis=1)
        total = cum[:, -1] if n else np.zeros(0)
        target = P95_QUANTILE * total
        hit = (hist > 0) & (cum >= target[:, None])
        idx = np.argmax(hit, axis=1)
        rows = np.arange(n)
        w = hist[rows, idx]
        frac = (target - (cum[rows, idx] - w)) / w
        p95 = np.round((idx + frac) * HIST_WIDTH_PERCENT, 6)
        p95 = np.where(hit.any(axis=1), p95, 100.0)
        p95 = np.where(total > 0, p95, np.nan)
    return {
        "gpu_hours": col["held_seconds"] / 3600,
        "busy_gpu_hours": col["busy_seconds"] / 3600,
        "idle_held_hours": col["idle_held_seconds"] / 3600,
        "avg_util": avg,
        "p95_util": p95,
        "max_util": none if user else col["util_max_percent"],
        "mem_gb_hours": col["memory_byte_seconds"] / 1e9 / 3600,
        "energy_kwh": col["energy_joules"] / 3.6e6,
        "availability_hours": none if user else col["sample_seconds"] / 3600,
        "peak_concurrent_gpus": col["peak_gpus"] if user else none,
    }


def _listed(values: np.ndarray) -> list[Any]:
    """Rounded Python floats, None for NaN."""
    r = np.round(values, DIGITS)
    if not np.isnan(r).any():
        return r.tolist()
    return [None if v != v else v for v in r.tolist()]


# Fact rows in columns: "period_start" and "key" (object arrays) and one float array per fact
# (NaN for a missing maximum), as the stores return them for reports (no Python object per
# value); a sequence of dict rows is accepted too.
FactColumns = Mapping[str, np.ndarray]


def fact_columns(
    rows: Sequence[Mapping[str, Any]] | FactColumns, names: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Rows (dicts) or columns as columns: period_start, key, and ``names`` (all facts when
    empty) as floats (a missing fact or None: NaN)."""
    if isinstance(rows, Mapping):
        cols = dict(rows)
        n = len(cols["key"]) if "key" in cols else 0
        for c in names:
            if c not in cols:
                cols[c] = np.full(n, np.nan)
        return cols
    names = list(names) or [
        c for c in (rows[0] if rows else {}) if c not in ("period_start", "key")
    ]
    out: dict[str, np.ndarray] = {
        "period_start": np.array([r["period_start"] for r in rows], dtype=object),
        "key": np.array([str(r["key"]) for r in rows], dtype=object),
    }
    present = [c for c in names if rows and c in rows[0]]
    if present:
        getter = operator.itemgetter(*present)
        try:
            got = np.array([getter(r) for r in rows], dtype=float)
        except KeyError:  # rows with different facts
            got = np.array([[r.get(c) for c in present] for r in rows], dtype=float)
        got = got.reshape(len(rows), len(present))
        for i, c in enumerate(present):
            out[c] = got[:, i]
    for c in names:
        if c not in out:
            out[c] = np.full(len(rows), np.nan)
    return out


def factorize(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values as text, sorted (an object array), and each value's index into
    them: ``np.unique(..., return_inverse=True)`` over ``str`` values, with a dict instead of
    sorting every value (a month of GPU days is 12,000 keys, 400 of them distinct)."""
    texts = list(map(str, values.tolist() if isinstance(values, np.ndarray) else values))
    distinct = sorted(set(texts))
    index = {v: i for i, v in enumerate(distinct)}
    codes = np.fromiter(map(index.__getitem__, texts), dtype=np.int64, count=len(texts))
    return np.array(distinct, dtype=object), codes


UNGROUPED = "(ungrouped)"


def host_group_of(host: str, groups: Mapping[str, Sequence[str]]) -> str:
    """The host's group (``config.host_group``), else UNGROUPED."""
    return host_group(host, groups) or UNGROUPED


def regroup_hosts(
    rows: Sequence[Mapping[str, Any]] | FactColumns, groups: Mapping[str, Sequence[str]]
) -> list[Mapping[str, Any]] | dict[str, np.ndarray]:
    """Fact rows keyed by host, keyed by host group instead (several rows per group:
    ``build_report`` merges them)."""
    cache: dict[str, str] = {}

    def of(host: Any) -> str:
        h = str(host)
        if h not in cache:
            cache[h] = host_group_of(h, groups)
        return cache[h]

    if isinstance(rows, Mapping):
        out = dict(rows)
        out["key"] = np.array([of(k) for k in rows["key"]], dtype=object)
        return out
    return [{**r, "key": of(r["key"])} for r in rows]


def select_keys(
    rows: Sequence[Mapping[str, Any]] | FactColumns, keys: Sequence[str]
) -> list[Mapping[str, Any]] | dict[str, np.ndarray]:
    """Only the fact rows of these keys."""
    wanted = set(keys)
    if isinstance(rows, Mapping):
        mask = np.array([str(k) in wanted for k in rows["key"]], dtype=bool)
        return {c: v[mask] for c, v in rows.items()}
    return [r for r in rows if str(r["key"]) in wanted]


def build_report(
    *,
    period: str,
    by: str,
    periods: Sequence[str],
    previous: Mapping[str, str],
    fact_rows: Sequence[Mapping[str, Any]] | FactColumns,
    host_facts: Sequence[Mapping[str, Any]] = (),
    meta: Mapping[str, Any] | None = None,
    fields: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The report; ``fields``: only these row columns (of ``COLUMNS``; all when None).

    periods: the period labels (ISO start dates) in the range, in order; previous: label ->
    the label of the period before it (whose rows, if given in ``fact_rows``, only feed the
    change columns); fact_rows: additive facts with ``period_start`` and ``key``, at most one
    row per (period, key) or several to merge; host_facts: one row per host over the range.

    Vectorised with numpy (a daily report by GPU for a month is ~25,000 rows): the figures
    are those of ``facts.merge`` and ``facts.measures`` row by row.
    """
    sums, maxes = _facts_of(by)
    user = is_user_key(by)
    names = [*sums, *maxes]
    cols = fact_columns(fact_rows, names)
    # (period, key) codes: labels and keys sorted (ISO dates sort by time), so the merged rows
    # come out in the answer's order
    labels, pcode = factorize(cols["period_start"])
    keyset, kcode = factorize(cols["key"])
    nk = max(len(keyset), 1)
    gids, group = np.unique(pcode.astype(np.int64) * nk + kcode, return_inverse=True)
    raw = np.column_stack([np.asarray(cols[c], dtype=float) for c in names]).reshape(
        len(group), len(names)
    )
    ns = len(sums)
    raw[:, :ns] = np.nan_to_num(raw[:, :ns], nan=0.0)
    if len(gids) == len(group):
        merged = np.empty_like(raw)
        merged[group] = raw
    else:
        merged = np.zeros((len(gids), len(names)))
        merged[:, ns:] = np.nan
        sub = merged[:, :ns]
        np.add.at(sub, group, raw[:, :ns])
        merged[:, :ns] = sub
        sub = merged[:, ns:]
        np.fmax.at(sub, group, raw[:, ns:])
        merged[:, ns:] = sub
    derived = _measure_columns(merged, names, user=user)
    row_label = gids // nk
    in_range = np.isin(labels, np.asarray(list(periods), dtype=str))[row_label]
    sel = np.nonzero(in_range)[0]
    label_code = {lab: i for i, lab in enumerate(labels.tolist())}
    prev_code = np.array(
        [label_code.get(previous.get(lab, ""), -1) for lab in labels.tolist()], dtype=np.int64
    )
    prev_gid = prev_code[row_label[sel]] * nk + gids[sel] % nk
    pos = np.minimum(np.searchsorted(gids, prev_gid), max(len(gids) - 1, 0))
    found = (prev_code[row_label[sel]] >= 0) & (gids[pos] == prev_gid) if len(gids) else pos > 0
    prev_sel = np.where(found, pos, -1)
    has_prev = prev_sel >= 0
    cur_h, cur_u = derived["gpu_hours"][sel], derived["avg_util"][sel]
    prev_h = np.where(has_prev, derived["gpu_hours"][prev_sel], np.nan)
    prev_u = np.where(has_prev, derived["avg_util"][prev_sel], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(has_prev & (prev_h != 0), (cur_h - prev_h) / prev_h * 100, np.nan)
    keep = list(COLUMNS) if fields is None else [c for c in COLUMNS if c in fields]
    columns: dict[str, list[Any]] = {}
    for name in keep:
        if name == "period_start":
            columns[name] = labels[row_label[sel]].tolist()
        elif name == "key":
            columns[name] = keyset[gids[sel] % nk].tolist()
        elif name == "gpu_hours_change_percent":
            columns[name] = _listed(pct)
        elif name == "avg_util_change_points":
            columns[name] = _listed(cur_u - prev_u)
        elif name == "peak_concurrent_gpus" and user:  # peaks are whole GPUs
            columns[name] = [None if v is None else int(v) for v in _listed(derived[name][sel])]
        else:
            columns[name] = _listed(derived[name][sel])
    # one dict per row, made by C loops (map, zip): a month by GPU per day is 12,000 of them
    rows = list(map(dict, map(zip, repeat(keep), zip(*columns.values(), strict=True))))
    in_facts = merged[in_range]
    sums_by_fact = np.ascontiguousarray(in_facts[:, :ns].T).sum(axis=1)  # pairwise, per fact
    total_facts: dict[str, Any] = dict(zip(sums, sums_by_fact.tolist(), strict=True))
    for i, c in enumerate(maxes, start=ns):
        vals = in_facts[:, i]
        vals = vals[~np.isnan(vals)]
        total_facts[c] = float(vals.max()) if vals.size else None
    if user:
        total_facts["peak_gpus"] = None  # users' peaks do not add up to the fleet's
    totals = {k: _round(v) for k, v in measures(total_facts, user=user).items()}
    return {
        **(meta or {}),
        "period": period,
        "by": by,
        "columns": keep,
        "rows": rows,
        "totals": totals,
        "long_tail": long_tail(host_facts),
        "p95_error_bound_percent": P95_ERROR_BOUND_PERCENT,
    }
