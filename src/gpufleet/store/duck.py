"""DuckDB backend: one file, one writer thread, reads on their own cursors.

The writer takes agents' batches in groups (whatever queued up meanwhile), appends each group
to the ingest log and fsyncs it, and only then acknowledges it (gpufleet.store.ingestlog);
an applier thread moves what the log holds into the database a few times a second, in one
transaction each time, inserted as Arrow tables, and runs the store's other tasks in their
turn. A batch id seen before (within the dedupe window) is acknowledged as a duplicate and
stored nothing: the writer knows the ids of the last few minutes (gpufleet.store.recent) and
asks the database only about older-looking batches; the database's primary key makes it
exactly once whatever that answers. Reads first wait for the applier, so a read sees every
acknowledged batch.

Batches an ingest worker logged and acknowledged (``apply_durable``) take a shorter way: they
are durable in the worker's log already and the worker has checked their ids against its own
memory, so the writer neither logs them again (no second fsync) nor asks its memory; it stages
them for the applier with the rest (only the ``batches`` primary key decides, in the
transaction), remembers their ids (a re-send on a connection the server kept is then a
duplicate), and the caller learns when they are committed, so that it deletes the worker's
log only then.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from gpufleet.store import groupcommit, ingestlog, warehouse
from gpufleet.store.base import (
    STOP,
    HostRecord,
    IngestItem,
    Store,
    StoreError,
    UserRecord,
    WriterQueue,
)
from gpufleet.store.recent import RECENT_MARGIN_SECONDS, RecentKeys
from gpufleet.store.rows import (
    TABLE_COLUMNS,
    SampleKey,
    batch_key,
    flatten,
    key_ranges,
    note_host,
    unique_samples,
)
from gpufleet.store.schema import MIGRATIONS, RAW_TABLES
from gpufleet.store.sqlreads import SqlReads
from gpufleet.store.waiters import Waiter, resolve, settle

log = logging.getLogger(__name__)

_ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "DOUBLE": pa.float64(),
    "FLOAT": pa.float32(),
    "REAL": pa.float32(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "UTINYINT": pa.uint8(),
}


# The hosts upsert: one row per host of the group, inserted from an Arrow table.
_HOST_ROW = (
    "name", "source", "token_name", "first_seen", "last_seen", "last_received",
    "interval_seconds", "agent_version", "clock_skew_seconds", "last_sample",
)  # fmt: skip
_HOST_ROW_SCHEMA = pa.schema(
    [
        ("name", pa.string()), ("source", pa.string()), ("token_name", pa.string()),
        ("first_seen", pa.float64()), ("last_seen", pa.float64()),
        ("last_received", pa.float64()), ("interval_seconds", pa.float64()),
        ("agent_version", pa.string()), ("clock_skew_seconds", pa.float64()),
        ("last_sample", pa.string()),
    ]
)  # fmt: skip
_UPSERT_HOSTS = f"""
    INSERT INTO hosts ({", ".join(_HOST_ROW)})
    SELECT {", ".join(_HOST_ROW)} FROM _hosts_in
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
            AND excluded.last_sample IS NOT NULL
            THEN excluded.last_sample ELSE hosts.last_sample END,
        last_seen = greatest(hosts.last_seen, excluded.last_seen)
"""
# the newest full samples, written behind the rows above (see HOST_SAMPLES_FLUSH_SECONDS)
_UPDATE_HOST_SAMPLES = """
    UPDATE hosts SET last_sample = s.last_sample FROM _samples_in s
    WHERE hosts.name = s.name AND s.last_seen >= hosts.last_seen
