"""The warehouse on both backends: rolling raw samples up into the minute/hour/day tiers, and
the fact queries reports are computed from. SQL only; what the facts mean is in
gpufleet.warehouse.facts, how days and periods fall in gpufleet.warehouse.calendar.

The SQL is written once for DuckDB and PostgreSQL: it keeps to what both dialects share
(``FILTER``, ``unnest`` of array parameters, ``ON CONFLICT``, positional ``GROUP BY``, casts
to ``float8``/``bigint``); the placeholder is ``?`` and becomes ``%s`` on PostgreSQL
(``Dialect.sql``). Every function takes a connection (a DuckDB connection or a psycopg
cursor) and runs inside the caller's transaction (the store's writer for rollups). A rollup
of hours [h0, h1) deletes and recomputes those hours from raw (minute from raw, hour from
minute, user facts and peaks from raw), then recomputes each local day the hours touch from
the hour tier: re-running it gives identical tiers.

``WarehouseMixin`` is the store side (rollup planning and chunking, retention, report reads,
the user mapping), shared by both backends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpufleet.warehouse.facts import (
    GPU_MAX_FACTS,
    GPU_SUM_FACTS,
    HIST_BUCKETS,
    HIST_COLUMNS,
    HIST_WIDTH_PERCENT,
    USER_SUM_FACTS,
)

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Dialect:
    name: str
    param: str  # the driver's placeholder

    def sql(self, text: str) -> str:
        """Warehouse SQL (written with ``?``) in this dialect."""
        return text if self.param == "?" else text.replace("?", self.param)


DUCKDB = Dialect("duckdb", "?")
POSTGRES = Dialect("postgres", "%s")


def _f(x: float) -> str:
    """A float literal for SQL (thresholds come from validated settings)."""
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x}")
    return repr(float(x))


def _floor_to(expr: str, seconds: int) -> str:
    """The bucket start (bigint) of a Unix time expression."""
    return f"CAST(floor({expr} / {seconds}) * {seconds} AS BIGINT)"


def raw_gpu_sql(t0: float, t1: float, busy_util_percent: float) -> str:
    """One row per GPU sample in [t0, t1) with its weight ``w`` (the sample's seconds)."""
    lo, hi, thr = _f(t0), _f(t1), _f(busy_util_percent)
    return f"""
        SELECT g.host, g.gpu_index, g.ts, g.uuid, g.name,
            CAST(g.utilization_gpu_percent AS float8) AS u,
            CASE WHEN g.utilization_gpu_percent IS NOT NULL THEN CAST(least(
                floor(CAST(g.utilization_gpu_percent AS float8) / {HIST_WIDTH_PERCENT!r}),
                {HIST_BUCKETS - 1}) AS INTEGER) END AS hb,
            CAST(g.memory_used_bytes AS float8) AS m, CAST(g.power_watts AS float8) AS p,
            g.processes > 0 AS held, g.processes AS np,
            coalesce(g.utilization_gpu_percent > {thr}, false) AS busy,
            CAST(h.interval_seconds AS float8) AS w
        FROM gpu_samples g JOIN host_samples h ON g.host = h.host AND g.ts = h.ts
        WHERE g.ts >= {lo} AND g.ts < {hi} AND h.ts >= {lo} AND h.ts < {hi}
    """


def _user_procs_sql(t0: float, t1: float) -> str:
    """One row per (user, GPU sample) from the processes: the user's memory on the GPU and
    ``n`` the number of users sharing it at that sample."""
    lo, hi = _f(t0), _f(t1)
    return f"""
        SELECT pr.*, count(*) OVER (PARTITION BY pr.host, pr.ts, pr.gpu_index) AS n
        FROM (
            SELECT host, ts, gpu_index, coalesce(user_name, '{UNKNOWN_USER}') AS user_name,
                CAST(sum(coalesce(gpu_memory_bytes, 0)) AS float8) AS um
            FROM process_samples WHERE ts >= {lo} AND ts < {hi} GROUP BY 1, 2, 3, 4
        ) pr
    """


def raw_user_sql(t0: float, t1: float, busy_util_percent: float) -> str:
    """One row per (user, GPU sample): ``w`` the user's share of the sample's seconds, ``ws``
    the whole sample's seconds, ``um`` the user's processes' memory on that GPU, ``n`` the
    users sharing the GPU."""
    return f"""
        SELECT pr.user_name, pr.host, pr.gpu_index, pr.ts, pr.um, g.u, g.hb, g.p, g.busy,
            pr.n, g.w AS ws, g.w / pr.n AS w
        FROM ({_user_procs_sql(t0, t1)}) pr
        JOIN ({raw_gpu_sql(t0, t1, busy_util_percent)}) g
            ON pr.host = g.host AND pr.ts = g.ts AND pr.gpu_index = g.gpu_index
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
        max(u) AS util_max_percent, CAST(max(m) AS BIGINT) AS memory_max_bytes,
        max(p) AS power_max_watts
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
    """Merged facts; sums as float8 (PostgreSQL sums a bigint into numeric)."""
    return ", ".join(
        [f"CAST(sum({c}) AS float8) AS {c}" for c in sum_facts]
        + [f"max({c}) AS {c}" for c in max_facts]
    )


# -- rollup ------------------------------------------------------------------------------------


def _pivot_hist(weight: str) -> str:
    return ", ".join(
        f"coalesce(sum({weight}) FILTER (WHERE hb = {i}), 0)" for i in range(len(HIST_COLUMNS))
    )


PRE_TABLE = "wh_rollup_pre"  # scratch tables of one rollup (temporary, dropped at its end)
MULTI_TABLE = "wh_rollup_multi"
NO_HB = HIST_BUCKETS  # the histogram bucket code of a sample without a utilisation reading


def _procs_sql(lo: str, hi: str) -> str:
    return f"""SELECT host, ts, gpu_index, coalesce(user_name, '{UNKNOWN_USER}') AS user_name,
            coalesce(gpu_memory_bytes, 0) AS mem
        FROM process_samples WHERE ts >= {lo} AND ts < {hi}"""


def _multi_sql(lo: str, hi: str) -> str:
    """GPU samples with several processes (``processes`` counts a sample's process rows on
    that GPU: rows.py writes both from the same list)."""
    return f"""SELECT host, ts, gpu_index FROM gpu_samples
        WHERE ts >= {lo} AND ts < {hi} AND processes > 1"""


def multi_owner_sql(h0: float, h1: float) -> str:
    """GPU samples with several processes: their number ``k``, least and greatest user, and
    memory (few rows: only these samples' processes are grouped)."""
    lo, hi = _f(h0), _f(h1)
    return f"""
        SELECT q.host, q.ts, q.gpu_index, count(*) AS k, min(q.user_name) AS u1,
            max(q.user_name) AS u2, CAST(sum(q.mem) AS float8) AS mem
        FROM ({_procs_sql(lo, hi)}) q
        WHERE (q.host, q.ts, q.gpu_index) IN ({_multi_sql(lo, hi)})
        GROUP BY 1, 2, 3
    """


def pre_rollup_sql(h0: float, h1: float, busy_util_percent: float, multi: str = MULTI_TABLE) -> str:
    """The one pass over raw: each GPU sample joined to its host sample (the seconds) and to
    its owner, aggregated per (host, GPU, minute, code, owner) with a few sums; ``code``
    packs the histogram bucket (``NO_HB`` without a reading), held, busy and shared (several
    users) into one integer. The owner of a GPU sample with one process is that process's
    row's user (no grouping of the process rows: a sample with ``processes = 1`` matches
    exactly one row); with several processes, ``multi_owner_sql`` (``multi``) tells one user
    (the owner) from several (shared, no owner; their per-user facts are computed apart,
    ``shared_user_rows_sql``). ``umw``: the owner's processes' memory x seconds."""
    lo, hi = _f(h0), _f(h1)
    keys = "o.host = g.host AND o.ts = g.ts AND o.gpu_index = g.gpu_index"
    return f"""
        SELECT g.host, g.gpu_index, {_floor_to("g.ts", 60)} AS b,
            coalesce(g.hb, {NO_HB}) * 8 + CAST(g.held AS INTEGER) * 4
                + CAST(g.busy AS INTEGER) * 2 + CAST(coalesce(o.u1 <> o.u2, false) AS INTEGER)
                AS code,
            CASE WHEN o.u1 = o.u2 THEN o.u1 END AS usr,
            max(g.uuid) AS uuid, max(g.name) AS name,
            count(*) AS n, sum(g.w) AS sw, sum(g.u * g.w) AS uw, sum(g.m * g.w) AS mw,
            sum(g.p * g.w) AS pw, sum(o.mem * g.w) AS umw, max(g.u) AS mu, max(g.m) AS mm,
            max(g.p) AS mp
        FROM ({raw_gpu_sql(h0, h1, busy_util_percent)}) g
        LEFT JOIN (
            SELECT host, ts, gpu_index, 1 AS k, user_name AS u1, user_name AS u2,
                CAST(mem AS float8) AS mem
            FROM ({_procs_sql(lo, hi)}) q
            UNION ALL
            SELECT host, ts, gpu_index, k, u1, u2, mem FROM {multi}
        ) o ON {keys} AND o.k = g.np
        GROUP BY 1, 2, 3, 4, 5
    """


# The flags packed in the pre-aggregated rows' ``code``.
_HB, _HELD, _BUSY, _SHARED = "floor(code / 8.0)", "code % 8 >= 4", "code % 4 >= 2", "code % 2 = 1"
_HAS_U = f"code < {NO_HB * 8}"


def _sum_where(cond: str, weight: str = "sw") -> str:
    """A filtered sum as a sum of a CASE (0 where the condition fails: the same sum, and
    faster in DuckDB than ``FILTER`` over many groups)."""
    return f"sum(CASE WHEN {cond} THEN {weight} ELSE 0 END)"


def minute_rollup_sql(pre: str = PRE_TABLE) -> str:
    """GPU facts per minute, in GPU_TIER_COLUMNS order, from the pre-aggregated rows
    (``pre_rollup_sql``): the same sums as ``gpu_fact_aggs`` over the raw rows, added in
    another order."""
    hist = ", ".join(
        _sum_where(f"code >= {8 * i} AND code < {8 * i + 8}") for i in range(len(HIST_COLUMNS))
    )
    return f"""
        SELECT host, gpu_index, b, max(uuid), max(name),
            sum(n), sum(sw), {_sum_where(_HAS_U)}, coalesce(sum(uw), 0),
            {_sum_where(_BUSY)}, {_sum_where(_HELD)}, {_sum_where(f"{_HELD} AND NOT ({_BUSY})")},
            coalesce(sum(mw), 0), coalesce(sum(pw), 0), {hist},
            max(mu), CAST(max(mm) AS BIGINT), max(mp)
        FROM {pre} GROUP BY 1, 2, 3
    """


def shared_user_rows_sql(h0: float, h1: float, busy_util_percent: float) -> str:
    """Per-user rows of the GPU samples several users share (``n`` users, each with an equal
    share), summed per (user, host, GPU, hour, histogram bucket, busy, has a reading, n)."""
    lo, hi = _f(h0), _f(h1)
    return f"""
        WITH procs AS ({_procs_sql(lo, hi)}), pu AS (
            SELECT q.host, q.ts, q.gpu_index, q.user_name, CAST(sum(q.mem) AS float8) AS um
            FROM procs q JOIN ({_multi_sql(lo, hi)}) s
                ON s.host = q.host AND s.ts = q.ts AND s.gpu_index = q.gpu_index
            GROUP BY 1, 2, 3, 4
        ), p AS (
            SELECT pu.*, count(*) OVER (PARTITION BY pu.host, pu.ts, pu.gpu_index) AS n FROM pu
        )
        SELECT p.user_name, g.host, g.gpu_index, {_floor_to("g.ts", 3600)} AS b, g.hb, g.busy,
            g.u IS NOT NULL AS has_u, p.n, sum(g.w) AS sw, sum(g.u * g.w) AS uw,
            sum(p.um * g.w) AS mw, sum(g.p * g.w) AS pw
        FROM p JOIN ({raw_gpu_sql(h0, h1, busy_util_percent)}) g
            ON p.host = g.host AND p.ts = g.ts AND p.gpu_index = g.gpu_index
        WHERE p.n > 1
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    """


def user_hour_rollup_sql(
    h0: float, h1: float, busy_util_percent: float, shared: bool, pre: str = PRE_TABLE
) -> str:
    """User facts per hour, in USER_TIER_COLUMNS order. Samples with one user (n = 1) come
    from the pre-aggregated rows; with ``shared`` (some sample in the range has several
    users), those samples' per-user rows are added (``shared_user_rows_sql``). Then the 20
    histogram columns and the filtered sums are pivoted out, the share 1/n applied."""
    single = f"""
        SELECT usr AS user_name, host, gpu_index, b - mod(b, 3600) AS b,
            CAST({_HB} AS INTEGER) AS hb, {_BUSY} AS busy, {_HAS_U} AS has_u,
            1 AS n, sum(sw) AS sw, sum(uw) AS uw, sum(umw) AS mw, sum(pw) AS pw
        FROM {pre} WHERE usr IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6, 7, 8"""
    rows = single
    if shared:
        rows += f" UNION ALL SELECT * FROM ({shared_user_rows_sql(h0, h1, busy_util_percent)}) s"
    return f"""
        SELECT user_name, host, gpu_index, b,
            sum(sw / n),
            coalesce(sum(sw / n) FILTER (WHERE has_u), 0), coalesce(sum(uw / n), 0),
            coalesce(sum(sw / n) FILTER (WHERE busy), 0),
            coalesce(sum(sw / n) FILTER (WHERE NOT busy), 0),
            coalesce(sum(mw), 0), coalesce(sum(pw / n), 0), {_pivot_hist("sw / n")}
        FROM ({rows}) x GROUP BY 1, 2, 3, 4
    """


def peak_sql(h0: float, h1: float, pre: str = PRE_TABLE) -> str:
    """Users' peak GPUs held at once per hour, from the pre-aggregated rows where they answer
    it: per host the most GPUs a user held in one sample of a minute, summed over hosts, the
    highest minute of the hour. Where a user held each of their GPUs on a host alone in
    every sample of the host's minute (``n`` = the host's samples in that minute), the most
    at once is simply how many GPUs that is. Host-minutes where that fails for some user, or
    with a shared GPU sample, are counted from their process rows sample by sample."""
    lo, hi = _f(h0), _f(h1)
    b_ts = _floor_to("p.ts", 60)
    return f"""
        WITH hm AS (
            SELECT host, {_floor_to("ts", 60)} AS b, count(*) AS hn FROM host_samples
            WHERE ts >= {lo} AND ts < {hi} GROUP BY 1, 2
        ), ug AS (
            SELECT usr, host, gpu_index, b, sum(n) AS n FROM {pre}
            WHERE usr IS NOT NULL GROUP BY 1, 2, 3, 4
        ), uh AS (
            SELECT usr, host, b, count(*) AS k, min(n) AS n FROM ug GROUP BY 1, 2, 3
        ), slow_hm AS (
            SELECT uh.host, uh.b FROM uh JOIN hm ON hm.host = uh.host AND hm.b = uh.b
            WHERE uh.n < hm.hn
            UNION
            SELECT host, b FROM {pre} WHERE {_SHARED}
        ), per_min AS (
            SELECT usr AS user_name, host, b AS minute_ts, k FROM uh
            WHERE NOT EXISTS (SELECT 1 FROM slow_hm s WHERE s.host = uh.host AND s.b = uh.b)
            UNION ALL
            SELECT user_name, host, minute_ts, max(k) FROM (
                SELECT coalesce(p.user_name, '{UNKNOWN_USER}') AS user_name, p.host, p.ts,
                    {b_ts} AS minute_ts, count(DISTINCT p.gpu_index) AS k
                FROM process_samples p JOIN slow_hm s ON s.host = p.host AND s.b = {b_ts}
                WHERE p.ts >= {lo} AND p.ts < {hi} GROUP BY 1, 2, 3, 4
            ) x GROUP BY 1, 2, 3
        ), users_min AS (
            SELECT user_name, minute_ts, sum(k) AS k FROM per_min GROUP BY 1, 2
        )
        SELECT user_name, minute_ts - mod(minute_ts, 3600) AS b, CAST(max(k) AS INTEGER)
        FROM users_min GROUP BY 1, 2"""


def rollup_hours(con: Any, h0: int, h1: int, busy_util_percent: float, d: Dialect = DUCKDB) -> None:
    """Recompute the minute and hour tiers (per GPU, per user, users' peaks) for [h0, h1).

    One pass over the GPU samples (joined to their host sample and their owner) into a small
    scratch table (``pre_rollup_sql``: per GPU-minute a few rows); the GPU facts per minute
    and the single-user facts per hour are summed from it, the hour tier from the minute
    tier. Samples several users share (rare) are read again, alone, for their per-user rows.
    Users' peaks are counted from the process rows alone (a process always names a GPU of
    its sample, the wire format checks it).

    On PostgreSQL nested-loop joins are off for these statements: freshly written raw
    partitions often have no statistics yet, and the planner, expecting a handful of rows,
    would join millions of GPU samples to their owners row by row."""
    rng = f"bucket_ts >= {int(h0)} AND bucket_ts < {int(h1)}"
    if d is POSTGRES:
        nestloop = con.execute("SELECT current_setting('enable_nestloop')").fetchone()[0]
        con.execute("SELECT set_config('enable_nestloop', 'off', true)")
    gpu_cols = ", ".join(GPU_TIER_COLUMNS)
    for table in ("gpu_minute", "gpu_hour", "user_hour", "user_peak_hour"):
        con.execute(f"DELETE FROM {table} WHERE {rng}")
    for table in (PRE_TABLE, MULTI_TABLE):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(f"CREATE TEMPORARY TABLE {MULTI_TABLE} AS {multi_owner_sql(h0, h1)}")
    con.execute(
        f"CREATE TEMPORARY TABLE {PRE_TABLE} AS {pre_rollup_sql(h0, h1, busy_util_percent)}"
    )
    con.execute(f"INSERT INTO gpu_minute ({gpu_cols}) {minute_rollup_sql()}")
    con.execute(
        f"""INSERT INTO gpu_hour ({gpu_cols})
        SELECT host, gpu_index, bucket_ts - mod(bucket_ts, 3600) AS b, max(gpu_uuid),
            max(gpu_model), {_merge_aggs(GPU_SUM_FACTS, GPU_MAX_FACTS)}
        FROM gpu_minute WHERE {rng} GROUP BY 1, 2, 3"""
    )
    shared = con.execute(f"SELECT count(*) FROM {MULTI_TABLE} WHERE u1 <> u2").fetchone()[0] > 0
    con.execute(
        f"INSERT INTO user_hour ({', '.join(USER_TIER_COLUMNS)}) "
        f"{user_hour_rollup_sql(h0, h1, busy_util_percent, shared)}"
    )
    con.execute(f"INSERT INTO user_peak_hour (user_name, bucket_ts, peak_gpus) {peak_sql(h0, h1)}")
    for table in (PRE_TABLE, MULTI_TABLE):
        con.execute(f"DROP TABLE {table}")
    if d is POSTGRES:
        con.execute(d.sql("SELECT set_config('enable_nestloop', ?, true)"), [nestloop])


DAY_KEYS = "|exact-midnight"  # how day-tier rows are keyed (see rollup's day_tz state)


def _prefixed(cols: str) -> str:
    return ", ".join(f"t.{c.strip()}" for c in cols.split(","))


def rollup_days(con: Any, day_ranges: Sequence[tuple[int, int]], d: Dialect = DUCKDB) -> None:
    """Recompute the day tier for local days given as [start ts, next day's start ts)."""
    if not day_ranges:
        return
    starts = [int(a) for a, _ in day_ranges]
    ends = [int(b) for _, b in day_ranges]
    lo, hi = min(starts), max(ends)
    days = "(SELECT unnest(?::BIGINT[]) AS day_ts, unnest(?::BIGINT[]) AS end_ts)"
    join = f"JOIN {days} d ON t.bucket_ts >= d.day_ts AND t.bucket_ts < d.end_ts"
    where = f"WHERE t.bucket_ts >= {lo} AND t.bucket_ts < {hi}"
    for table in ("gpu_day", "user_day", "user_peak_day", "user_total_day"):
        con.execute(
            d.sql(f"DELETE FROM {table} WHERE bucket_ts IN (SELECT unnest(?::BIGINT[]))"),
            [starts],
        )
    # GPU facts: the hours inside the day from the hour tier; in a zone whose offset is not a
    # whole number of hours (Asia/Kolkata, Asia/Kathmandu), the hour that straddles midnight
    # from the minute tier, minute by minute on each side of it
    cols = ", ".join(GPU_TIER_COLUMNS)
    inside = "t.bucket_ts >= d.day_ts AND t.bucket_ts + 3600 <= d.end_ts"
    source = f"SELECT d.day_ts AS day_ts, {_prefixed(cols)} FROM gpu_hour t JOIN {days} d ON {inside} {where}"
    args = [starts, ends]
    if any(a % 3600 or b % 3600 for a, b in zip(starts, ends, strict=True)):
        hour = "(t.bucket_ts - mod(t.bucket_ts, 3600))"
        edge = f"({hour} < d.day_ts OR {hour} + 3600 > d.end_ts)"
        source += (
            f" UNION ALL SELECT d.day_ts AS day_ts, {_prefixed(cols)} FROM gpu_minute t "
            f"{join} {where} AND {edge}"
        )
        args = [starts, ends, starts, ends]
    con.execute(
        d.sql(f"""INSERT INTO gpu_day ({cols})
        SELECT t.host, t.gpu_index, t.day_ts, max(t.gpu_uuid), max(t.gpu_model),
            {_merge_aggs(GPU_SUM_FACTS, GPU_MAX_FACTS)}
        FROM ({source}) t GROUP BY t.host, t.gpu_index, t.day_ts"""),
        args,
    )
    con.execute(
        d.sql(f"""INSERT INTO user_day ({", ".join(USER_TIER_COLUMNS)})
        SELECT t.user_name, t.host, t.gpu_index, d.day_ts, {_merge_aggs(USER_SUM_FACTS)}
        FROM user_hour t {join} {where} GROUP BY t.user_name, t.host, t.gpu_index, d.day_ts"""),
        [starts, ends],
    )
    con.execute(
        d.sql(f"""INSERT INTO user_total_day (user_name, bucket_ts, {", ".join(USER_SUM_FACTS)})
        SELECT user_name, bucket_ts, {_merge_aggs(USER_SUM_FACTS)}
        FROM user_day WHERE bucket_ts IN (SELECT unnest(?::BIGINT[])) GROUP BY 1, 2"""),
        [starts],
    )
    con.execute(
        d.sql(f"""INSERT INTO user_peak_day (user_name, bucket_ts, peak_gpus)
        SELECT t.user_name, d.day_ts, max(t.peak_gpus)
        FROM user_peak_hour t {join} {where} GROUP BY t.user_name, d.day_ts"""),
        [starts, ends],
    )


def get_state(con: Any) -> dict[str, str]:
    return dict(con.execute("SELECT key, value FROM rollup_state").fetchall())


def set_state(con: Any, key: str, value: str, d: Dialect = DUCKDB) -> None:
    con.execute(
        d.sql(
            "INSERT INTO rollup_state VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        ),
        [key, value],
    )


# Every write that changes what a report reads (a rollup's hours and days, tier retention, the
# user mapping) bumps the tiers' version and notes the span of time it changed, so a cache of
# reports can keep an answer whose span no change touched (``tiers_changed_since``). The last
# KEPT_CHANGES changes are kept, as "version:lo:hi;..." (Unix seconds; -inf/inf: unbounded).
TIERS_VERSION = "tiers_version"
TIERS_CHANGES = "tiers_changes"
KEPT_CHANGES = 64


def note_tiers_changed(
    con: Any, lo: float = -math.inf, hi: float = math.inf, d: Dialect = DUCKDB
) -> int:
    """Record, in the caller's transaction, that the tiers changed over [lo, hi); the new
    version."""
    state = dict(
        con.execute(
            d.sql("SELECT key, value FROM rollup_state WHERE key IN (?, ?)"),
            [TIERS_VERSION, TIERS_CHANGES],
        ).fetchall()
    )
    version = int(state.get(TIERS_VERSION, "0")) + 1
    kept = [c for c in state.get(TIERS_CHANGES, "").split(";") if c][-(KEPT_CHANGES - 1) :]
    kept.append(f"{version}:{float(lo)!r}:{float(hi)!r}")
    set_state(con, TIERS_VERSION, str(version), d)
    set_state(con, TIERS_CHANGES, ";".join(kept), d)
    return version


def tiers_version(state: dict[str, str]) -> int:
    """The tiers' version in a ``get_state`` mapping (0: never changed since it was kept)."""
    return int(state.get(TIERS_VERSION, "0"))


def tiers_changed_since(state: dict[str, str], version: int, lo: float, hi: float) -> bool:
    """Whether a change after ``version`` may have touched [lo, hi): True when one did, or
    when the changes kept no longer reach back to ``version`` (so nothing can be said)."""
    now = tiers_version(state)
    if now == version:
        return False
    if now < version:  # another database, or state rewritten: trust nothing
        return True
    spans: dict[int, tuple[float, float]] = {}
    for change in state.get(TIERS_CHANGES, "").split(";"):
        if change:
            v, a, b = change.split(":")
            spans[int(v)] = (float(a), float(b))
    for later in range(version + 1, now + 1):
        if later not in spans:
            return True
        start, end = spans[later]
        if start < hi and lo < end:
            return True
    return False


def mark_dirty(con: Any, hours: Sequence[int], d: Dialect = DUCKDB) -> None:
    con.execute(
        d.sql(
            "INSERT INTO rollup_dirty SELECT DISTINCT unnest(?::BIGINT[]) ON CONFLICT DO NOTHING"
        ),
        [[int(h) for h in hours]],
    )


def dirty_hours(con: Any) -> list[int]:
    return [
        int(r[0]) for r in con.execute("SELECT hour_ts FROM rollup_dirty ORDER BY 1").fetchall()
    ]


def clear_dirty(con: Any, h0: int, h1: int) -> None:
    con.execute(f"DELETE FROM rollup_dirty WHERE hour_ts >= {int(h0)} AND hour_ts < {int(h1)}")


def raw_span(con: Any) -> tuple[float | None, float | None]:
    row = con.execute("SELECT min(ts), max(ts) FROM host_samples").fetchone()
    return row[0], row[1]


def hour_span(con: Any) -> tuple[int | None, int | None]:
    row = con.execute("SELECT min(bucket_ts), max(bucket_ts) FROM gpu_hour").fetchone()
    return row[0], row[1]


def safe_raw_cutoff(con: Any, raw_before: float, d: Dialect = DUCKDB) -> float:
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
        set_state(con, "raw_kept_from_ts", repr(float(cutoff)), d)
    return cutoff


def _delete(con: Any, sql: str) -> int:
    """Run a DELETE; the number of rows deleted (DuckDB returns it as a row)."""
    cur = con.execute(sql)
    rowcount = getattr(cur, "rowcount", -1)
    if isinstance(rowcount, int) and rowcount >= 0:
        return rowcount
    return int(cur.fetchall()[0][0])


def prune_tiers(
    con: Any, minute_before: float, hour_before: float, d: Dialect = DUCKDB
) -> dict[str, int]:
    deleted = {}
    for table, before in (
        ("gpu_minute", minute_before),
        ("gpu_hour", hour_before),
        ("user_hour", hour_before),
        ("user_peak_hour", hour_before),
    ):
        deleted[table] = _delete(con, f"DELETE FROM {table} WHERE bucket_ts < {_f(before)}")
    if any(deleted[t] for t in ("gpu_hour", "user_hour", "user_peak_hour")):
        note_tiers_changed(con, hi=hour_before, d=d)  # the minute tier feeds no report
    return deleted


# -- report facts ------------------------------------------------------------------------------


def _calendar(buckets: Sequence[tuple[int, str]]) -> tuple[str, list[Any]]:
    sql = "(SELECT unnest(?::BIGINT[]) AS bucket_ts, unnest(?::VARCHAR[]) AS period_start)"
    return sql, [[int(b) for b, _ in buckets], [label for _, label in buckets]]


def tier_facts(
    con: Any, tier: str, by: str, buckets: Sequence[tuple[int, str]], d: Dialect = DUCKDB
) -> list[dict]:
    """Fact rows (period_start, key, facts...) summed from the ``tier`` tier ('hour' or 'day')
    over the buckets (bucket start ts -> period label)."""
    if not buckets:
        return []
    if tier not in ("hour", "day"):
        raise ValueError(f"unknown tier {tier!r}")
    sql, params = _tier_sql(tier, by, buckets)
    rows = _dicts(con.execute(d.sql(sql), params))
    if by == "user":
        peak = _peaks(con, tier, buckets, d)
        for r in rows:
            r["peak_gpus"] = peak.get((r["period_start"], r["key"]))
    return rows


def _tier_sql(
    tier: str, by: str, buckets: Sequence[tuple[int, str]], facts: Sequence[str] | None = None
) -> tuple[str, list[Any]]:
    cal, params = _calendar(buckets)
    lo, hi = min(b for b, _ in buckets), max(b for b, _ in buckets)
    if by in GPU_KEY_SQL:
        aggs = (
            _merge_aggs(GPU_SUM_FACTS, GPU_MAX_FACTS)
            if facts is None
            else _merge_aggs([c for c in GPU_SUM_FACTS if c in facts],
                             [c for c in GPU_MAX_FACTS if c in facts])
        )  # fmt: skip
        sql = f"""SELECT c.period_start, {GPU_KEY_SQL[by]} AS key, {aggs}
            FROM gpu_{tier} t JOIN {cal} c ON t.bucket_ts = c.bucket_ts
            WHERE t.bucket_ts >= {lo} AND t.bucket_ts <= {hi} GROUP BY 1, 2"""
        return sql, params
    if by not in USER_KEY_SQL:
        raise ValueError(f"unknown grouping {by!r}")
    # The day tier has each user's day summed over hosts and GPUs (user_total_day).
    table = "user_total_day" if tier == "day" else f"user_{tier}"
    sql = f"""SELECT c.period_start, {USER_KEY_SQL[by]} AS key, {_merge_aggs(USER_SUM_FACTS)}
        FROM {table} t JOIN {cal} c ON t.bucket_ts = c.bucket_ts
        LEFT JOIN user_mapping m ON m.user_name = t.user_name
        WHERE t.bucket_ts >= {lo} AND t.bucket_ts <= {hi} GROUP BY 1, 2"""
    return sql, params


def _peaks(
    con: Any, tier: str, buckets: Sequence[tuple[int, str]], d: Dialect
) -> dict[tuple[str, str], int]:
    cal, params = _calendar(buckets)
    lo, hi = min(b for b, _ in buckets), max(b for b, _ in buckets)
    peaks = con.execute(
        d.sql(f"""SELECT c.period_start, t.user_name, max(t.peak_gpus)
        FROM user_peak_{tier} t JOIN {cal} c ON t.bucket_ts = c.bucket_ts
        WHERE t.bucket_ts >= {lo} AND t.bucket_ts <= {hi} GROUP BY 1, 2"""),
        params,
    ).fetchall()
    return {(p, u): k for p, u, k in peaks}


def raw_facts(
    con: Any,
    by: str,
    hour_buckets: Sequence[tuple[int, str]],
    busy_util_percent: float,
    d: Dialect = DUCKDB,
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
        FROM ({src}) t JOIN {cal} c ON {_floor_to("t.ts", 3600)} = c.bucket_ts
        {join} GROUP BY 1, 2"""
    rows = _dicts(con.execute(d.sql(sql), params))
    for r in rows:  # as the tiers give them: sums as floats
        if "samples" in r:
            r["samples"] = float(r["samples"])
    return rows


def _columns(cur: Any) -> dict[str, np.ndarray]:
    """A result as columns: text columns as object arrays, numbers as floats (NULL: NaN).
    DuckDB hands its columns over as arrays (no Python object per value)."""
    if hasattr(cur, "fetchnumpy"):
        out = {}
        for name, col in cur.fetchnumpy().items():
            if col.dtype == object:
                out[name] = np.ma.getdata(col)
            else:
                out[name] = np.ma.filled(np.ma.asarray(col).astype(float), np.nan)
        return out
    names = [c[0] for c in cur.description]
    rows = cur.fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    out = {}
    for name, values in zip(names, cols, strict=True):
        if name in ("period_start", "key"):
            out[name] = np.array(values, dtype=object)
        else:
            out[name] = np.array(values, dtype=float)
    return out


def tier_fact_columns(
    con: Any,
    tier: str,
    by: str,
    buckets: Sequence[tuple[int, str]],
    d: Dialect = DUCKDB,
    facts: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """``tier_facts`` as columns (``gpufleet.reports.core.FactColumns``): the fast path.
    ``facts``: only these GPU facts (e.g. what the long tail needs)."""
    if not buckets:
        return {"period_start": np.array([], dtype=object), "key": np.array([], dtype=object)}
    if tier not in ("hour", "day"):
        raise ValueError(f"unknown tier {tier!r}")
    sql, params = _tier_sql(tier, by, buckets, facts)
    cols = _columns(con.execute(d.sql(sql), params))
    if by == "user":
        peak = _peaks(con, tier, buckets, d)
        cols["peak_gpus"] = np.array(
            [
                peak.get((p, k))
                for p, k in zip(cols["period_start"].tolist(), cols["key"].tolist(), strict=True)
            ],
            dtype=float,
        )
    return cols


def _dicts(cur: Any) -> list[dict]:
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# -- user mapping ------------------------------------------------------------------------------


MappingRow = tuple[str, str | None, str | None, str | None]  # user, person, group, e-mail


def user_mapping(con: Any) -> list[MappingRow]:
    rows = con.execute(
        "SELECT user_name, person, group_name, email FROM user_mapping ORDER BY user_name"
    ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def set_user_mapping(
    con: Any,
    user_name: str,
    person: str | None,
    group_name: str | None,
    email: str | None = None,
    d: Dialect = DUCKDB,
) -> bool:
    """Set (or with all three None, forget) one user's mapping; whether a mapping existed."""
    existed = bool(
        con.execute(d.sql("SELECT 1 FROM user_mapping WHERE user_name = ?"), [user_name]).fetchall()
    )
    if person is None and group_name is None and email is None:
        con.execute(d.sql("DELETE FROM user_mapping WHERE user_name = ?"), [user_name])
        return existed
    con.execute(
        d.sql(
            "INSERT INTO user_mapping (user_name, person, group_name, email) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_name) DO UPDATE SET person = excluded.person,"
            " group_name = excluded.group_name, email = excluded.email"
        ),
        [user_name, person, group_name, email],
    )
    return existed


# -- the store side, shared by both backends ---------------------------------------------------


class WarehouseMixin:
    """Rollups, tier retention, report reads and the user mapping for a store backend that
    has ``write(fn)`` (fn(con) in one writer transaction), ``_reader(fn)`` (fn(con) on a read
    connection) and ``DIALECT``."""

    DIALECT: Dialect = DUCKDB
    ROLLUP_CHUNK_HOURS = 24  # hours per writer transaction in a rollup

    def write(self, fn: Any) -> Any:
        raise NotImplementedError

    def _reader(self, fn: Callable[[Any], Any]) -> Any:
        raise NotImplementedError

    def _rollup_lock(self, con: Any) -> None:
        """Serialise rollup transactions (several server processes on one database)."""

    def _watermark_changed(self, watermark: float) -> None:
        """The rollup moved the watermark (a backend caching it for late samples updates)."""

    def rollup(
        self,
        *,
        now: float,
        tz: str,
        busy_util_percent: float,
        from_ts: float | None = None,
        to_ts: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        from gpufleet.warehouse.calendar import day_range, days_touched, zone

        tzinfo = zone(tz)
        d = self.DIALECT
        started = time.perf_counter()
        current = int(now // 3600) * 3600  # hours before this one are complete
        backfill = from_ts is not None or to_ts is not None

        def plan(con: Any) -> tuple[list[tuple[int, int]], int | None, int]:
            self._rollup_lock(con)
            state = get_state(con)
            rebuilt = 0
            # the day tier follows the configured time zone (and is rebuilt once by a version
            # that keys days differently: exact midnights since the half-hour zones' fix)
            if state.get("day_tz") != f"{tz}{DAY_KEYS}":
                lo, hi = hour_span(con)
                if lo is not None and hi is not None:
                    hours = list(range(int(lo), int(hi) + 1, 3600))
                    days = sorted(days_touched(hours, tzinfo))
                    rollup_days(con, [day_range(day, tzinfo) for day in days], d)
                    note_tiers_changed(con, d=d)
                    rebuilt = len(days)
                set_state(con, "day_tz", f"{tz}{DAY_KEYS}", d)
            kept = float(state.get("raw_kept_from_ts", "-inf"))
            raw_lo, raw_hi = raw_span(con)
            if raw_lo is None or raw_hi is None:
                return [], None, rebuilt
            first_raw = int(raw_lo // 3600) * 3600
            if kept > -math.inf:  # raw before this was pruned
                first_raw = max(first_raw, math.ceil(kept / 3600) * 3600)
            if backfill:
                a = int((from_ts if from_ts is not None else raw_lo) // 3600) * 3600
                b = math.ceil((to_ts if to_ts is not None else raw_hi + 1) / 3600) * 3600
                a = max(a, first_raw)
                return ([(a, b)] if b > a else []), None, rebuilt
            wm = int(float(state["watermark_ts"])) if "watermark_ts" in state else first_raw
            dirty = [h for h in dirty_hours(con) if h < wm]
            gone = [h for h in dirty if h < first_raw]
            if gone:  # raw already pruned: nothing exact to roll up from
                log.warning("rollup: %d late hour(s) older than the raw tier ignored", len(gone))
                con.execute(f"DELETE FROM rollup_dirty WHERE hour_ts < {int(first_raw)}")
            ranges: list[tuple[int, int]] = []
            for h in (h for h in dirty if h >= first_raw):
                if ranges and ranges[-1][1] == h:
                    ranges[-1] = (ranges[-1][0], h + 3600)
                else:
                    ranges.append((h, h + 3600))
            end = min(current, math.ceil((raw_hi + 1) / 3600) * 3600)  # nothing after the raw
            if end > wm:
                ranges.append((wm, end))
            return ranges, wm, rebuilt

        ranges, wm, rebuilt = self.write(plan)
        chunks = []
        step = self.ROLLUP_CHUNK_HOURS * 3600
        for a, b in ranges:
            cut = a
            while cut < b:
                end = min(b, (cut // step + 1) * step)
                chunks.append((cut, end))
                cut = end
        total = sum((b - a) // 3600 for a, b in chunks)
        done = 0
        days_done: set[int] = set()
        for a, b in chunks:

            def run(con: Any, a: int = a, b: int = b) -> tuple[set[int], float | None]:
                self._rollup_lock(con)
                rollup_hours(con, a, b, busy_util_percent, d)
                days = days_touched(list(range(a, b, 3600)), tzinfo)
                day_ranges = [day_range(day, tzinfo) for day in sorted(days)]
                rollup_days(con, day_ranges, d)
                lo = min([a, *(r[0] for r in day_ranges)])
                note_tiers_changed(con, lo, max([b, *(r[1] for r in day_ranges)]), d)
                clear_dirty(con, a, b)
                new_wm = None
                if wm is not None and b > wm:
                    new_wm = float(min(b, current))
                    set_state(con, "watermark_ts", str(int(new_wm)), d)
                return days, new_wm

            days, new_wm = self.write(run)
            if new_wm is not None:
                self._watermark_changed(new_wm)
            days_done |= days
            done += (b - a) // 3600
            if progress is not None:
                progress(done, total)
        return {
            "hours": total,
            "days": len(days_done),
            "days_rebuilt_for_time_zone": rebuilt,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def prune_tiers(self, minute_before: float, hour_before: float) -> dict[str, int]:
        d = self.DIALECT
        return self.write(lambda con: prune_tiers(con, minute_before, hour_before, d))

    def report_facts(
        self,
        *,
        tier: str,
        by: str,
        buckets: list[tuple[int, str]],
        busy_util_percent: float = 0.0,
    ) -> list[dict[str, Any]]:
        from gpufleet.store.base import StoreError

        d = self.DIALECT
        if tier == "raw":
            return self._reader(lambda con: raw_facts(con, by, buckets, busy_util_percent, d))
        if tier not in ("hour", "day"):
            raise StoreError(f"unknown tier {tier!r}")
        return self._reader(lambda con: tier_facts(con, tier, by, buckets, d))

    def report_fact_columns(
        self,
        *,
        tier: str,
        by: str,
        buckets: list[tuple[int, str]],
        busy_util_percent: float = 0.0,
        facts: Sequence[str] | None = None,
    ) -> Any:
        """``report_facts`` as columns (``gpufleet.reports.core.FactColumns``) for the
        ``hour`` and ``day`` tiers; the raw path gives rows. ``facts``: only these (GPU
        groupings; the tiers only)."""
        from gpufleet.store.base import StoreError

        d = self.DIALECT
        if tier == "raw":
            return self.report_facts(
                tier=tier, by=by, buckets=buckets, busy_util_percent=busy_util_percent
            )
        if tier not in ("hour", "day"):
            raise StoreError(f"unknown tier {tier!r}")
        return self._reader(lambda con: tier_fact_columns(con, tier, by, buckets, d, facts))

    def warehouse_state(self) -> dict[str, str]:
        def read(con: Any) -> dict[str, str]:
            state = get_state(con)
            first, hours = con.execute("SELECT min(hour_ts), count(*) FROM rollup_dirty").fetchone()
            if hours:  # late samples wait for the next rollup
                state["late_from_ts"], state["late_hours"] = str(int(first)), str(int(hours))
            return state

        return self._reader(read)

    def user_mapping(self) -> list[MappingRow]:
        return self._reader(user_mapping)

    def set_user_mapping(
        self, user_name: str, person: str | None, group_name: str | None, email: str | None = None
    ) -> None:
        """Map a Unix user to a person, a group and an e-mail address (all None: forget)."""
        d = self.DIALECT

        def fn(con: Any) -> None:
            set_user_mapping(con, user_name, person, group_name, email, d)
            note_tiers_changed(con, d=d)  # users' groups and persons in every period

        self.write(fn)

    def set_user_mappings(
        self, rows: Sequence[MappingRow], *, replace: bool = False
    ) -> tuple[int, int]:
        """Set many mappings in one transaction; ``replace``: also forget every user not in
        ``rows``. Returns (set, forgotten)."""
        d = self.DIALECT

        def fn(con: Any) -> tuple[int, int]:
            keep = {row[0] for row in rows}
            gone = [row[0] for row in user_mapping(con) if row[0] not in keep] if replace else []
            for u in gone:
                set_user_mapping(con, u, None, None, None, d)
            for u, person, group, email in rows:
                set_user_mapping(con, u, person, group, email, d)
            if rows or gone:
                note_tiers_changed(con, d=d)
            return len(rows), len(gone)

        return self.write(fn)
