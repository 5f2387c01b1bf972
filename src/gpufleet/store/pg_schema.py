"""The store's schema on PostgreSQL: the same versions as ``gpufleet.store.schema``.

Each version of ``schema.MIGRATIONS`` is applied here too, so both backends report the same
``schema_version()``. A version listed in ``PG_SQL`` uses that PostgreSQL DDL (version 1 makes
the raw tier time-partitioned); any other version runs its DuckDB DDL translated by
``translate()`` (types only). To follow a new DuckDB migration that needs more than new types
(partitioning, indexes, DuckDB-only SQL), add its version to ``PG_SQL``.

Raw-tier tables are partitioned by range on ``ts`` (Unix seconds, double precision), one
partition per UTC day, named ``<table>_pYYYYMMDD``. The store creates partitions ahead and on
demand for late data (``partition_ddl``); retention drops whole partitions.
"""

from __future__ import annotations

import datetime as dt
import re

from gpufleet.store.schema import MIGRATIONS, RAW_TABLES, Migration, dedupe_raw_sql

DAY_SECONDS = 86400
# Key of the advisory locks that serialise migrations and partition DDL across processes.
LOCK_MIGRATE = 0x67_70_66_6D  # "gpfm"
LOCK_PARTITIONS = 0x67_70_66_70  # "gpfp"
LOCK_ROLLUP = 0x67_70_66_72  # "gpfr"

_V1_RAW = """
CREATE TABLE host_samples (
    host text NOT NULL,
    ts double precision NOT NULL,
    interval_seconds real NOT NULL,
    cpu_percent real,
    load1 real,
    load5 real,
    load15 real,
    memory_total_bytes bigint,
    memory_used_bytes bigint,
    memory_available_bytes bigint,
    swap_total_bytes bigint,
    swap_used_bytes bigint,
    disk_total_bytes bigint,
    disk_used_bytes bigint,
    net_rx_bytes_per_second double precision,
    net_tx_bytes_per_second double precision,
    uptime_seconds double precision,
    users integer,
    gpus integer,
    errors text
) PARTITION BY RANGE (ts);
CREATE INDEX host_samples_host_ts ON host_samples (host, ts);
CREATE TABLE gpu_samples (
    host text NOT NULL,
    ts double precision NOT NULL,
    gpu_index smallint NOT NULL,
    uuid text,
    name text,
    utilization_gpu_percent real,
    utilization_memory_percent real,
    memory_used_bytes bigint,
    memory_total_bytes bigint,
    temperature_celsius real,
    power_watts real,
    power_limit_watts real,
    fan_percent real,
    sm_clock_hertz double precision,
    pstate smallint,
    ecc_uncorrected_volatile bigint,
    xid_events integer NOT NULL,
    processes integer NOT NULL,
    error text
) PARTITION BY RANGE (ts);
CREATE INDEX gpu_samples_host_ts ON gpu_samples (host, ts);
CREATE TABLE process_samples (
    host text NOT NULL,
    ts double precision NOT NULL,
    gpu_index smallint NOT NULL,
    pid integer NOT NULL,
    user_name text,
    uid bigint,
    command text,
    started_at double precision,
    gpu_memory_bytes bigint,
    container_id text,
    container_name text
) PARTITION BY RANGE (ts);
CREATE TABLE disk_samples (
    host text NOT NULL,
    ts double precision NOT NULL,
    mount text NOT NULL,
    total_bytes bigint NOT NULL,
    used_bytes bigint NOT NULL
) PARTITION BY RANGE (ts);
CREATE TABLE xid_events (
    host text NOT NULL,
    ts double precision NOT NULL,
    gpu_index smallint NOT NULL,
    xid integer NOT NULL
) PARTITION BY RANGE (ts);
"""