"""
_HOST_SAMPLES_SCHEMA = pa.schema(
    [("name", pa.string()), ("last_seen", pa.float64()), ("last_sample", pa.string())]
)
MAX_GROUP = 512  # batches in one ingest-log append
LOG_WINDOW_SECONDS = 0.01  # a group gathers for at most this long before its fsync
APPLY_INTERVAL_SECONDS = 0.25  # the ingest log is moved into the database this often...
APPLY_MAX_BATCHES = 5000  # ...or once it holds this many batches
# Group-commit window: an ingest transaction starts at most this long after the previous one
# began, gathering what arrives meanwhile. Each transaction has a fixed cost (DuckDB plans
# every statement, syncs its WAL, checkpoints now and then): measured ~25 ms of CPU on a busy
# 2-core box against ~0.3 ms per batch, so bigger groups save most of the writer's CPU
# (2.7 ms/batch in groups of 10, 0.67 in groups of 50, see docs/benchmarks.md). At 1,000
# batches/s this window makes groups of ~50; it adds at most this much to a batch's latency.
COMMIT_INTERVAL_SECONDS = 0.05
# The hosts table is derived state (live state after a restart; only ``hosts()`` reads it, and
# it writes everything first), so it is written behind the raw tiers, a little at each move
# of the ingest log: a host's row once it has been pending this long, and its newest full
# sample (``hosts.last_sample``, ~7 KB of JSON) once that has been unsaved this long, oldest
# first, at most so many per move. At 5,000 hosts, upserting every row and sample every 5 s
# stalled ingest for ~0.5 s each time (measured); spread out like this, each move writes a
# few dozen rows. After a crash a host's row may lag its raw samples by this much, until its
# next sample mends it; acknowledged samples themselves are never deferred.
HOSTS_FLUSH_SECONDS = 30.0
HOST_SAMPLES_FLUSH_SECONDS = 60.0
HOSTS_PER_FLUSH = 1000
SAMPLES_PER_FLUSH = 250


class _Durable:
    """A writer task: batches durable elsewhere (``DuckDBStore.apply_durable``)."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[IngestItem]) -> None:
        self.items = list(items)


@contextlib.contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[None]:
    """``table`` visible to SQL as ``name`` on ``con`` for the block."""
    con.register(name, table)
    try:
        yield
    finally:
        con.unregister(name)


def _stored_sample_keys(con: duckdb.DuckDBPyConnection, keys: list[SampleKey]) -> set[SampleKey]:
    """Which of ``keys`` (host, sample time) ``host_samples`` already holds. Each run of
    nearby times is looked up within its time range, which DuckDB's zone maps narrow to the
    few row groups written then (no index: one would slow every insert)."""
    found: set[SampleKey] = set()
    for lo, hi, members in key_ranges(keys):
        wanted = pa.table({"host": [k[0] for k in members], "ts": [k[1] for k in members]})
        with _registered(con, "_sample_keys", wanted):
            found.update(
                con.execute(
                    "SELECT h.host, h.ts FROM host_samples h"
                    " JOIN _sample_keys k ON h.host = k.host AND h.ts = k.ts"
                    " WHERE h.ts BETWEEN ? AND ?",
                    [lo, hi],
                ).fetchall()
            )
    return found


def _due(
    since: Iterable[tuple[str, float]], cutoff: float, limit: int, everything: bool
) -> list[str]:
    """The keys of ``(key, since)`` pairs, oldest first, that are due (since at or before
    ``cutoff``), at most ``limit`` of them; every key if ``everything``."""
    if everything:
        return [key for key, _ in since]
    out: list[str] = []
    for key, t in since:
        if t > cutoff or len(out) >= limit:
            break
        out.append(key)
    return out


