"""Copy an embedded (DuckDB) store into PostgreSQL, all or nothing (``gpufleet migrate-store``).

Every table both stores have (tokens, users, hosts, batch keys, the raw tier and whatever later
migrations add) is copied with ``COPY`` in one PostgreSQL transaction, and the row counts are
compared before it commits: a failed or interrupted copy leaves the target as empty as it was,
so running it again is safe. A target that already holds data is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from gpufleet.store import pg_schema
from gpufleet.store.base import StoreError
from gpufleet.store.postgres import PostgresStore, connect, redact
from gpufleet.store.schema import RAW_TABLES

# Copied first, in this order; any other table both schemas have follows, by name.
FIRST = ("agent_tokens", "users", "hosts", "batches", *RAW_TABLES)
CHUNK_ROWS = 20_000


class TargetNotEmpty(StoreError):
    """The PostgreSQL database already holds gpufleet data."""


def _scalar(con: Any, sql: str) -> Any:
    """The one value a query answers (a count, an EXISTS)."""
    row = con.execute(sql).fetchone()
    assert row is not None, sql
    return row[0]


def duckdb_path(source: str) -> Path:
    if source.startswith(("postgresql://", "postgres://")):
        raise StoreError("--from must be an embedded store (a DuckDB file), not a PostgreSQL URL")
    path = Path(source.removeprefix("duckdb://"))
    if not path.is_file():
        raise StoreError(f"no store at {path}")
    return path


def _target_tables(con: psycopg.Connection) -> dict[str, list[str]]:
    """Table -> columns (in order) of the target schema, partitions left out."""
    rows = con.execute(
        "SELECT c.relname, a.attname FROM pg_class c"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')"
        " AND NOT c.relispartition ORDER BY c.relname, a.attnum"
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    out.pop("schema_migrations", None)
    return out


def copy_to_postgres(
    source: str, target_url: str, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, int]:
    """Copy the DuckDB store at ``source`` into the (empty) PostgreSQL database at
    ``target_url``; returns rows copied per table. ``progress(table, rows, total_rows)`` is
    called as rows go. Raises StoreError (TargetNotEmpty when the target has data)."""
    path = duckdb_path(source)
    from gpufleet.store.duck import DuckDBStore

    DuckDBStore(path).close()  # brings an older store up to this version's schema
    PostgresStore(target_url).close()  # creates (or upgrades) the schema
    src = duckdb.connect(str(path), read_only=True)
    con = connect(target_url)
    try:
        target = _target_tables(con)
        src_tables = {
            r[0]: [c[0] for c in src.execute(f"DESCRIBE {r[0]}").fetchall()]
            for r in src.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        }
        tables = [t for t in FIRST if t in target and t in src_tables]
        tables += sorted(t for t in target if t in src_tables and t not in tables)
        for t in tables:
            if _scalar(con, f"SELECT EXISTS (SELECT 1 FROM {t})"):
                raise TargetNotEmpty(f"the target {redact(target_url)} is not empty ({t} has rows)")
        counts = {t: _scalar(src, f"SELECT count(*) FROM {t}") for t in tables}
        total = sum(counts.values())

        days: set[int] = set()
        for t in RAW_TABLES:
            if t in tables:
                rows = src.execute(f"SELECT DISTINCT floor(ts / 86400)::BIGINT FROM {t}")
                days.update(int(r[0]) for r in rows.fetchall())
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", [pg_schema.LOCK_PARTITIONS])
            for t in RAW_TABLES:
                for day in sorted(days):
                    con.execute(pg_schema.partition_ddl(t, day))

        done = 0
        with con.transaction(), con.cursor() as cur:
            for t in tables:
                columns = ", ".join(c for c in target[t] if c in src_tables[t])
                result = src.execute(f"SELECT {columns} FROM {t}")
                with cur.copy(f"COPY {t} ({columns}) FROM STDIN") as copy:
                    while chunk := result.fetchmany(CHUNK_ROWS):
                        for row in chunk:
                            copy.write_row(row)
                        done += len(chunk)
                        if progress is not None:
                            progress(t, done, total)
            for t in tables:  # verified before the commit: a mismatch leaves nothing behind
                got = _scalar(cur, f"SELECT count(*) FROM {t}")
                if got != counts[t]:
                    raise StoreError(f"{t}: copied {got} rows of {counts[t]}; nothing was kept")
        return counts
    except psycopg.Error as exc:
        raise StoreError(f"copy into {redact(target_url)} failed, nothing was kept: {exc}") from exc
    finally:
        con.close()
        src.close()
