"""PostgreSQL backend: the ``Store`` interface for several server processes sharing one database.

Same semantics as the embedded DuckDB store (``duck.py``): one writer thread per process with
group commits (whatever queued up while the previous commit ran lands in one transaction, raw
rows through ``COPY``), every batch acknowledged only after its commit, idempotent by batch key
(``INSERT ... ON CONFLICT DO NOTHING RETURNING`` on ``batches``, which also settles races
between processes), nothing partial stored. Reads run on a small pool of autocommit
connections. Raw tables are partitioned by day on ``ts`` (``pg_schema``): the writer creates
partitions ahead and on demand for late data, retention drops whole partitions.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from gpufleet.config import redact_url
from gpufleet.store import groupcommit, pg_schema, warehouse
from gpufleet.store.base import (
    STOP,
    HostRecord,
    IngestItem,
    Store,
    StoreError,
    UserRecord,
    WriterQueue,
)
from gpufleet.store.rows import (
    TABLE_COLUMNS,
    SampleKey,
    batch_key,
    flatten,
    key_ranges,
    note_host,
    unique_samples,
)
from gpufleet.store.schema import RAW_TABLES
from gpufleet.store.sqlreads import SqlReads
from gpufleet.store.waiters import resolve

log = logging.getLogger(__name__)

MAX_GROUP = 512  # batches in one transaction
# Group-commit window, as in duck.py: a transaction starts at most this long after the
# previous one began, gathering what arrives meanwhile.
COMMIT_INTERVAL_SECONDS = 0.05
# The hosts table (each host's newest sample) is derived state, written at most this often.
HOSTS_FLUSH_SECONDS = 1.0
PARTITIONS_AHEAD_DAYS = 2  # daily partitions made before their day starts
READ_CONNECTIONS = 8

_HOST_ROW = (
    "name", "source", "token_name", "first_seen", "last_seen", "last_received",
    "interval_seconds", "agent_version", "clock_skew_seconds", "last_sample",
)  # fmt: skip
_UPSERT_HOSTS = f"""
    INSERT INTO hosts ({", ".join(_HOST_ROW)})
    SELECT n, s, tn, fs, ls, lr, iv, av, cs, smp::json
    FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[], %s::float8[],
                %s::float8[], %s::text[], %s::float8[], %s::text[])
        AS t(n, s, tn, fs, ls, lr, iv, av, cs, smp)
    ON CONFLICT (name) DO UPDATE SET
        source = excluded.source,
        token_name = excluded.token_name,
        first_seen = least(hosts.first_seen, excluded.first_seen),
        last_received = greatest(hosts.last_received, excluded.last_received),
        agent_version = excluded.agent_version,
        clock_skew_seconds = excluded.clock_skew_seconds,
        interval_seconds = CASE WHEN excluded.last_seen >= hosts.last_seen
            THEN excluded.interval_seconds ELSE hosts.interval_seconds END,
        last_sample = CASE WHEN excluded.last_seen >= hosts.last_seen
            THEN excluded.last_sample ELSE hosts.last_sample END,
        last_seen = greatest(hosts.last_seen, excluded.last_seen)
"""
_INSERT_BATCHES = """
    INSERT INTO batches (id, received_at, samples)
    SELECT k, %s, n FROM unnest(%s::uuid[], %s::integer[]) AS t(k, n)
    ON CONFLICT DO NOTHING RETURNING id
