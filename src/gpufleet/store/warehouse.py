"""The warehouse on DuckDB: rolling raw samples up into the minute/hour/day tiers, and the
fact queries reports are computed from. SQL only; what the facts mean is in
gpufleet.reports.facts, how days and periods fall in gpufleet.reports.calendar.

Every function takes a connection and runs inside the caller's transaction (the store's
writer for rollups). A rollup of hours [h0, h1) deletes and recomputes those hours from raw
(minute from raw, hour from minute, user facts from raw), then recomputes each local day the
hours touch from the hour tier: re-running it gives identical tiers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gpufleet.reports.facts import (
    GPU_MAX_FACTS,
    GPU_SUM_FACTS,
    HIST_BUCKETS,
    HIST_COLUMNS,
    HIST_WIDTH_PERCENT,
    USER_SUM_FACTS,
)

GPU_TIER_COLUMNS = (
    "host",
    "gpu_index",
    "bucket_ts",
    "gpu_uuid",
    "gpu_model",
    *GPU_SUM_FACTS,
    *GPU_MAX_FACTS,
)
USER_TIER_COLUMNS = ("user_name", "host", "gpu_index", "bucket_ts", *USER_SUM_FACTS)
UNKNOWN_USER = "(unknown)"

# Report keys: SQL for each "by" over the gpu tier (alias t) or the user tier (alias t, m).
GPU_KEY_SQL = {
    "fleet": "'fleet'",
    "host": "t.host",
    "gpu_model": "coalesce(t.gpu_model, '(unknown)')",
    "gpu": "t.host || ':' || CAST(t.gpu_index AS VARCHAR)",
}
USER_KEY_SQL = {
    "user": "t.user_name",
    "group": "coalesce(m.group_name, t.user_name)",
    "person": "coalesce(m.person, t.user_name)",
}


def _f(x: float) -> str:
    """A float literal for SQL (thresholds come from validated settings)."""
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x}")
    return repr(float(x))


def raw_gpu_sql(t0: float, t1: float, busy_util_percent: float) -> str:
    """One row per GPU sample in [t0, t1) with its weight ``w`` (the sample's seconds)."""
    lo, hi, thr = _f(t0), _f(t1), _f(busy_util_percent)
    return f"""
        SELECT g.host, g.gpu_index, g.ts, g.uuid, g.name,
            g.utilization_gpu_percent::DOUBLE AS u,
            least(floor(g.utilization_gpu_percent / {HIST_WIDTH_PERCENT!r}),
                  {HIST_BUCKETS - 1})::INTEGER AS hb,
            g.memory_used_bytes::DOUBLE AS m, g.power_watts::DOUBLE AS p,
            g.processes > 0 AS held,
            coalesce(g.utilization_gpu_percent > {thr}, false) AS busy,
            h.interval_seconds::DOUBLE AS w
        FROM gpu_samples g JOIN host_samples h ON g.host = h.host AND g.ts = h.ts
        WHERE g.ts >= {lo} AND g.ts < {hi} AND h.ts >= {lo} AND h.ts < {hi}
    """


def raw_user_sql(t0: float, t1: float, busy_util_percent: float) -> str:
    """One row per (user, GPU sample): ``w`` the user's share of the sample's seconds, ``ws``
    the whole sample's seconds, ``um`` the user's processes' memory on that GPU."""
    lo, hi = _f(t0), _f(t1)
    return f"""
        WITH g AS ({raw_gpu_sql(t0, t1, busy_util_percent)}),
        pr AS (
            SELECT host, ts, gpu_index, coalesce(user_name, '{UNKNOWN_USER}') AS user_name,
                sum(coalesce(gpu_memory_bytes, 0))::DOUBLE AS um
            FROM process_samples WHERE ts >= {lo} AND ts < {hi} GROUP BY ALL
        )
        SELECT pr.user_name, pr.host, pr.gpu_index, pr.ts, pr.um, g.u, g.hb, g.p, g.busy,
            g.w AS ws, g.w / count(*) OVER (PARTITION BY pr.host, pr.ts, pr.gpu_index) AS w
        FROM pr JOIN g ON pr.host = g.host AND pr.ts = g.ts AND pr.gpu_index = g.gpu_index
    """


def _hist_aggs() -> str:
    return ", ".join(
        f"coalesce(sum(w) FILTER (WHERE hb = {i}), 0) AS {c}" for i, c in enumerate(HIST_COLUMNS)
    )


def gpu_fact_aggs() -> str:
    """Aggregates over raw GPU rows (``raw_gpu_sql``), in GPU_SUM_FACTS + GPU_MAX_FACTS order."""
    return f"""
        count(*) AS samples, sum(w) AS sample_seconds,
        coalesce(sum(w) FILTER (WHERE u IS NOT NULL), 0) AS util_seconds,
        coalesce(sum(u * w), 0) AS util_percent_seconds,
        coalesce(sum(w) FILTER (WHERE busy), 0) AS busy_seconds,
        coalesce(sum(w) FILTER (WHERE held), 0) AS held_seconds,
        coalesce(sum(w) FILTER (WHERE held AND NOT busy), 0) AS idle_held_seconds,
        coalesce(sum(m * w), 0) AS memory_byte_seconds,
        coalesce(sum(p * w), 0) AS energy_joules,
        {_hist_aggs()},
        max(u) AS util_max_percent, max(m)::BIGINT AS memory_max_bytes, max(p) AS power_max_watts
    """


def user_fact_aggs() -> str:
    """Aggregates over raw user rows (``raw_user_sql``), in USER_SUM_FACTS order."""
    return f"""
        sum(w) AS held_seconds,
        coalesce(sum(w) FILTER (WHERE u IS NOT NULL), 0) AS util_seconds,
        coalesce(sum(u * w), 0) AS util_percent_seconds,
        coalesce(sum(w) FILTER (WHERE busy), 0) AS busy_seconds,
        coalesce(sum(w) FILTER (WHERE NOT busy), 0) AS idle_held_seconds,
        coalesce(sum(um * ws), 0) AS memory_byte_seconds,
        coalesce(sum(p * w), 0) AS energy_joules,
        {_hist_aggs()}
    """


def _merge_aggs(sum_facts: Sequence[str], max_facts: Sequence[str] = ()) -> str:
    return ", ".join(
        [f"sum({c}) AS {c}" for c in sum_facts] + [f"max({c}) AS {c}" for c in max_facts]
    )


# -- rollup ------------------------------------------------------------------------------------


def rollup_hours(con: Any, h0: int, h1: int, busy_util_percent: float) -> None:
    """Recompute the minute and hour tiers (per GPU, per user, users' peaks) for [h0, h1)."""
    rng = f"bucket_ts >= {h0} AND bucket_ts < {h1}"
    gpu_cols = ", ".join(GPU_TIER_COLUMNS)
    for table in ("gpu_minute", "gpu_hour", "user_hour", "user_peak_hour"):
        con.execute(f"DELETE FROM {table} WHERE {rng}")
    con.execute(
        f"""INSERT INTO gpu_minute ({gpu_cols})
        SELECT host, gpu_index, (floor(ts / 60) * 60)::BIGINT AS bucket_ts,
            max(uuid), max(name), {gpu_fact_aggs()}
        FROM ({raw_gpu_sql(h0, h1, busy_util_percent)}) GROUP BY 1, 2, 3"""
    )
    con.execute(
        f"""INSERT INTO gpu_hour ({gpu_cols})
        SELECT host, gpu_index, bucket_ts // 3600 * 3600 AS b, max(gpu_uuid), max(gpu_model),
            {_merge_aggs(GPU_SUM_FACTS, GPU_MAX_FACTS)}
        FROM gpu_minute WHERE {rng} GROUP BY host, gpu_index, b"""
    )
    con.execute(
        f"""INSERT INTO user_hour ({", ".join(USER_TIER_COLUMNS)})
        SELECT user_name, host, gpu_index, (floor(ts / 3600) * 3600)::BIGINT AS b,
            {user_fact_aggs()}
        FROM ({raw_user_sql(h0, h1, busy_util_percent)}) GROUP BY 1, 2, 3, 4"""
    )
    # Peak GPUs held at once: per host the most GPUs held in any sample of a minute, summed
    # over hosts, the highest minute of the hour.
    con.execute(
        f"""INSERT INTO user_peak_hour (user_name, bucket_ts, peak_gpus)
        WITH per_ts AS (
            SELECT user_name, host, ts, count(DISTINCT gpu_index) AS k
            FROM ({raw_user_sql(h0, h1, busy_util_percent)}) GROUP BY ALL
        ), per_min AS (
            SELECT user_name, host, floor(ts / 60)::BIGINT AS minute, max(k) AS k
            FROM per_ts GROUP BY ALL
        ), users_min AS (
            SELECT user_name, minute, sum(k) AS k FROM per_min GROUP BY ALL
        )
        SELECT user_name, minute * 60 // 3600 * 3600 AS b, max(k)::INTEGER
        FROM users_min GROUP BY user_name, b"""
    )


def rollup_days(con: Any, day_ranges: Sequence[tuple[int, int]]) -> None:
    """Recompute the day tier for local days given as [start ts, next day's start ts)."""
    if not day_ranges:
        return
    starts = [int(a) for a, _ in day_ranges]
    ends = [int(b) for _, b in day_ranges]
    lo, hi = min(starts), max(ends)
    days = "(SELECT unnest(?::BIGINT[]) AS day_ts, unnest(?::BIGINT[]) AS end_ts)"
    join = f"JOIN {days} d ON t.bucket_ts >= d.day_ts AND t.bucket_ts < d.end_ts"
    where = f"WHERE t.bucket_ts >= {lo} AND t.bucket_ts < {hi}"
    for table in ("gpu_day", "user_day", "user_peak_day"):
        con.execute(
            f"DELETE FROM {table} WHERE bucket_ts IN (SELECT unnest(?::BIGINT[]))", [starts]
        )
    con.execute(
        f"""INSERT INTO gpu_day ({", ".join(GPU_TIER_COLUMNS)})
        SELECT t.host, t.gpu_index, d.day_ts, max(t.gpu_uuid), max(t.gpu_model),
            {_merge_aggs(GPU_SUM_FACTS, GPU_MAX_FACTS)}
        FROM gpu_hour t {join} {where} GROUP BY t.host, t.gpu_index, d.day_ts""",
        [starts, ends],
    )
    con.execute(
        f"""INSERT INTO user_day ({", ".join(USER_TIER_COLUMNS)})
        SELECT t.user_name, t.host, t.gpu_index, d.day_ts, {_merge_aggs(USER_SUM_FACTS)}
        FROM user_hour t {join} {where} GROUP BY t.user_name, t.host, t.gpu_index, d.day_ts""",
        [starts, ends],
    )
    con.execute(
        f"""INSERT INTO user_peak_day (user_name, bucket_ts, peak_gpus)
        SELECT t.user_name, d.day_ts, max(t.peak_gpus)
        FROM user_peak_hour t {join} {where} GROUP BY t.user_name, d.day_ts""",
        [starts, ends],
    )


def get_state(con: Any) -> dict[str, str]:
    return dict(con.execute("SELECT key, value FROM rollup_state").fetchall())


def set_state(con: Any, key: str, value: str) -> None:
    con.execute(
        "INSERT INTO rollup_state VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )


def mark_dirty(con: Any, hours: Sequence[int]) -> None:
    con.execute(
        "INSERT INTO rollup_dirty SELECT DISTINCT unnest(?::BIGINT[]) ON CONFLICT DO NOTHING",
        [list(hours)],
    )


def dirty_hours(con: Any) -> list[int]:
    return [
        int(r[0]) for r in con.execute("SELECT hour_ts FROM rollup_dirty ORDER BY 1").fetchall()
    ]


def clear_dirty(con: Any, h0: int, h1: int) -> None:
    con.execute("DELETE FROM rollup_dirty WHERE hour_ts >= ? AND hour_ts < ?", [h0, h1])


def raw_span(con: Any) -> tuple[float | None, float | None]:
    row = con.execute("SELECT min(ts), max(ts) FROM host_samples").fetchone()
    return row[0], row[1]


def hour_span(con: Any) -> tuple[int | None, int | None]:
    row = con.execute("SELECT min(bucket_ts), max(bucket_ts) FROM gpu_hour").fetchone()
    return row[0], row[1]


def safe_raw_cutoff(con: Any, raw_before: float) -> float:
    """The raw cut-off retention may use: never past the rollup watermark or a dirty hour
    (once the warehouse has run), on an hour boundary; recorded as ``raw_kept_from_ts``."""
    state = get_state(con)
    cutoff = raw_before
    if "watermark_ts" in state:
        cutoff = min(cutoff, float(state["watermark_ts"]))
        dirty = con.execute("SELECT min(hour_ts) FROM rollup_dirty").fetchone()[0]
        if dirty is not None:
            cutoff = min(cutoff, float(dirty))
    cutoff = math.floor(cutoff / 3600) * 3600
    kept = float(state.get("raw_kept_from_ts", "-inf"))
    if cutoff > kept:
        set_state(con, "raw_kept_from_ts", repr(float(cutoff)))
    return cutoff


def prune_tiers(con: Any, minute_before: float, hour_before: float) -> dict[str, int]:
    deleted = {}
    for table, before in (
        ("gpu_minute", minute_before),
        ("gpu_hour", hour_before),
        ("user_hour", hour_before),
        ("user_peak_hour", hour_before),
    ):
        n = con.execute(f"DELETE FROM {table} WHERE bucket_ts < ?", [before]).fetchall()
        deleted[table] = int(n[0][0])
    return deleted


# -- report facts ------------------------------------------------------------------------------


def _calendar(buckets: Sequence[tuple[int, str]]) -> tuple[str, list[Any]]:
    sql = "(SELECT unnest(?::BIGINT[]) AS bucket_ts, unnest(?::VARCHAR[]) AS period_start)"
    return sql, [[int(b) for b, _ in buckets], [label for _, label in buckets]]


def tier_facts(con: Any, tier: str, by: str, buckets: Sequence[tuple[int, str]]) -> list[dict]:
    """Fact rows (period_start, key, facts...) summed from the ``tier`` tier ('hour' or 'day')
    over the buckets (bucket start ts -> period label)."""
    if not buckets:
        return []
    cal, params = _calendar(buckets)
    lo, hi = min(b for b, _ in buckets), max(b for b, _ in buckets)
    if by in GPU_KEY_SQL:
        sql = f"""SELECT c.period_start, {GPU_KEY_SQL[by]} AS key,
                {_merge_aggs(GPU_SUM_FACTS, GPU_MAX_FACTS)}
            FROM gpu_{tier} t JOIN {cal} c ON t.bucket_ts = c.bucket_ts
            WHERE t.bucket_ts >= {lo} AND t.bucket_ts <= {hi} GROUP BY 1, 2"""
        return _dicts(con.execute(sql, params))
    if by not in USER_KEY_SQL:
        raise ValueError(f"unknown grouping {by!r}")
    sql = f"""SELECT c.period_start, {USER_KEY_SQL[by]} AS key, {_merge_aggs(USER_SUM_FACTS)}
        FROM user_{tier} t JOIN {cal} c ON t.bucket_ts = c.bucket_ts
        LEFT JOIN user_mapping m ON m.user_name = t.user_name
        WHERE t.bucket_ts >= {lo} AND t.bucket_ts <= {hi} GROUP BY 1, 2"""
    rows = _dicts(con.execute(sql, params))
    if by == "user":
        peaks = con.execute(
            f"""SELECT c.period_start, t.user_name, max(t.peak_gpus)
            FROM user_peak_{tier} t JOIN {cal} c ON t.bucket_ts = c.bucket_ts
            WHERE t.bucket_ts >= {lo} AND t.bucket_ts <= {hi} GROUP BY 1, 2""",
            params,
        ).fetchall()
        peak = {(p, u): k for p, u, k in peaks}
        for r in rows:
            r["peak_gpus"] = peak.get((r["period_start"], r["key"]))
    return rows


def raw_facts(
    con: Any, by: str, hour_buckets: Sequence[tuple[int, str]], busy_util_percent: float
) -> list[dict]:
    """The same fact rows straight from the raw samples (no tiers): for checks and benchmarks.
    Users' peaks are not computed here."""
    if not hour_buckets:
        return []
    cal, params = _calendar(hour_buckets)
    t0 = min(b for b, _ in hour_buckets)
    t1 = max(b for b, _ in hour_buckets) + 3600
    if by in GPU_KEY_SQL:
        src, aggs = raw_gpu_sql(t0, t1, busy_util_percent), gpu_fact_aggs()
        key, join = GPU_KEY_SQL[by].replace("t.gpu_model", "t.name"), ""
    else:
        src, aggs = raw_user_sql(t0, t1, busy_util_percent), user_fact_aggs()
        key, join = USER_KEY_SQL[by], "LEFT JOIN user_mapping m ON m.user_name = t.user_name"
    sql = f"""SELECT c.period_start, {key} AS key, {aggs}
        FROM ({src}) t JOIN {cal} c ON (floor(t.ts / 3600) * 3600)::BIGINT = c.bucket_ts
        {join} GROUP BY 1, 2"""
    return _dicts(con.execute(sql, params))


def _dicts(cur: Any) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def user_mapping(con: Any) -> list[tuple[str, str | None, str | None]]:
    return con.execute(
        "SELECT user_name, person, group_name FROM user_mapping ORDER BY user_name"
    ).fetchall()


def set_user_mapping(con: Any, user_name: str, person: str | None, group_name: str | None) -> None:
    if person is None and group_name is None:
        con.execute("DELETE FROM user_mapping WHERE user_name = ?", [user_name])
        return
    con.execute(
        "INSERT INTO user_mapping VALUES (?, ?, ?) ON CONFLICT (user_name) DO UPDATE SET"
        " person = excluded.person, group_name = excluded.group_name",
        [user_name, person, group_name],
    )
