"""A report from a store: choose the tier, fetch the facts, hand them to the pure core.
Shared by the API route, the CLI and (later) the web page and the e-mailed reports."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from gpufleet.reports.core import (
    BY,
    LONG_TAIL_FACTS,
    build_report,
    factorize,
    regroup_hosts,
    select_keys,
)
from gpufleet.store.base import Store
from gpufleet.warehouse import calendar as cal

TIERS = ("auto", "day", "hour", "raw")
# The days a report can cover: its previous period and the day after its last must exist in
# the calendar (date.min is 0001-01-01, date.max 9999-12-31).
FIRST_DAY = date(2, 1, 1)
LAST_DAY = date(9998, 12, 31)
# What "avg_util" averages over, by grouping: a user's rows (and their total) weigh the GPU
# time the user's processes held the GPU; the hardware groupings weigh all sampled GPU time,
# free GPUs included. So the two totals differ, and each report says which it is.
USER_GROUPINGS = ("user", "group", "person")


def averaged_over(by: str) -> str:
    if by in USER_GROUPINGS:
        return "held GPU time (GPU time the users' processes held)"
    return "all sampled GPU time (free GPUs included)"


class ReportError(ValueError):
    """A report request that cannot be answered as asked (bad period, grouping, range)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


DATE_PATTERN = r"^(\d{4}-\d{2}-\d{2})?$"  # YYYY-MM-DD, or empty for "not given"


def parse_date(text: str | None, what: str) -> date | None:
    if text is None or text == "":
        return None
    try:
        if not re.match(DATE_PATTERN, text):  # fromisoformat also takes 20260101, 2026-W01
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ReportError(
            "invalid_date", f"{what}={text!r} is not a date; use YYYY-MM-DD"
        ) from None


@dataclass(frozen=True)
class ReportPlan:
    """A report request resolved: the days, the tier, the buckets to read and their period
    labels. Equal plans give equal reports over equal tiers (a cache's key)."""

    period: str
    by: str
    first: date
    last: date
    tz: str
    tier: str  # the tier read: day, hour or raw
    busy_util_percent: float
    keys: tuple[str, ...] | None
    host_groups: tuple[tuple[str, tuple[str, ...]], ...]
    periods: tuple[str, ...]
    previous: tuple[tuple[str, str], ...]
    buckets: tuple[tuple[int, str], ...]  # bucket start ts -> period label (previous included)
    host_buckets: tuple[tuple[int, str], ...]  # the range's buckets, for the long tail
    span: tuple[float, float]  # [lo, hi) in Unix seconds: every bucket read lies inside


def plan_report(
    *,
    period: str,
    by: str,
    first: date | None = None,
    last: date | None = None,
    tz: str = "UTC",
    tier: str = "auto",
    busy_util_percent: float = 5.0,
    today: date | None = None,
    keys: Sequence[str] | None = None,
    host_groups: Mapping[str, Sequence[str]] | None = None,
) -> ReportPlan:
    """Check a report request and resolve it (``compute_report``'s arguments, no store)."""
    if period not in cal.PERIODS:
        raise ReportError(
            "invalid_period", f"period {period!r}: use one of {', '.join(cal.PERIODS)}"
        )
    if by not in BY:
        raise ReportError("invalid_by", f"by {by!r}: use one of {', '.join(BY)}")
    if tier not in TIERS:
        raise ReportError("invalid_tier", f"tier {tier!r}: use one of {', '.join(TIERS)}")
    try:
        zone = cal.zone(tz)
    except ValueError as exc:
        raise ReportError("invalid_timezone", str(exc)) from None
    today = today or datetime.now(zone).date()
    if period == "custom" and (first is None or last is None):
        raise ReportError("invalid_range", "a custom period needs both from and to")
    _check_days(first, last)
    if first is None or last is None:
        try:
            d_first, d_last = cal.default_range(period, last or today)
        except (ValueError, OverflowError):
            d_first = d_last = date.min  # the default periods fall off the calendar
        first, last = first or d_first, last or d_last
    _check_days(first, last)
    if first > last:
        raise ReportError("invalid_range", f"from ({first}) is after to ({last})")
    if (last - first).days > 366 * 20:
        raise ReportError("invalid_range", "a report covers at most 20 years")

    length = (last - first).days + 1
    # The range, then the period before its first one (for the change columns).
    start = cal.period_start(first, period, first)
    prev_start = cal.previous_period_start(start, period, length)
    labels: list[tuple[date, str]] = []
    for d in cal.days(prev_start, last):
        if d < first:
            label = prev_start if period == "custom" else cal.period_start(d, period)
        else:
            label = cal.period_start(d, period, first)
        labels.append((d, label.isoformat()))
    periods = sorted({lab for d, lab in labels if d >= first})
    previous = {
        p: cal.previous_period_start(date.fromisoformat(p), period, length).isoformat()
        for p in periods
    }

    use = "day" if tier == "auto" else tier
    if use == "day":
        buckets = [(cal.day_start_ts(d, zone), lab) for d, lab in labels]
        host_buckets = [(cal.day_start_ts(d, zone), "range") for d, _ in labels if d >= first]
    else:
        buckets = []
        host_buckets = []
        for d, lab in labels:
            a, b = cal.day_first_hour_ts(d, zone), cal.day_first_hour_ts(d + timedelta(1), zone)
            buckets += [(h, lab) for h in range(a, b, 3600)]
            if d >= first:
                host_buckets += [(h, "range") for h in range(a, b, 3600)]
    # an hour bucket ends by its day's end: the hour tier's day ends at the hour holding
    # local midnight, which starts no later than midnight itself
    span = (float(min((b for b, _ in buckets), default=0)),
            float(cal.day_start_ts(last + timedelta(1), zone)))  # fmt: skip
    return ReportPlan(
        period=period, by=by, first=first, last=last, tz=tz, tier=use,
        busy_util_percent=float(busy_util_percent),
        keys=tuple(keys) if keys is not None else None,
        host_groups=tuple((g, tuple(p)) for g, p in (host_groups or {}).items()),
        periods=tuple(periods), previous=tuple(previous.items()), buckets=tuple(buckets),
        host_buckets=tuple(host_buckets), span=span,
    )  # fmt: skip


