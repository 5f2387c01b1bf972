"""Versioned schema of the store. Each migration runs once, in order, in its own transaction;
the applied versions are recorded in ``schema_migrations``. Never edit a released migration:
add the next one.

Raw tier tables hold one row per sample (host), per GPU, per GPU process, per disk. Timestamps
are Unix seconds (DOUBLE, UTC); every column name carries its unit.
"""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    version: int
    description: str
    sql: str


MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "raw tier, hosts, batches, agent tokens",
        """
        CREATE TABLE agent_tokens (
            id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL UNIQUE,
            secret_sha256 VARCHAR NOT NULL,
            created_at DOUBLE NOT NULL,
            revoked_at DOUBLE
        );
        -- One row per accepted batch, for idempotent ingest within the dedupe window.
        CREATE TABLE batches (
            id UUID PRIMARY KEY,
            received_at DOUBLE NOT NULL,
            samples INTEGER NOT NULL
        );
        CREATE TABLE hosts (
            name VARCHAR PRIMARY KEY,
            source VARCHAR NOT NULL,
            token_name VARCHAR,
            first_seen DOUBLE NOT NULL,
            last_seen DOUBLE NOT NULL,
            last_received DOUBLE NOT NULL,
            interval_seconds DOUBLE NOT NULL,
            agent_version VARCHAR,
            clock_skew_seconds DOUBLE,
            last_sample JSON NOT NULL
        );
        CREATE TABLE host_samples (
            host VARCHAR NOT NULL,
            ts DOUBLE NOT NULL,
            interval_seconds REAL NOT NULL,
            cpu_percent REAL,
            load1 REAL,
            load5 REAL,
            load15 REAL,
            memory_total_bytes BIGINT,
            memory_used_bytes BIGINT,
            memory_available_bytes BIGINT,
            swap_total_bytes BIGINT,
            swap_used_bytes BIGINT,
            disk_total_bytes BIGINT,
            disk_used_bytes BIGINT,
            net_rx_bytes_per_second DOUBLE,
            net_tx_bytes_per_second DOUBLE,
            uptime_seconds DOUBLE,
            users INTEGER,
            gpus INTEGER,
            errors VARCHAR
        );
        CREATE TABLE gpu_samples (
            host VARCHAR NOT NULL,
            ts DOUBLE NOT NULL,
            gpu_index UTINYINT NOT NULL,
            uuid VARCHAR,
            name VARCHAR,
            utilization_gpu_percent REAL,
            utilization_memory_percent REAL,
            memory_used_bytes BIGINT,
            memory_total_bytes BIGINT,
            temperature_celsius REAL,
            power_watts REAL,
            power_limit_watts REAL,
            fan_percent REAL,
            sm_clock_hertz DOUBLE,
            pstate UTINYINT,
            ecc_uncorrected_volatile BIGINT,
            xid_events INTEGER NOT NULL,
            processes INTEGER NOT NULL,
            error VARCHAR
        );
        CREATE TABLE process_samples (
            host VARCHAR NOT NULL,
            ts DOUBLE NOT NULL,
            gpu_index UTINYINT NOT NULL,
            pid INTEGER NOT NULL,
            user_name VARCHAR,
            uid BIGINT,
            command VARCHAR,
            started_at DOUBLE,
            gpu_memory_bytes BIGINT,
            container_id VARCHAR,
            container_name VARCHAR
        );
        CREATE TABLE disk_samples (
            host VARCHAR NOT NULL,
            ts DOUBLE NOT NULL,
            mount VARCHAR NOT NULL,
            total_bytes BIGINT NOT NULL,
            used_bytes BIGINT NOT NULL
        );
        CREATE TABLE xid_events (
            host VARCHAR NOT NULL,
            ts DOUBLE NOT NULL,
            gpu_index UTINYINT NOT NULL,
            xid INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "web accounts",
        """
        -- Web/API users. password_hash is a self-describing KDF string (gpufleet.accounts.passwords);
        -- sessions live in signed cookies, so there is no sessions table.
        CREATE TABLE users (
            name VARCHAR PRIMARY KEY,
            password_hash VARCHAR NOT NULL,
            role VARCHAR NOT NULL,
            created_at DOUBLE NOT NULL,
            last_login DOUBLE
        );
        """,
    ),
    Migration(
        3,
        "warehouse: minute/hour/day facts per GPU and per user, user mapping, rollup state",
        # Tiers hold additive facts only, so any coarser bucket is an exact sum (maxima merge
        # with max). bucket_ts: the bucket's start in Unix seconds; minute and hour buckets are
        # UTC-aligned, day buckets start at local midnight in the time zone recorded in
        # rollup_state ('day_tz'). util_hist_NN: seconds with utilisation in [5*NN, 5*NN+5)
        # percent (100 % in the last bucket), for percentiles within 5 points.
        "".join(
            f"""
        CREATE TABLE gpu_{tier} (
            host VARCHAR NOT NULL,
            gpu_index UTINYINT NOT NULL,
            bucket_ts BIGINT NOT NULL,
            gpu_uuid VARCHAR,
            gpu_model VARCHAR,
            samples BIGINT NOT NULL,
            sample_seconds DOUBLE NOT NULL,
            util_seconds DOUBLE NOT NULL,
            util_percent_seconds DOUBLE NOT NULL,
            busy_seconds DOUBLE NOT NULL,
            held_seconds DOUBLE NOT NULL,
            idle_held_seconds DOUBLE NOT NULL,
            memory_byte_seconds DOUBLE NOT NULL,
            energy_joules DOUBLE NOT NULL,
            util_max_percent REAL,
            memory_max_bytes BIGINT,
            power_max_watts REAL,
            {", ".join(f"util_hist_{i:02d} DOUBLE NOT NULL" for i in range(20))}
        );"""
            for tier in ("minute", "hour", "day")
        )
        + "".join(
            f"""
        -- A GPU's facts shared among the users holding it at each sample (equal shares), so
        -- per-user GPU-hours add up to the fleet's; memory is the user's own processes'.
        CREATE TABLE user_{tier} (
            user_name VARCHAR NOT NULL,
            host VARCHAR NOT NULL,
            gpu_index UTINYINT NOT NULL,
            bucket_ts BIGINT NOT NULL,
            held_seconds DOUBLE NOT NULL,
            util_seconds DOUBLE NOT NULL,
            util_percent_seconds DOUBLE NOT NULL,
            busy_seconds DOUBLE NOT NULL,
            idle_held_seconds DOUBLE NOT NULL,
            memory_byte_seconds DOUBLE NOT NULL,
            energy_joules DOUBLE NOT NULL,
            {", ".join(f"util_hist_{i:02d} DOUBLE NOT NULL" for i in range(20))}
        );
        -- Most GPUs a user held at once (summed over hosts, per minute) within the bucket.
        CREATE TABLE user_peak_{tier} (
            user_name VARCHAR NOT NULL,
            bucket_ts BIGINT NOT NULL,
            peak_gpus INTEGER NOT NULL
        );"""
            for tier in ("hour", "day")
        )
        + """
        -- Unix user -> person and group; editable by an admin. Unknown users report as themselves.
        CREATE TABLE user_mapping (
            user_name VARCHAR PRIMARY KEY,
            person VARCHAR,
            group_name VARCHAR
        );
        -- Hours (UTC start, Unix s) whose raw samples changed after they were rolled up.
        CREATE TABLE rollup_dirty (hour_ts BIGINT PRIMARY KEY);
        -- watermark_ts: hours before it are rolled up (unless dirty); raw_kept_from_ts: raw
        -- samples before it were pruned; day_tz: the time zone of the day tier.
        CREATE TABLE rollup_state (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
        """,
    ),
    Migration(
        4,
        "warehouse: each user's day summed over hosts and GPUs (reports by user/group/person)",
        # The day tier of user facts summed over hosts and GPUs: a year by user reads ~365 rows
        # per user instead of one per GPU the user touched each day. Rebuilt with user_day.
        f"""
        CREATE TABLE user_total_day (
            user_name VARCHAR NOT NULL,
            bucket_ts BIGINT NOT NULL,
            held_seconds DOUBLE NOT NULL,
            util_seconds DOUBLE NOT NULL,
            util_percent_seconds DOUBLE NOT NULL,
            busy_seconds DOUBLE NOT NULL,
            idle_held_seconds DOUBLE NOT NULL,
            memory_byte_seconds DOUBLE NOT NULL,
            energy_joules DOUBLE NOT NULL,
            {", ".join(f"util_hist_{i:02d} DOUBLE NOT NULL" for i in range(20))}
        );
        INSERT INTO user_total_day
        SELECT user_name, bucket_ts, sum(held_seconds), sum(util_seconds),
            sum(util_percent_seconds), sum(busy_seconds), sum(idle_held_seconds),
            sum(memory_byte_seconds), sum(energy_joules),
            {", ".join(f"sum(util_hist_{i:02d})" for i in range(20))}
        FROM user_day GROUP BY user_name, bucket_ts;
        """,
    ),
]

# The columns that identify a raw row: a sample is (host, ts); its rows are one per GPU,
# process, disk and XID event. Used by migration 5 (one copy of each) and its tests.
RAW_KEYS = {
    "host_samples": ("host", "ts"),
    "gpu_samples": ("host", "ts", "gpu_index"),
    "process_samples": ("host", "ts", "gpu_index", "pid"),
    "disk_samples": ("host", "ts", "mount"),
    "xid_events": ("host", "ts", "gpu_index", "xid"),
}


def dedupe_raw_sql(row_id: str, hour_of_ts: str) -> str:
    """Migration 5's SQL: before it, a sample re-sent under a new batch id was stored (and
    rolled up) twice. Its hours are marked for a new rollup, then each raw table keeps the
    first copy (lowest ``row_id``: the engine's physical row id columns, comma-separated) of
    every key. ``hour_of_ts``: the SQL of an hour's start."""
    sql = (
        "INSERT INTO rollup_dirty SELECT DISTINCT " + hour_of_ts + " FROM"
        " (SELECT ts FROM host_samples GROUP BY host, ts HAVING count(*) > 1) AS d"
        " ON CONFLICT DO NOTHING;\n"
    )
    for table, key in RAW_KEYS.items():
        cols = ", ".join(key)
        sql += (
            f"DELETE FROM {table} WHERE ({row_id}) IN (SELECT {row_id} FROM"
            f" (SELECT {row_id}, row_number() OVER (PARTITION BY {cols} ORDER BY {row_id}) AS n"
            f" FROM {table}) AS d WHERE n > 1);\n"
        )
    return sql


MIGRATIONS.append(
    Migration(
        5,
        "raw tier: one copy of each sample (host, ts)",
        dedupe_raw_sql("rowid", "CAST(floor(ts / 3600) * 3600 AS BIGINT)"),
    )
)

MIGRATIONS.append(
    Migration(
        6,
        "user mapping: the user's e-mail address (alert notices to the user)",
        "ALTER TABLE user_mapping ADD COLUMN email VARCHAR;",
    )
)

SCHEMA_VERSION = MIGRATIONS[-1].version

# Raw-tier tables that retention prunes by ``ts``.
RAW_TABLES = ("host_samples", "gpu_samples", "process_samples", "disk_samples", "xid_events")
# Warehouse tiers (facts per GPU and per user): gpufleet.store.warehouse.
TIER_TABLES = (
    *(
        f"{kind}_{tier}"
        for kind in ("gpu", "user", "user_peak")
        for tier in ("minute", "hour", "day")
        if not (kind != "gpu" and tier == "minute")
    ),
    "user_total_day",
)