"""


redact = redact_url  # the URL without its password, for messages and logs


def _stored_sample_keys(cur: psycopg.Cursor, keys: list[SampleKey]) -> set[SampleKey]:
    """Which of ``keys`` (host, sample time) ``host_samples`` already holds: an index lookup
    (host, ts) within each run's time range, so only that day's partitions are searched."""
    found: set[SampleKey] = set()
    for lo, hi, members in key_ranges(keys):
        rows = cur.execute(
            "SELECT h.host, h.ts FROM host_samples h"
            " JOIN unnest(%s::text[], %s::double precision[]) AS k(host, ts)"
            " ON h.host = k.host AND h.ts = k.ts WHERE h.ts BETWEEN %s AND %s",
            [[k[0] for k in members], [k[1] for k in members], lo, hi],
        ).fetchall()
        found.update((r[0], r[1]) for r in rows)
    return found


def connect(url: str, **kw: Any) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, **kw)
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot connect to PostgreSQL at {redact(url)}: {exc}".strip().replace("\n", " ")
        ) from exc


class _Pool:
    """At most ``size`` autocommit connections for reads; broken ones are replaced."""

    def __init__(self, url: str, size: int) -> None:
        self._url = url
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self._slots:
            with self._lock:
                con = self._idle.pop() if self._idle else None
            if con is None or con.closed or con.broken:
                con = connect(self._url)
            try:
                yield con
            finally:
                if con.broken or con.info.transaction_status != TransactionStatus.IDLE:
                    con.close()
                else:
                    with self._lock:
                        self._idle.append(con)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for con in idle:
            con.close()


class PostgresStore(warehouse.WarehouseMixin, SqlReads, Store):
    PARAM, NULL_KEY, FLOAT, LOCK = "%s", "NULL::smallint", "::float8", " FOR UPDATE"
    DIALECT = warehouse.POSTGRES

    def __init__(self, url: str, read_connections: int = READ_CONNECTIONS) -> None:
        self.url = url
        self.path = redact(url)  # what logs and errors show
        self._con = connect(url)  # the writer's; used by the writer thread once it starts
        self._migrate()
        self._parts = self._load_partitions(self._con)
        self._pool = _Pool(url, read_connections)
        self._queue = WriterQueue()
        self._pending_hosts: dict[str, list[Any]] = {}  # as in duck.py; writer thread only
        self._hosts_due = 0.0
        # hosts with a row: a new host's row is written with its first sample, in the same
        # transaction, so that a crash before the next flush cannot leave a stored, acknowledged
        # sample whose host is missing from the hosts list (later updates wait for the flush)
        self._known_hosts = {r[0] for r in self._con.execute("SELECT name FROM hosts")}
        self.commits = 0
        self.batches_stored = 0
        self.batches_duplicate = 0
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    # -- schema -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        con = self._con
        con.execute("SELECT pg_advisory_lock(%s)", [pg_schema.LOCK_MIGRATE])
        try:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version integer PRIMARY KEY, description text, applied_at double precision)"
            )
            applied = {r[0] for r in con.execute("SELECT version FROM schema_migrations")}
            for m in pg_schema.migrations():
                if m.version in applied:
                    continue
                with con.transaction():
                    con.execute(m.sql)
                    con.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                        [m.version, m.description, time.time()],
                    )
                log.info("store %s: applied migration %d (%s)", self.path, m.version, m.description)
        except psycopg.Error as exc:
            raise StoreError(f"cannot migrate the store {self.path}: {exc}") from exc
        finally:
            if not con.broken:
                con.execute("SELECT pg_advisory_unlock(%s)", [pg_schema.LOCK_MIGRATE])

    def schema_version(self) -> int:
        return int(self._read("SELECT max(version) FROM schema_migrations")[0][0])

    # -- partitions ---------------------------------------------------------------------------

    @staticmethod
    def _load_partitions(con: psycopg.Connection) -> set[tuple[str, int]]:
        rows = con.execute(pg_schema.LIST_PARTITIONS, [list(RAW_TABLES)]).fetchall()
        return {p for (name,) in rows if (p := pg_schema.parse_partition(name)) is not None}

    def _ensure_partitions(self, con: psycopg.Connection, days: set[int]) -> None:
        """Create the daily partitions of every raw table for ``days`` and the days ahead, in
        their own transaction (an empty partition left behind is harmless)."""
        today = pg_schema.day_of(time.time())
        days = days | set(range(today, today + PARTITIONS_AHEAD_DAYS + 1))
        missing = sorted((t, d) for d in days for t in RAW_TABLES if (t, d) not in self._parts)
        if not missing:
            return
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(%s)", [pg_schema.LOCK_PARTITIONS])
            for table, day in missing:
                con.execute(pg_schema.partition_ddl(table, day))
        self._parts.update(missing)

    # -- the writer ---------------------------------------------------------------------------

    def submit(self, item: IngestItem) -> concurrent.futures.Future[bool]:
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._queue.put((item, fut))
        return fut

    def write(self, fn: Callable[[psycopg.Cursor], Any]) -> Any:
        """Run ``fn(cursor)`` on the writer thread in one transaction and return its result."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, fut))
        return fut.result()

    def _write_loop(self) -> None:
        def after_round() -> None:
            if self._pending_hosts and time.monotonic() >= self._hosts_due:
                self._run_task(lambda cur: None, concurrent.futures.Future())

        groupcommit.run(
            self._queue,
            is_item=lambda task: isinstance(task[0], IngestItem),
            commit=self._ingest_group,
            run_task=lambda task: self._run_task(*task),
            window=lambda: COMMIT_INTERVAL_SECONDS,
            max_group=MAX_GROUP,
            after_round=after_round,
        )
        self._con.close()

    def _writer_con(self) -> psycopg.Connection:
        """The writer's connection, reconnected after the server went away."""
        if self._con.closed or self._con.broken:
            self._con.close()
            self._con = connect(self.url)
            self._parts = self._load_partitions(self._con)
        return self._con

    def _run_task(
        self, fn: Callable[[psycopg.Cursor], Any], fut: concurrent.futures.Future[Any]
    ) -> None:
        try:
            con = self._writer_con()
            with con.transaction(), con.cursor() as cur:
                result = fn(cur)
                if self._pending_hosts:
                    self._flush_hosts(cur)
        except BaseException as exc:
            resolve(fut, None, exc)
        else:
            resolve(fut, result, None)

    def _ingest_group(self, group: list[groupcommit.Task]) -> None:
        """Commit a group of ``(IngestItem, future)`` tasks."""
        try:
            results = self._ingest_txn([item for item, _ in group])
        except Exception as exc:
            if isinstance(exc, StoreError | psycopg.OperationalError) or self._con.broken:
                # The database is unreachable: every batch fails now (agents keep it spooled
                # and retry), rather than one connection attempt per batch.
                log.error("store: %d batch(es) not stored: %s", len(group), exc)
                for _, fut in group:
                    resolve(fut, None, StoreError(f"store write failed: {exc}"))
                return
            with contextlib.suppress(Exception):  # another process may have dropped some
                self._parts = self._load_partitions(self._writer_con())
            if len(group) == 1:
                log.exception("store: batch %s not stored", group[0][0].batch.batch_id)
                resolve(group[0][1], None, StoreError(f"store write failed: {exc}"))
                return
            for one in group:  # one bad batch must not sink the others: retry each alone
                self._ingest_group([one])
            return
        for (item, fut), stored in zip(group, results, strict=True):
            if stored:  # noted after the commit, so the hosts table never shows a lost sample
                for smp in item.batch.samples:
                    note_host(self._pending_hosts, item, smp)
            resolve(fut, stored, None)

    def _ingest_txn(self, items: list[IngestItem]) -> list[bool]:
        con = self._writer_con()
        keys = [batch_key(i.batch.batch_id) for i in items]
        first: dict[Any, int] = {}  # a batch sent twice within one group: the first one counts
        for n, key in enumerate(keys):
            first.setdefault(key, n)
        once = sorted(first.values())
        days = {
            pg_schema.day_of(ts)
            for i in items
            for s in i.batch.samples
            for ts in (s.ts, *(ev.ts for g in s.gpus for ev in g.xid_events))
        }
        self._ensure_partitions(con, days)
        with con.transaction(), con.cursor() as cur:
            inserted = set(
                r[0]
                for r in cur.execute(
                    _INSERT_BATCHES,
                    [
                        items[0].received_at,
                        [keys[n] for n in once],
                        [len(items[n].batch.samples) for n in once],
                    ],
                ).fetchall()
            )
            fresh = [key in inserted and first[key] == n for n, key in enumerate(keys)]
            new_items = [item for item, f in zip(items, fresh, strict=True) if f]
            added: dict[str, list[Any]] = {}
            if new_items:
                self._copy_rows(cur, new_items)
                self._warehouse_note_late(cur, new_items)
                for item in new_items:
                    for smp in item.batch.samples:
                        if smp.host not in self._known_hosts:
                            note_host(added, item, smp)
                if added:
                    _upsert_hosts(cur, list(added.values()))
        self._known_hosts.update(added)
        self.commits += 1
        self.batches_stored += len(new_items)
        self.batches_duplicate += len(items) - len(new_items)
        return fresh

    @staticmethod
    def _copy_rows(cur: psycopg.Cursor, items: list[IngestItem]) -> None:
        cols = flatten(unique_samples(items, lambda keys: _stored_sample_keys(cur, keys)))
        for table, columns in cols.items():
            if not columns["host"]:
                continue
            names = TABLE_COLUMNS[table]
            with cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
                for row in zip(*(columns[c] for c in names), strict=True):
                    copy.write_row(row)

    def _flush_hosts(self, cur: psycopg.Cursor) -> None:
        """Upsert the hosts seen since the last flush, in one statement."""
        _upsert_hosts(cur, list(self._pending_hosts.values()))
        self._pending_hosts.clear()
        self._hosts_due = time.monotonic() + HOSTS_FLUSH_SECONDS

    # -- reads --------------------------------------------------------------------------------

    def _read(self, sql: str, params: list | None = None) -> list[tuple]:
        for attempt in (1, 2):  # a pooled connection the server dropped is replaced, once
            try:
                with self._pool.connection() as con:
                    return con.execute(sql, params).fetchall()
            except psycopg.OperationalError as exc:
                if attempt == 2 or not con.broken:
                    raise StoreError(f"store {self.path}: {exc}") from exc
        raise AssertionError("unreachable")

    def _reader(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(con)`` on a pooled read connection (the warehouse's reads)."""
        for attempt in (1, 2):  # a pooled connection the server dropped is replaced, once
            try:
                with self._pool.connection() as con:
                    return fn(con)
            except psycopg.OperationalError as exc:
                if attempt == 2 or not con.broken:
                    raise StoreError(f"store {self.path}: {exc}") from exc
        raise AssertionError("unreachable")

    def hosts(self) -> list[HostRecord]:
        self.write(lambda cur: None)  # flushes the pending hosts
        rows = self._read(f"SELECT {', '.join(_HOST_ROW)} FROM hosts ORDER BY name")
        return [HostRecord.from_row(r, r[9]) for r in rows]

    def partitions(self) -> list[tuple[str, int]]:
        """(raw table, UTC day number) of every raw-tier partition, in order."""
        with self._pool.connection() as con:
            return sorted(self._load_partitions(con))

    # -- small writes -------------------------------------------------------------------------

    def prune(self, raw_before: float, batches_before: float) -> dict[str, int]:
        def fn(cur):
            # On an hour boundary, never past the rollup watermark or a dirty hour.
            cutoff = warehouse.safe_raw_cutoff(cur, raw_before, warehouse.POSTGRES)
            deleted = {}
            for table in RAW_TABLES:
                n = 0
                whole = sorted(
                    (t, d) for t, d in self._load_partitions(cur.connection)
                    if t == table and (d + 1) * pg_schema.DAY_SECONDS <= cutoff
                )  # fmt: skip
                for part in whole:  # whole days: drop the partition, no row-by-row delete
                    name = pg_schema.partition_name(*part)
                    n += cur.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
                    cur.execute(f"DROP TABLE {name}")
                    self._parts.discard(part)
                n += cur.execute(f"DELETE FROM {table} WHERE ts < %s", [cutoff]).rowcount
                deleted[table] = n
            cur.execute("DELETE FROM batches WHERE received_at < %s", [batches_before])
            deleted["batches"] = cur.rowcount
            return deleted

        return self.write(fn)

    def close(self) -> None:
        if self._writer.is_alive():
            with contextlib.suppress(Exception):
                self.write(lambda cur: None)  # flushes the pending hosts
            self._queue.put(STOP)
            self._writer.join()
        self._pool.close()

    # -- web accounts -------------------------------------------------------------------------

    def create_user(self, user: UserRecord) -> None:
        def fn(cur):
            cur.execute(
                "INSERT INTO users VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [user.name, user.password_hash, user.role, user.created_at, user.last_login],
            )
            if cur.rowcount == 0:
                raise StoreError(f"a user named {user.name!r} already exists")

        self.write(fn)

    def delete_user(self, name: str) -> None:
        def fn(cur):
            if cur.execute("DELETE FROM users WHERE name = %s", [name]).rowcount == 0:
                raise StoreError(f"no user named {name!r}")

        self.write(fn)

    # -- usage warehouse (gpufleet.store.warehouse.WarehouseMixin) -------------------------------

    def _rollup_lock(self, con: Any) -> None:
        """One rollup transaction at a time across server processes; and the watermark row
        locked, so no ingest transaction decides whether its samples are late while the
        watermark moves (ingest reads it FOR SHARE, ``_warehouse_note_late``)."""
        con.execute("SELECT pg_advisory_xact_lock(%s)", [pg_schema.LOCK_ROLLUP])
        con.execute("SELECT value FROM rollup_state WHERE key = 'watermark_ts' FOR UPDATE")

    def _warehouse_note_late(self, cur: psycopg.Cursor, items: list[IngestItem]) -> None:
        """Mark the hours of samples older than the rollup watermark for a re-rollup, in the
        ingest transaction. The watermark is read (and share-locked) every time: another
        server process may have moved it."""
        row = cur.execute(
            "SELECT value FROM rollup_state WHERE key = 'watermark_ts' FOR SHARE"
        ).fetchone()
        if row is None:
            return
        wm = float(row[0])
        late = {int(s.ts // 3600) * 3600 for i in items for s in i.batch.samples if s.ts < wm}
        if late:
            warehouse.mark_dirty(cur, sorted(late), warehouse.POSTGRES)


def _upsert_hosts(cur: psycopg.Cursor, rows: list[list[Any]]) -> None:
    """Upsert ``hosts`` rows (as ``rows.note_host`` builds them) in one statement."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    columns[-1] = [smp.model_dump_json() for smp in columns[-1]]
    cur.execute(_UPSERT_HOSTS, columns)