def compute_report(
    store: Store,
    *,
    period: str,
    by: str,
    first: date | None = None,
    last: date | None = None,
    tz: str = "UTC",
    tier: str = "auto",
    busy_util_percent: float = 5.0,
    today: date | None = None,
    keys: Sequence[str] | None = None,
    host_groups: Mapping[str, Sequence[str]] | None = None,
    fields: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The report for local days ``first``..``last`` (both included) in ``tz``; ``keys``:
    only these keys' rows (and totals over them), e.g. one person's Unix users;
    ``host_groups``: group -> host name patterns (the ``hosts.groups`` setting), for
    ``by=host_group``; ``fields``: only these row columns (``parse_fields``)."""
    plan = plan_report(
        period=period, by=by, first=first, last=last, tz=tz, tier=tier,
        busy_util_percent=busy_util_percent, today=today, keys=keys, host_groups=host_groups,
    )  # fmt: skip
    return report_from_plan(store, plan, fields=fields)


def report_from_plan(
    store: Store,
    plan: ReportPlan,
    *,
    state: Mapping[str, str] | None = None,
    fields: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fetch a planned report's facts and build it. ``state``: the warehouse state read
    before (a cache reads it first, to know which tiers' version the report saw); read
    after the facts when not given."""
    use, by = plan.tier, plan.by
    buckets, host_buckets = list(plan.buckets), list(plan.host_buckets)
    t0 = time.perf_counter()
    # Stores with the warehouse mixin hand the facts over as columns (the fast path).
    columnar = use != "raw" and hasattr(store, "report_fact_columns")
    facts = getattr(store, "report_fact_columns", store.report_facts)
    fetch_by = "host" if by == "host_group" else by
    rows = facts(
        tier=use, by=fetch_by, buckets=buckets, busy_util_percent=plan.busy_util_percent,
    )  # fmt: skip
    hosts: list[dict[str, Any]] | None = None
    if columnar and fetch_by in ("host", "gpu") and plan.keys is None:
        # the long tail's per-host facts over the range, summed from the rows at hand
        hosts = host_facts_of(rows, plan.periods, gpu_keys=fetch_by == "gpu")
    if by == "host_group":  # hosts' rows, relabelled with their group (hosts.groups)
        rows = regroup_hosts(rows, dict(plan.host_groups))
    if plan.keys is not None:
        rows = select_keys(rows, plan.keys)
    if hosts is None and columnar:  # only what the long tail needs
        host_cols = store.report_fact_columns(  # type: ignore[attr-defined]
            tier=use, by="host", buckets=host_buckets, facts=LONG_TAIL_FACTS
        )
        hosts = [
            dict(zip(host_cols, vals, strict=True))
            for vals in zip(*(v.tolist() for v in host_cols.values()), strict=True)
        ]
    elif hosts is None:
        hosts = store.report_facts(
            tier=use, by="host", buckets=host_buckets, busy_util_percent=plan.busy_util_percent
        )
    query_ms = (time.perf_counter() - t0) * 1000
    if state is None:
        state = store.warehouse_state()
    meta = {
        "from": plan.first.isoformat(),
        "to": plan.last.isoformat(),
        "timezone": plan.tz,
        "tier": use,
        **volatile_meta(state, use),
        "avg_util_over": averaged_over(by),
        "query_ms": round(query_ms, 1),
    }
    return build_report(
        period=plan.period, by=by, periods=plan.periods, previous=dict(plan.previous),
        fact_rows=rows, host_facts=hosts, meta=meta, fields=fields,
    )  # fmt: skip


def volatile_meta(state: Mapping[str, str], tier: str) -> dict[str, Any]:
    """What a report says of the warehouse as it is now (it moves on as hours are rolled up,
    while a closed period's figures stay): the watermark and the late hours waiting."""
    wm = rolled_up_until(state)
    late = int(state.get("late_hours", 0) or 0)
    return {
        "rolled_up_until": (
            datetime.fromtimestamp(wm, UTC).isoformat().replace("+00:00", "Z")
            if wm is not None and tier != "raw"
            else None
        ),
        "late_hours_waiting": late if tier != "raw" else 0,
    }


def host_facts_of(
    rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    periods: Sequence[str],
    *,
    gpu_keys: bool,
) -> list[dict[str, Any]] | None:
    """The long tail's per-host facts (``LONG_TAIL_FACTS`` summed over the range) from fact
    columns keyed by host, or by GPU (``host:index``); None for rows given as dicts."""
    if not isinstance(rows, Mapping):
        return None
    labels, label_code = factorize(rows["period_start"])
    in_range = np.isin(label_code, np.nonzero(np.isin(labels, list(periods)))[0])
    keys, key_code = factorize(np.asarray(rows["key"], dtype=object)[in_range])
    of_key = [k.rsplit(":", 1)[0] for k in keys.tolist()] if gpu_keys else keys.tolist()
    names, host_code = factorize(of_key)
    group = host_code[key_code] if len(key_code) else key_code
    out = [{"key": h} for h in names.tolist()]
    for c in LONG_TAIL_FACTS:
        vals = np.nan_to_num(np.asarray(rows[c], dtype=float)[in_range], nan=0.0)
        sums = np.bincount(group, weights=vals, minlength=len(names)).tolist()
        for row, v in zip(out, sums, strict=True):
            row[c] = v
    return out


def _check_days(*days: date | None) -> None:
    for day, what in zip(days, ("from", "to"), strict=True):
        if day is not None and not FIRST_DAY <= day <= LAST_DAY:
            raise ReportError(
                "invalid_range",
                f"{what}={day.isoformat()} is outside the days a report covers "
                f"({FIRST_DAY.isoformat()} .. {LAST_DAY.isoformat()})",
            )


def rolled_up_until(state: Mapping[str, str]) -> float | None:
    """The true watermark: the tiers are complete before this time. Hours that late samples
    touched and the next rollup has not redone yet (``late_from_ts``) move it back."""
    wm = state.get("watermark_ts")
    if wm is None:
        return None
    late = state.get("late_from_ts")
    return min(float(wm), float(late)) if late is not None else float(wm)


def parse_keys(text: str | None) -> list[str] | None:
    """``key=a,b``: the keys a report is restricted to (None: all)."""
    if text is None:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys or len(keys) > 1000 or any(len(k) > 256 for k in keys):
        raise ReportError("invalid_key", f"key={text[:80]!r}: give 1 to 1000 comma-separated keys")
    return keys


def parse_fields(text: str) -> list[str]:
    """``fields=a,b``: the row columns asked for, in the answer's order."""
    from gpufleet.reports.core import COLUMNS

    wanted = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in COLUMNS]
    if not wanted or unknown:
        raise ReportError(
            "invalid_fields",
            f"fields={text[:80]!r}: use columns of {', '.join(COLUMNS)}"
            + (f" (not {', '.join(unknown[:5])})" if unknown else ""),
        )
    return [c for c in COLUMNS if c in wanted]


def report_options(tz: str) -> dict[str, Any]:
    """What a report can be asked for (the web page builds its choices from this)."""
    from gpufleet.reports.core import COLUMNS

    return {
        "periods": list(cal.PERIODS),
        "by": list(BY),
        "formats": ["json", "csv"],
        "timezone": tz,
        "columns": list(COLUMNS),
    }


def to_csv(report: dict[str, Any]) -> str:
    """The report's rows as CSV, with the same columns as the JSON rows."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = report["columns"]
    w.writerow(cols)
    for r in report["rows"]:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    return buf.getvalue()