class DuckDBStore(warehouse.WarehouseMixin, SqlReads, Store):
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._cursor_lock = threading.Condition()
        self._readers = 0  # read cursors in use; close() waits for them
        self._closed = False
        try:
            self._db = duckdb.connect(self.path)
        except duckdb.IOException as exc:
            raise StoreError(
                f"cannot open the store {self.path}: {exc}".replace("\n", " ")
            ) from exc
        self._migrate()
        self._schemas = {
            table: pa.schema([(c, _ARROW_TYPES[self._column_types(table)[c]]) for c in columns])
            for table, columns in TABLE_COLUMNS.items()
        }
        # Tables whose columns are exactly TABLE_COLUMNS, in order, take Arrow tables directly.
        self._same_order = {
            table: list(self._column_types(table)) == list(columns)
            for table, columns in TABLE_COLUMNS.items()
        }
        self._queue = WriterQueue()
        # Acknowledged batches not yet in the database (see gpufleet.store.ingestlog): staged
        # (writer thread), then handed to the applier thread, whose queue also carries the
        # store's tasks (writes, reads' syncs) in order. _log is None for an in-memory store.
        self._staged: list[IngestItem] = []
        self._staged_waiters: list[Waiter] = []  # settled once the staged batches are in
        self._apply_due = 0.0
        self._apply_idle = threading.Event()
        self._apply_idle.set()
        self._apply_queue: queue.Queue[Any] = queue.Queue()
        self._log = (
            ingestlog.IngestLog(Path(self.path + ".ingest-log"))
            if self.path != ":memory:"
            else None
        )
        # host -> [row values in _HOST_ROW order, with the Sample in place of its JSON]; these
        # four are touched by the thread that inserts raw rows only (the applier; the writer
        # for an in-memory store)
        self._pending_hosts: dict[str, list[Any]] = {}
        self._pending_since: dict[str, float] = {}  # host -> when it became pending (FIFO)
        # host -> [last_seen, Sample, since]: its newest sample, not yet in hosts.last_sample
        self._unsaved_samples: dict[str, list[Any]] = {}
        self._known_hosts = {r[0] for r in self._db.execute("SELECT name FROM hosts").fetchall()}
        self.commits = 0  # transactions committed by the writer (for /metrics)
        self.batches_stored = 0
        self.batches_duplicate = 0
        self._replay_log()
        self._recent = RecentKeys()  # batch keys acknowledged lately (writer thread)
        since = time.time() - self._recent.window
        rows = self._db.execute("SELECT id FROM batches WHERE received_at >= ?", [since])
        self._recent.add(r[0].bytes for r in rows.fetchall())
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()
        self._applier = threading.Thread(target=self._apply_loop, name="store-apply", daemon=True)
        if self._log is not None:
            self._applier.start()

    # -- schema -------------------------------------------------------------------------------

    def _migrate(self) -> None:
        con = self._db
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, description VARCHAR, applied_at DOUBLE)"
        )
        applied = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
        for m in MIGRATIONS:
            if m.version in applied:
                continue
            con.execute("BEGIN")
            try:
                con.execute(m.sql)
                con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    [m.version, m.description, time.time()],
                )
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            log.info("store %s: applied migration %d (%s)", self.path, m.version, m.description)

    def _column_types(self, table: str) -> dict[str, str]:
        rows = self._db.execute(f"DESCRIBE {table}").fetchall()
        return {r[0]: r[1] for r in rows}

    def schema_version(self) -> int:
        row = self._read("SELECT max(version) FROM schema_migrations")
        return int(row[0][0])

    # -- the writer ---------------------------------------------------------------------------

    def _replay_log(self) -> None:
        """Move into the database what the ingest log kept from the previous run."""
        if self._log is None or not self._log.leftovers:
            return
        items = [it for path in self._log.leftovers for it in ingestlog.read_records(path)]
        con = self._db.cursor()
        try:
            for start in range(0, len(items), APPLY_MAX_BATCHES):
                self._ingest_txn(con, items[start : start + APPLY_MAX_BATCHES])
            self._flush_all_hosts(con)
        finally:
            con.close()
        self._log.drop_leftovers()
        log.info(
            "store %s: moved %d batch(es) left in the ingest log into the database",
            self.path, len(items),
        )  # fmt: skip

    def submit(self, item: IngestItem) -> concurrent.futures.Future[bool]:
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._queue.put((item, fut))
        return fut

    async def ingest(self, item: IngestItem) -> bool:
        # The writer settles a whole group's waiters with one wake-up of the event loop,
        # instead of a thread-safe future and a call into the loop per batch.
        waiter = Waiter.here()
        self._queue.put((item, waiter))
        return await waiter.future

    def apply_durable(self, items: Sequence[IngestItem]) -> asyncio.Future[Any]:
        waiter = Waiter.here()
        self._queue.put((_Durable(items), waiter))
        return waiter.future

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        """Run ``fn(con)`` on the writer thread in one transaction and return its result."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, fut))
        return fut.result()

    def _write_loop(self) -> None:
        con = self._db.cursor()

        def run_task(task: groupcommit.Task) -> None:
            if isinstance(task[0], _Durable):
                self._stage_durable(con, task[0].items, task[1])
            else:
                self._run_or_forward(con, task)

        def after_round() -> None:
            if self._staged and (
                time.monotonic() >= self._apply_due or len(self._staged) >= APPLY_MAX_BATCHES
            ):
                self._hand_off()

        groupcommit.run(
            self._queue,
            is_item=lambda task: isinstance(task[0], IngestItem),
            commit=lambda group: self._ingest_group(con, group),
            run_task=run_task,
            window=lambda: self._window,
            max_group=MAX_GROUP,
            # staged batches wait at most until they are due for the applier
            idle_seconds=lambda: (
                max(0.01, self._apply_due - time.monotonic()) if self._staged else None
            ),
            on_idle=self._hand_off,
            after_round=after_round,
        )
        if self._log is not None:
            self._hand_off(force=True)
            self._apply_queue.put(None)
            self._applier.join()
            self._log.close()
        con.close()

    @property
    def _window(self) -> float:
        return COMMIT_INTERVAL_SECONDS if self._log is None else LOG_WINDOW_SECONDS

    def _run_task(
        self,
        con: duckdb.DuckDBPyConnection,
        fn: Callable[[duckdb.DuckDBPyConnection], Any],
        fut: concurrent.futures.Future[Any],
    ) -> None:
        con.execute("BEGIN")
        try:
            result = fn(con)
            con.execute("COMMIT")
        except BaseException as exc:
            con.execute("ROLLBACK")
            resolve(fut, None, exc)
        else:
            resolve(fut, result, None)

    def _ingest_group(self, con: duckdb.DuckDBPyConnection, group: list[groupcommit.Task]) -> None:
        if self._log is not None:
            self._log_group(con, group)
            return
        try:
            results = self._ingest_txn(con, [item for item, _ in group])
        except Exception as exc:
            if len(group) == 1:
                log.exception("store: batch %s not stored", group[0][0].batch.batch_id)
                settle([(group[0][1], None, StoreError(f"store write failed: {exc}"))])
                return
            # One bad batch must not sink the others: retry each alone.
            for one in group:
                self._ingest_group(con, [one])
            return
        settle([(fut, stored, None) for (_, fut), stored in zip(group, results, strict=True)])

    def _log_group(self, con: duckdb.DuckDBPyConnection, group: list[groupcommit.Task]) -> None:
        """Acknowledge a group once it is in the ingest log (fsync'd); the database follows.
        A batch is a duplicate if its id was acknowledged in the last few minutes (memory,
        see gpufleet.store.recent) or, only for a batch that looks older than that, if the
        database has it."""
        items = [item for item, _ in group]
        keys = [batch_key(i.batch.batch_id).bytes for i in items]
        now = time.time()
        try:
            recent = self._recent  # every key logged in the last minutes, staged ones too
            old = [
                k
                for k, item in zip(keys, items, strict=True)
                if k not in recent and not recent.made_within(item, now, RECENT_MARGIN_SECONDS)
            ]
            stored = {
                r[0].bytes
                for r in con.execute(
                    "SELECT id FROM batches WHERE id IN (SELECT unnest(?::UUID[]))",
                    [[str(uuid.UUID(bytes=k)) for k in dict.fromkeys(old)]],
                ).fetchall()
            } if old else set()  # fmt: skip
            fresh, seen = [], set()
            for key in keys:  # a batch twice in one group: the first one counts
                fresh.append(key not in recent and key not in stored and key not in seen)
                seen.add(key)
            new_items = [item for item, f in zip(items, fresh, strict=True) if f]
            assert self._log is not None
            if new_items:
                self._log.append([ingestlog.encode(item) for item in new_items])
        except Exception as exc:
            log.exception(
                "store: ingest log append failed; %d batch(es) not acknowledged", len(items)
            )
            failure = StoreError(f"store write failed: {exc}")
            settle([(fut, None, failure) for _, fut in group])
            return
        if not self._staged:
            self._apply_due = time.monotonic() + APPLY_INTERVAL_SECONDS
        self._staged.extend(new_items)
        new_keys = [k for k, f in zip(keys, fresh, strict=True) if f]
        recent.add(new_keys, now)
        self.batches_duplicate += len(items) - len(new_items)
        settle([(fut, f, None) for (_, fut), f in zip(group, fresh, strict=True)])

    def _stage_durable(
        self, con: duckdb.DuckDBPyConnection, items: list[IngestItem], waiter: Waiter
    ) -> None:
        """Batches durable in an ingest worker's log: staged for the applier as they are (see
        the module's doc); ``waiter`` is settled once they are committed."""
        if not items:
            settle([(waiter, None, None)])
            return
        if self._log is None:  # an in-memory store: straight into the database
            try:
                self._ingest_txn(con, items)
            except Exception as exc:
                settle([(waiter, None, StoreError(f"store write failed: {exc}"))])
            else:
                settle([(waiter, None, None)])
            return
        if not self._staged:
            self._apply_due = time.monotonic() + APPLY_INTERVAL_SECONDS
        self._staged.extend(items)
        self._staged_waiters.append(waiter)
        self._recent.add(batch_key(item.batch.batch_id).bytes for item in items)

    def _hand_off(self, force: bool = False) -> None:
        """Give the staged batches to the applier thread. Unless ``force``d, only when it is
        idle (otherwise they go with a later, bigger hand-off); new ones are logged to a fresh
        file meanwhile. Never waits: the writer goes on acknowledging."""
        if not self._staged or not (force or self._apply_idle.is_set()):
            return
        assert self._log is not None
        path = self._log.rotate()
        self._apply_idle.clear()
        self._apply_queue.put((self._staged, path, self._staged_waiters))
        self._staged, self._staged_waiters = [], []

    def _run_or_forward(self, con: duckdb.DuckDBPyConnection, task: groupcommit.Task) -> None:
        """A store task (a write, or a read's sync): with an ingest log it runs on the applier
        thread, after every batch acknowledged so far is in the database; the writer goes on
        acknowledging ingest meanwhile, however long the task (a rollup) takes."""
        if self._log is None:
            self._run_task(con, *task)
            return
        self._hand_off(force=True)
        self._apply_queue.put(task)

    def _apply_loop(self) -> None:
        """The applier thread: moves handed-off batches into the database, one transaction
        each time, then deletes the log file that held them; and runs the store's tasks in
        their turn. A failure keeps the batches (logged, retried); the writer keeps
        acknowledging into the log meanwhile."""
        con = self._db.cursor()
        while (job := self._apply_queue.get()) is not None:
            if callable(job[0]):  # a task: every batch handed off before it is in
                self._run_task(con, *job)
                if self._apply_queue.empty():
                    self._apply_idle.set()
                continue
            items, path, waiters = job
            failures = 0
            while True:
                try:
                    self._ingest_txn(con, items)
                    break
                except Exception:
                    if failures == 0:
                        log.exception(
                            "store: moving %d batch(es) into the database failed", len(items)
                        )
                    if self._apply_one_by_one(con, items):
                        break
                    failures += 1
                    time.sleep(min(30.0, 0.5 * 2**failures))  # a store problem: retry
            if path is not None:
                path.unlink(missing_ok=True)
            settle([(waiter, None, None) for waiter in waiters])
            if self._apply_queue.empty():
                self._apply_idle.set()
        con.close()

    def _apply_one_by_one(self, con: duckdb.DuckDBPyConnection, items: list[IngestItem]) -> bool:
        """After a failed apply: each batch in its own transaction. The ones that still fail
        are kept aside in a file next to the log (an error says where); True if any went in."""
        failed = []
        for item in items:
            try:
                self._ingest_txn(con, [item])
            except Exception:
                failed.append(item)
        if len(failed) == len(items):
            return False
        assert self._log is not None
        aside = self._log.folder / f"failed-{int(time.time())}.records"
        with open(aside, "ab") as f:
            f.write(b"".join(ingestlog.encode(item) for item in failed))
            os.fsync(f.fileno())
        log.error("store: %d batch(es) could not be stored; kept in %s", len(failed), aside)
        return True

    def _ingest_txn(self, con: duckdb.DuckDBPyConnection, items: list[IngestItem]) -> list[bool]:
        keys = [str(batch_key(i.batch.batch_id)) for i in items]
        first: dict[str, int] = {}  # a batch sent twice within one group: the first one counts
        for n, key in enumerate(keys):
            first.setdefault(key, n)
        once = sorted(first.values())
        con.execute("BEGIN")
        try:
            # Recording the batch ids is the dedupe: ids already stored (within the dedupe
            # window) conflict and are not returned.
            inserted = {
                str(r[0])
                for r in con.execute(
                    "INSERT INTO batches SELECT unnest(?::UUID[]), unnest(?::DOUBLE[]),"
                    " unnest(?::INTEGER[]) ON CONFLICT DO NOTHING RETURNING id",
                    [
                        [keys[n] for n in once],
                        [items[n].received_at for n in once],
                        [len(items[n].batch.samples) for n in once],
                    ],
                ).fetchall()
            }
            fresh = [key in inserted and first[key] == n for n, key in enumerate(keys)]
            new_items = [item for item, f in zip(items, fresh, strict=True) if f]
            if new_items:
                self._insert(con, new_items)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self.commits += 1
        self.batches_stored += len(new_items)
        self.batches_duplicate += len(items) - len(new_items)
        return fresh

    def insert_raw(self, columns: Mapping[str, Mapping[str, Any]]) -> int:
        """The bulk path (a backfill): raw-tier rows given as columns named as in
        ``rows.TABLE_COLUMNS`` (lists, numpy or Arrow arrays), written in one writer transaction
        by the same code as ingest, without batch ids, dedupe or ``hosts`` rows. Returns the
        number of rows written; roll them up with ``rollup``."""
        return self.write(lambda con: self._insert_columns(con, columns))

    def _insert_columns(
        self, con: duckdb.DuckDBPyConnection, cols: Mapping[str, Mapping[str, Any]]
    ) -> int:
        rows = 0
        for table, columns in cols.items():
            if not len(columns["host"]):
                continue
            arrow = pa.table(dict(columns), schema=self._schemas[table])
            rows += arrow.num_rows
            if self._same_order[table]:
                con.from_arrow(arrow).insert_into(table)  # no register/parse round trips
                continue
            names = ", ".join(TABLE_COLUMNS[table])
            with _registered(con, "_incoming", arrow):
                con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _incoming")
        return rows

    def _insert(self, con: duckdb.DuckDBPyConnection, items: list[IngestItem]) -> None:
        samples = unique_samples(items, lambda keys: _stored_sample_keys(con, keys))
        self._insert_columns(con, flatten(samples))
        now = time.monotonic()
        for item in items:
            for smp in item.batch.samples:
                if smp.host not in self._pending_hosts:
                    self._pending_since[smp.host] = now
                note_host(self._pending_hosts, item, smp)
        self._warehouse_note_late(con, items)
        self._flush_hosts(con)

    def _flush_hosts(self, con: duckdb.DuckDBPyConnection, everything: bool = False) -> None:
        """Upsert the hosts whose rows are due (see HOSTS_FLUSH_SECONDS), or all pending ones,
        in one statement; then the due (or all) newest full samples. A host's first row
        carries its sample (the column is NOT NULL); later ones leave it to the samples."""
        now = time.monotonic()
        pending = self._pending_since.items()
        due = _due(pending, now - HOSTS_FLUSH_SECONDS, HOSTS_PER_FLUSH, everything)
        if due:
            hosts: dict[str, list] = {c: [] for c in _HOST_ROW}
            for name in due:
                del self._pending_since[name]
                for column, value in zip(_HOST_ROW, self._pending_hosts.pop(name), strict=True):
                    hosts[column].append(value)
            first = [name not in self._known_hosts for name in hosts["name"]]
            for name, last_seen, smp, new in zip(
                hosts["name"], hosts["last_seen"], hosts["last_sample"], first, strict=True
            ):
                if new:
                    continue
                held = self._unsaved_samples.get(name)
                if held is None:
                    self._unsaved_samples[name] = [last_seen, smp, now]
                elif last_seen >= held[0]:
                    held[0], held[1] = last_seen, smp
            hosts["last_sample"] = [
                smp.model_dump_json() if new else None
                for smp, new in zip(hosts["last_sample"], first, strict=True)
            ]
            with _registered(con, "_hosts_in", pa.table(hosts, schema=_HOST_ROW_SCHEMA)):
                con.execute(_UPSERT_HOSTS)
            self._known_hosts.update(hosts["name"])
        unsaved = ((name, held[2]) for name, held in self._unsaved_samples.items())
        due = _due(unsaved, now - HOST_SAMPLES_FLUSH_SECONDS, SAMPLES_PER_FLUSH, everything)
        if due:
            columns: dict[str, list] = {"name": due, "last_seen": [], "last_sample": []}
            for name in due:
                last_seen, smp, _ = self._unsaved_samples.pop(name)
                columns["last_seen"].append(last_seen)
                columns["last_sample"].append(smp.model_dump_json())
            with _registered(con, "_samples_in", pa.table(columns, schema=_HOST_SAMPLES_SCHEMA)):
                con.execute(_UPDATE_HOST_SAMPLES)

    def _flush_all_hosts(self, con: duckdb.DuckDBPyConnection) -> None:
        if self._pending_hosts or self._unsaved_samples:
            self._flush_hosts(con, everything=True)

    # -- reads --------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Wait, before a read, until the applier has moved the ingest log into the database
        (and whatever was queued for the writer before the read: ``apply_durable`` returns
        before its batches are staged)."""
        busy = self._staged or not self._apply_idle.is_set() or self._queue.qsize()
        if busy and threading.current_thread() not in (self._writer, self._applier):
            self.write(lambda con: None)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read cursor. DuckDB refuses (rather than waits) to close a connection while a
        cursor of it runs a query in another thread, so readers are counted and ``close``
        waits for them; a read that starts after ``close`` gets a StoreError."""
        with self._cursor_lock:
            if self._closed:
                raise StoreError(f"the store {self.path} is closed")
            cur = self._db.cursor()
            self._readers += 1
        try:
            yield cur
        finally:
            with self._cursor_lock:
                cur.close()
                self._readers -= 1
                self._cursor_lock.notify_all()

    def _read(self, sql: str, params: list | None = None) -> list[tuple]:
        self._sync()
        with self._cursor() as cur:
            return cur.execute(sql, params or []).fetchall()

    def hosts(self) -> list[HostRecord]:
        self.write(self._flush_all_hosts)
        rows = self._read(
            "SELECT name, source, token_name, first_seen, last_seen, last_received,"
            " interval_seconds, agent_version, clock_skew_seconds, last_sample"
            " FROM hosts ORDER BY name"
        )
        return [HostRecord.from_row(r, orjson.loads(r[9])) for r in rows]

    # -- small writes -------------------------------------------------------------------------

    def prune(self, raw_before: float, batches_before: float) -> dict[str, int]:
        def fn(con):
            deleted = {}
            raw_before_safe = warehouse.safe_raw_cutoff(con, raw_before)
            for table in RAW_TABLES:
                n = con.execute(f"DELETE FROM {table} WHERE ts < ?", [raw_before_safe]).fetchall()
                deleted[table] = int(n[0][0])
            n = con.execute("DELETE FROM batches WHERE received_at < ?", [batches_before])
            deleted["batches"] = int(n.fetchall()[0][0])
            return deleted

        return self.write(fn)

    def close(self) -> None:
        if self._writer.is_alive():
            self.write(self._flush_all_hosts)
            self._queue.put(STOP)
            self._writer.join()
        with self._cursor_lock:
            self._closed = True
            if not self._cursor_lock.wait_for(lambda: self._readers == 0, timeout=60):
                log.warning("store %s: closing with %d read(s) still running", self.path,
                            self._readers)  # fmt: skip
            self._db.close()

    # -- web accounts -------------------------------------------------------------------------

    def create_user(self, user: UserRecord) -> None:
        def fn(con):
            if con.execute("SELECT 1 FROM users WHERE name = ?", [user.name]).fetchall():
                raise StoreError(f"a user named {user.name!r} already exists")
            con.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                [user.name, user.password_hash, user.role, user.created_at, user.last_login],
            )

        self.write(fn)

    def delete_user(self, name: str) -> None:
        def fn(con):
            if not con.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchall():
                raise StoreError(f"no user named {name!r}")
            con.execute("DELETE FROM users WHERE name = ?", [name])

        self.write(fn)

    # -- usage warehouse (gpufleet.store.warehouse.WarehouseMixin) -------------------------------

    def _reader(self, fn: Callable[[Any], Any]) -> Any:
        self._sync()
        with self._cursor() as cur:
            return fn(cur)

    def _watermark_changed(self, watermark: float) -> None:
        self._wh_watermark = watermark

    def _warehouse_note_late(self, con: duckdb.DuckDBPyConnection, items: list[IngestItem]) -> None:
        """Mark the hours of samples older than the rollup watermark for a re-rollup (runs in
        the ingest transaction; no SQL unless a sample is late)."""
        wm = getattr(self, "_wh_watermark", None)
        if wm is None:
            row = con.execute(
                "SELECT value FROM rollup_state WHERE key = 'watermark_ts'"
            ).fetchone()
            wm = self._wh_watermark = float(row[0]) if row else float("-inf")
        late = {int(s.ts // 3600) * 3600 for i in items for s in i.batch.samples if s.ts < wm}
        if late:
            warehouse.mark_dirty(con, sorted(late))