PG_SQL: dict[int, str] = {
    1: """
    CREATE TABLE agent_tokens (
        id text PRIMARY KEY,
        name text NOT NULL UNIQUE,
        secret_sha256 text NOT NULL,
        created_at double precision NOT NULL,
        revoked_at double precision
    );
    -- One row per accepted batch (its 128-bit key), for idempotent ingest.
    CREATE TABLE batches (
        id uuid PRIMARY KEY,
        received_at double precision NOT NULL,
        samples integer NOT NULL
    );
    CREATE INDEX batches_received_at ON batches (received_at);
    CREATE TABLE hosts (
        name text PRIMARY KEY,
        source text NOT NULL,
        token_name text,
        first_seen double precision NOT NULL,
        last_seen double precision NOT NULL,
        last_received double precision NOT NULL,
        interval_seconds double precision NOT NULL,
        agent_version text,
        clock_skew_seconds double precision,
        last_sample json NOT NULL
    );
    """
    + _V1_RAW,
    2: """
    CREATE TABLE users (
        name text PRIMARY KEY,
        password_hash text NOT NULL,
        role text NOT NULL,
        created_at double precision NOT NULL,
        last_login double precision
    );
    """,
    # Raw tables are partitioned: a row is (partition, ctid). Copies of one sample share ts,
    # so they are in one partition.
    5: dedupe_raw_sql("tableoid, ctid", "(floor(ts / 3600) * 3600)::bigint"),
}

# DuckDB type -> PostgreSQL type, for migrations without their own PostgreSQL DDL.
_TYPES = {
    "VARCHAR": "text",
    "DOUBLE": "double precision",
    "UTINYINT": "smallint",
    "USMALLINT": "integer",
    "UINTEGER": "bigint",
    "UBIGINT": "numeric(20)",
    "TINYINT": "smallint",
    "HUGEINT": "numeric(39)",
    "BLOB": "bytea",
    "JSON": "json",
}
_TYPE_RE = re.compile(r"\b(" + "|".join(_TYPES) + r")\b")


def translate(duck_sql: str) -> str:
    """DuckDB DDL with its types mapped to PostgreSQL's (comments are left alone)."""
    out = []
    for line in duck_sql.splitlines():
        code, sep, comment = line.partition("--")
        out.append(_TYPE_RE.sub(lambda m: _TYPES[m.group(1)], code) + sep + comment)
    return "\n".join(out)


# PostgreSQL-only statements run after a version's DDL: the warehouse tiers are read and
# rewritten by bucket range (DuckDB's zone maps do that without an index).
PG_AFTER: dict[int, str] = {
    4: "".join(
        f"CREATE INDEX {t}_bucket ON {t} (bucket_ts);\n"
        for t in (
            "gpu_minute", "gpu_hour", "gpu_day", "user_hour", "user_day", "user_peak_hour",
            "user_peak_day", "user_total_day",
        )
    ),
}  # fmt: skip


def migrations() -> list[Migration]:
    """Every version of ``schema.MIGRATIONS``, with its PostgreSQL DDL."""
    return [
        Migration(
            m.version,
            m.description,
            (PG_SQL.get(m.version) or translate(m.sql)) + "\n" + PG_AFTER.get(m.version, ""),
        )
        for m in MIGRATIONS
    ]


# -- partitions ----------------------------------------------------------------------------------


def day_of(ts: float) -> int:
    """The UTC day number (days since 1970-01-01) of a Unix time."""
    return int(ts // DAY_SECONDS)


def partition_name(table: str, day: int) -> str:
    return f"{table}_p{dt.date(1970, 1, 1) + dt.timedelta(days=day):%Y%m%d}"


_PART_RE = re.compile(r"^(?P<table>" + "|".join(RAW_TABLES) + r")_p(?P<date>\d{8})$")


def parse_partition(name: str) -> tuple[str, int] | None:
    """(table, day) of a partition name this module made, else None."""
    m = _PART_RE.match(name)
    if m is None:
        return None
    day = dt.datetime.strptime(m["date"], "%Y%m%d").date() - dt.date(1970, 1, 1)
    return m["table"], day.days


def partition_ddl(table: str, day: int) -> str:
    lo, hi = day * DAY_SECONDS, (day + 1) * DAY_SECONDS
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(table, day)} PARTITION OF {table}"
        f" FOR VALUES FROM ({lo}) TO ({hi})"
    )


LIST_PARTITIONS = """
    SELECT c.relname FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_class p ON p.oid = i.inhparent
    WHERE p.relname = ANY(%s) AND p.relnamespace = current_schema()::regnamespace
"""
