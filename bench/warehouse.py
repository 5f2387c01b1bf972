"""Warehouse benchmark: a year for 100 hosts x 8 GPUs at a 5 s interval, on the embedded store
(default) or on PostgreSQL (``--backend postgresql``: a fresh database on the local server,
dropped afterwards; ``--pg-admin`` names the server).

How the year is made: the last ``--raw-days`` days (default 1) as raw samples at 5 s, written
straight into the raw tables with SQL, then rolled up through the real rollup path (timed:
rollup throughput); the earlier days generated directly as hour-tier rows (per GPU and per
user) and turned into the day tier by the real day rollup. Then, medians of 3:
yearly report by user, monthly by host, daily by GPU for a month, and the same report over
the raw days from raw samples versus from the tiers. Store size per host-year counts the
tiers only (raw is pruned after ``retention.raw_days``).

    .venv/bin/python bench/warehouse.py [--hosts 100] [--gpus 8] [--raw-days 1]
        [--backend duckdb|postgresql] [--only rollup]

``--only rollup``: generate the raw days and time their rollup only (no year of tiers, no
reports; about a minute on DuckDB).

The generated data follow the same recipe on both backends (the pseudo-random functions
differ: DuckDB's hash(), PostgreSQL's hashint8()).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from gpufleet.reports.service import compute_report
from gpufleet.store import open_store, pg_schema
from gpufleet.store import warehouse as wh
from gpufleet.store.schema import RAW_TABLES
from gpufleet.warehouse import calendar as cal
from gpufleet.warehouse.facts import HIST_COLUMNS

TZ = "Asia/Shanghai"
USERS = 30


def gen_raw(con, hosts: int, gpus: int, t0: int, t1: int, step: int = 5) -> int:
    """Raw samples: each GPU busy in long stretches, held by one of USERS users."""
    n = (t1 - t0) // step
    con.execute(
        f"""INSERT INTO host_samples (host, ts, interval_seconds, gpus)
        SELECT 'node' || lpad(h::VARCHAR, 3, '0'), {t0} + i * {step}, {step}, {gpus}
        FROM range({hosts}) a(h), range({n}) b(i)"""
    )
    con.execute(
        f"""INSERT INTO gpu_samples (host, ts, gpu_index, uuid, name, utilization_gpu_percent,
            memory_used_bytes, memory_total_bytes, power_watts, xid_events, processes)
        SELECT 'node' || lpad(h::VARCHAR, 3, '0'), {t0} + i * {step}, g,
            'GPU-' || h || '-' || g, CASE WHEN h % 3 = 0 THEN 'H100' ELSE 'A100' END,
            CASE WHEN held THEN (hash(h, g, i // 720) % 101)::REAL ELSE 0 END,
            CASE WHEN held THEN 40e9::BIGINT ELSE 0 END, 80e9::BIGINT,
            CASE WHEN held THEN 300.0 ELSE 60.0 END, 0, held::INTEGER
        FROM (SELECT h, g, i, hash(h * 8 + g, i // 2160) % 100 < 30 + h % 60 AS held
              FROM range({hosts}) a(h), range({gpus}) c(g), range({n}) b(i))"""
    )
    con.execute(
        f"""INSERT INTO process_samples (host, ts, gpu_index, pid, user_name, gpu_memory_bytes)
        SELECT host, ts, gpu_index, 1000 + gpu_index,
            'user' || (hash(host, gpu_index, (ts // 10800)::BIGINT) % {USERS}), 40e9::BIGINT
        FROM gpu_samples WHERE processes > 0 AND ts >= {t0} AND ts < {t1}"""
    )
    return n * hosts * gpus


def gen_hour_tiers(con, hosts: int, gpus: int, h0: int, h1: int) -> None:
    """Hour-tier rows made directly (as if rolled up), with plausible additive facts."""
    hist = ", ".join(
        f"CASE WHEN least(u // 5, 19) = {i} THEN held ELSE 0 END" for i in range(len(HIST_COLUMNS))
    )
    con.execute(
        f"""INSERT INTO gpu_hour
        SELECT 'node' || lpad(h::VARCHAR, 3, '0'), g, {h0} + k * 3600,
            'GPU-' || h || '-' || g, CASE WHEN h % 3 = 0 THEN 'H100' ELSE 'A100' END,
            720, 3600, 3600, u * held, busy, held, held - busy, 40e9 * held,
            300.0 * held + 60.0 * (3600 - held), {hist}, u, 40e9::BIGINT, 300.0
        FROM (SELECT h, g, k, (hash(h, g, k // 3) % 101)::DOUBLE AS u,
                 CASE WHEN hash(h * 8 + g, k // 3) % 100 < 30 + h % 60 THEN 3600.0 ELSE 0 END AS held,
                 CASE WHEN hash(h * 8 + g, k // 3) % 100 < 30 + h % 60
                      AND hash(h, g, k // 3) % 101 > 5 THEN 3600.0 ELSE 0 END AS busy
              FROM range({hosts}) a(h), range({gpus}) c(g), range({(h1 - h0) // 3600}) b(k))"""
    )
    con.execute(
        f"""INSERT INTO user_hour
        SELECT 'user' || (hash(host, gpu_index, bucket_ts // 10800) % {USERS}), host, gpu_index,
            bucket_ts, held_seconds, util_seconds * (held_seconds > 0)::INT,
            util_percent_seconds, busy_seconds, idle_held_seconds, memory_byte_seconds,
            energy_joules * (held_seconds > 0)::INT, {", ".join(HIST_COLUMNS)}
        FROM gpu_hour WHERE held_seconds > 0 AND bucket_ts >= {h0} AND bucket_ts < {h1}"""
    )
    con.execute(
        f"""INSERT INTO user_peak_hour
        SELECT user_name, bucket_ts, count(*) FROM user_hour
        WHERE bucket_ts >= {h0} AND bucket_ts < {h1} GROUP BY ALL"""
    )


def _pg_hash(*parts: str) -> str:
    """A pseudo-random non-negative bigint of integer SQL expressions (PostgreSQL)."""
    expr = f"({parts[0]})::bigint"
    for p in parts[1:]:
        expr = f"mod(({expr}) * 1000003 + ({p})::bigint, 1000000007)"
    return f"abs(hashint8({expr}))"


def pg_gen_raw(cur, hosts: int, gpus: int, t0: int, t1: int, step: int = 5) -> int:
    """``gen_raw`` on PostgreSQL (daily partitions made first)."""
    n = (t1 - t0) // step
    for table in RAW_TABLES:
        for day in range(t0 // 86400, (t1 - 1) // 86400 + 1):
            cur.execute(pg_schema.partition_ddl(table, day))
    node = "'node' || lpad(h::text, 3, '0')"
    cur.execute(
        f"""INSERT INTO host_samples (host, ts, interval_seconds, gpus)
        SELECT {node}, {t0} + i * {step}, {step}, {gpus}
        FROM generate_series(0, {hosts - 1}) h, generate_series(0, {n - 1}) i"""
    )
    cur.execute(
        f"""INSERT INTO gpu_samples (host, ts, gpu_index, uuid, name, utilization_gpu_percent,
            memory_used_bytes, memory_total_bytes, power_watts, xid_events, processes)
        SELECT {node}, {t0} + i * {step}, g,
            'GPU-' || h || '-' || g, CASE WHEN mod(h, 3) = 0 THEN 'H100' ELSE 'A100' END,
            CASE WHEN held THEN mod({_pg_hash("h", "g", "i / 720")}, 101)::real ELSE 0 END,
            CASE WHEN held THEN 40000000000 ELSE 0 END, 80000000000,
            CASE WHEN held THEN 300.0 ELSE 60.0 END, 0, held::integer
        FROM (SELECT h, g, i, mod({_pg_hash("h * 8 + g", "i / 2160")}, 100) < 30 + mod(h, 60)
                AS held
              FROM generate_series(0, {hosts - 1}) h, generate_series(0, {gpus - 1}) g,
                   generate_series(0, {n - 1}) i) x"""
    )
    cur.execute(
        f"""INSERT INTO process_samples (host, ts, gpu_index, pid, user_name, gpu_memory_bytes)
        SELECT host, ts, gpu_index, 1000 + gpu_index,
            'user' || mod({_pg_hash("hashtext(host)", "gpu_index", "floor(ts / 10800)::bigint")},
                          {USERS}),
            40000000000
        FROM gpu_samples WHERE processes > 0 AND ts >= {t0} AND ts < {t1}"""
    )
    return n * hosts * gpus


def pg_gen_hour_tiers(cur, hosts: int, gpus: int, h0: int, h1: int) -> None:
    """``gen_hour_tiers`` on PostgreSQL."""
    hist = ", ".join(
        f"CASE WHEN least(u::int / 5, 19) = {i} THEN held ELSE 0 END"
        for i in range(len(HIST_COLUMNS))
    )
    held = f"mod({_pg_hash('h * 8 + g', 'k / 3')}, 100) < 30 + mod(h, 60)"
    cur.execute(
        f"""INSERT INTO gpu_hour
        SELECT 'node' || lpad(h::text, 3, '0'), g, {h0} + k * 3600,
            'GPU-' || h || '-' || g, CASE WHEN mod(h, 3) = 0 THEN 'H100' ELSE 'A100' END,
            720, 3600, 3600, u * held, busy, held, held - busy, 40e9 * held,
            300.0 * held + 60.0 * (3600 - held), {hist}, u, 40000000000, 300.0
        FROM (SELECT h, g, k, mod({_pg_hash("h", "g", "k / 3")}, 101)::float8 AS u,
                 CASE WHEN {held} THEN 3600.0 ELSE 0 END AS held,
                 CASE WHEN {held} AND mod({_pg_hash("h", "g", "k / 3")}, 101) > 5
                      THEN 3600.0 ELSE 0 END AS busy
              FROM generate_series(0, {hosts - 1}) h, generate_series(0, {gpus - 1}) g,
                   generate_series(0, {(h1 - h0) // 3600 - 1}) k) x"""
    )
    cur.execute(
        f"""INSERT INTO user_hour
        SELECT 'user' || mod({_pg_hash("hashtext(host)", "gpu_index", "bucket_ts / 10800")},
                             {USERS}),
            host, gpu_index, bucket_ts, held_seconds,
            util_seconds * (held_seconds > 0)::int, util_percent_seconds, busy_seconds,
            idle_held_seconds, memory_byte_seconds, energy_joules * (held_seconds > 0)::int,
            {", ".join(HIST_COLUMNS)}
        FROM gpu_hour WHERE held_seconds > 0 AND bucket_ts >= {h0} AND bucket_ts < {h1}"""
    )
    cur.execute(
        f"""INSERT INTO user_peak_hour
        SELECT user_name, bucket_ts, count(*) FROM user_hour
        WHERE bucket_ts >= {h0} AND bucket_ts < {h1} GROUP BY 1, 2"""
    )


@contextlib.contextmanager
def pg_database(admin_url: str):
    """A fresh PostgreSQL database, dropped afterwards."""
    import urllib.parse

    import psycopg

    name = f"gpufleet_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urllib.parse.urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def timed(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--raw-days", type=int, default=1)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--backend", choices=("duckdb", "postgresql"), default="duckdb")
    ap.add_argument(
        "--pg-admin",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server for --backend postgresql (a database is made and dropped)",
    )
    ap.add_argument(
        "--only",
        choices=("rollup",),
        default=None,
        help="rollup: time only the rollup of the raw days (no year of tiers, no reports)",
    )
    args = ap.parse_args()
    if args.hosts < 1 or args.gpus < 1 or args.raw_days < 1 or args.days < args.raw_days:
        ap.error("--hosts, --gpus and --raw-days must be at least 1, and --days >= --raw-days")
    if args.backend == "postgresql":
        with pg_database(args.pg_admin) as url:
            run(args, url)
    else:
        folder = args.dir or Path(tempfile.mkdtemp(prefix="gpufleet-wh-"))
        run(args, str(folder / "bench.duckdb"))


def rollup_only(args: argparse.Namespace, store, pg: bool, t_raw: int, t_end: int) -> None:
    """Generate the raw days and time their rollup (``--only rollup``)."""
    t = time.perf_counter()
    gen = pg_gen_raw if pg else gen_raw
    n = store.write(lambda con: gen(con, args.hosts, args.gpus, t_raw, t_end))
    if pg:
        store.write(lambda con: con.execute("ANALYZE"))
    print(f"generated {n / 1e6:.1f} M raw GPU samples in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    done = store.rollup(now=t_end, tz=TZ, busy_util_percent=5.0, from_ts=t_raw, to_ts=t_end)
    roll_s = time.perf_counter() - t
    print(
        f"rollup: {done['hours']} hours of raw in {roll_s:.2f} s = "
        f"{roll_s / args.raw_days:.2f} s per day of {args.hosts}x{args.gpus} GPUs "
        f"({n / roll_s / 1e6:.2f} M GPU samples/s)"
    )
    store.close()


def run(args: argparse.Namespace, url: str) -> None:
    pg = url.startswith("postgresql://")
    tz = cal.zone(TZ)
    last_day = date(2024, 12, 31)
    first_day = last_day - timedelta(args.days - 1)
    raw_first = last_day - timedelta(args.raw_days - 1)
    t_first, t_raw = cal.day_start_ts(first_day, tz), cal.day_start_ts(raw_first, tz)
    t_end = cal.day_start_ts(last_day + timedelta(1), tz)
    store = open_store(url)
    d = wh.POSTGRES if pg else wh.DUCKDB
    print(f"store {store.path}; {args.hosts} hosts x {args.gpus} GPUs; {args.days} days ({TZ})")

    if args.only == "rollup":
        return rollup_only(args, store, pg, t_raw, t_end)
    t = time.perf_counter()
    gen_tiers = pg_gen_hour_tiers if pg else gen_hour_tiers
    store.write(lambda con: gen_tiers(con, args.hosts, args.gpus, t_first, t_raw))
    hours = list(range(t_first, t_raw, 3600))
    days = sorted(set(cal.hours_to_days(hours, tz).values()))
    for i in range(0, len(days), 31):  # a month per transaction
        ranges = [cal.day_range(day, tz) for day in days[i : i + 31]]
        store.write(lambda con, ranges=ranges: wh.rollup_days(con, ranges, d))
    store.write(lambda con: wh.set_state(con, "day_tz", TZ, d))
    if pg:
        store.write(lambda con: con.execute("ANALYZE"))
    print(f"generated {args.days - args.raw_days} days of tiers in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    gen = pg_gen_raw if pg else gen_raw
    n = store.write(lambda con: gen(con, args.hosts, args.gpus, t_raw, t_end))
    if pg:
        store.write(lambda con: con.execute("ANALYZE"))
    print(
        f"generated {n / 1e6:.1f} M raw GPU samples ({args.raw_days} day(s)) in {time.perf_counter() - t:.1f} s"
    )
    t = time.perf_counter()
    done = store.rollup(now=t_end, tz=TZ, busy_util_percent=5.0, from_ts=t_raw, to_ts=t_end)
    roll_s = time.perf_counter() - t
    per_day = roll_s / args.raw_days
    print(
        f"rollup: {done['hours']} hours of raw in {roll_s:.2f} s = {per_day:.2f} s per day of "
        f"{args.hosts}x{args.gpus} GPUs ({n / roll_s / 1e6:.2f} M GPU samples/s)"
    )

    def rep(period, by, first, last, tier="auto"):
        return lambda: compute_report(
            store, period=period, by=by, first=first, last=last, tz=TZ, tier=tier, today=last_day
        )

    month0 = last_day.replace(day=1)
    cases = [
        ("yearly report by user", rep("year", "user", first_day, last_day)),
        ("monthly report by host", rep("month", "host", month0, last_day)),
        ("daily report by GPU for a month", rep("day", "gpu", month0, last_day)),
        ("yearly report by host, monthly rows", rep("month", "host", first_day, last_day)),
    ]
    print(f"\nreport ({args.backend}, median of 3)                  ms   rows")
    for name, fn in cases:
        rows = len(fn()["rows"])
        print(f"  {name:<44} {timed(fn) * 1000:7.1f}  {rows}")
    raw_tiers = rep("custom", "host", raw_first, last_day)
    raw_raw = rep("custom", "host", raw_first, last_day, tier="raw")
    a, b = timed(raw_raw, 1), timed(raw_tiers)
    print(
        f"\nsame report ({args.raw_days} raw day(s), by host): from raw {a * 1000:.0f} ms, "
        f"from tiers {b * 1000:.1f} ms, ratio {a / b:.0f}x"
    )
    store.prune(raw_before=t_end + 86400 * 365, batches_before=0)  # tiers only
    store.write(lambda con: con.execute("DELETE FROM gpu_minute"))
    store.close()
    if pg:
        import psycopg

        with psycopg.connect(url, autocommit=True) as con:
            con.execute("VACUUM FULL")
            size = con.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        what = "database"
    else:
        import duckdb

        con = duckdb.connect(url)
        con.execute("CHECKPOINT")
        con.close()
        size = Path(url).stat().st_size
        what = "file"
    print(
        f"store size ({what}; hour + day tiers, no raw/minute): {size / 2**20:.0f} MiB for "
        f"{args.hosts} hosts x {args.days / 365:.2f} years = "
        f"{size / args.hosts / (args.days / 365) / 2**20:.2f} MiB per host-year"
    )
    print(f"(at {datetime.now(UTC):%Y-%m-%d}; {'dropped' if pg else 'delete'} {url} when done)")


if __name__ == "__main__":
    main()
