"""The job store: one SQLite file (WAL, ``synchronous=FULL``: a write the queue acknowledged is on
disk), versioned migrations, one writer (a lock around one connection; each change one
transaction).

A job's life (``TRANSITIONS``)::

    pending -> held -> pending                       (hold / release)
    pending -> dispatching -> running -> succeeded | failed | oom | cancelled | lost
    dispatching | running -> pending                 (requeue: preempted, its host went down
                                                      early, or it ran out of GPU memory and a
                                                      larger GPU model exists; docs/queue.md)

``succeeded``, ``failed``, ``oom``, ``cancelled`` and ``lost`` are final: a finished job never
runs again. Every transition is checked here and written with an event in the job's log, in the
same transaction, before the queue acts on it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from gpufleet.sched.job import JobSpec

PENDING, HELD, DISPATCHING, RUNNING = "pending", "held", "dispatching", "running"
SUCCEEDED, FAILED, OOM, CANCELLED, LOST = "succeeded", "failed", "oom", "cancelled", "lost"
FINAL = frozenset({SUCCEEDED, FAILED, OOM, CANCELLED, LOST})
ACTIVE = frozenset({DISPATCHING, RUNNING})
STATES = (PENDING, HELD, DISPATCHING, RUNNING, SUCCEEDED, FAILED, OOM, CANCELLED, LOST)
State = Literal[
    "pending", "held", "dispatching", "running", "succeeded", "failed", "oom", "cancelled", "lost"
]
assert get_args(State) == STATES

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({HELD, DISPATCHING, CANCELLED}),
    HELD: frozenset({PENDING, CANCELLED}),
    DISPATCHING: frozenset({RUNNING, PENDING, SUCCEEDED, FAILED, OOM, CANCELLED, LOST}),
    RUNNING: frozenset({PENDING, SUCCEEDED, FAILED, OOM, CANCELLED, LOST}),
    **{s: frozenset() for s in FINAL},
}

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        user TEXT NOT NULL,
        grp TEXT NOT NULL DEFAULT '',
        spec_json TEXT NOT NULL,
        gpus REAL NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        placement_json TEXT,
        gpu_model TEXT,
        handle TEXT,
        submit_seconds REAL NOT NULL,
        start_seconds REAL,
        end_seconds REAL,
        predicted_runtime_seconds REAL,
        runtime_seconds REAL,
        exit_code INTEGER,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_user ON jobs(user);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        at_seconds REAL NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX job_events_job ON job_events(job_id);
    """,
    # 2: what an OOM taught about a job: it needs more than this much memory per GPU
    """
    ALTER TABLE jobs ADD COLUMN memory_floor_bytes INTEGER;
    """,
    # 3: every run of a job (a preempted or retried job has several; the jobs row keeps only
    # the last run's start), for GPU-hour quotas; filled from the job logs of older stores
    """
    CREATE TABLE job_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        start_seconds REAL NOT NULL,
        end_seconds REAL,
        gpus REAL NOT NULL
    );
    CREATE INDEX job_runs_end ON job_runs(end_seconds);
    CREATE INDEX job_runs_job ON job_runs(job_id);
    INSERT INTO job_runs (job_id, start_seconds, end_seconds, gpus)
        SELECT e.job_id, e.at_seconds,
               (SELECT MIN(x.at_seconds) FROM job_events x
                 WHERE x.job_id = e.job_id AND x.id > e.id AND x.state != 'running'),
               j.gpus
          FROM job_events e JOIN jobs j ON j.id = e.job_id
         WHERE e.state = 'running'
           AND COALESCE((SELECT p.state FROM job_events p WHERE p.job_id = e.job_id
                          AND p.id < e.id ORDER BY p.id DESC LIMIT 1), '') != 'running'
         ORDER BY e.id;
    """,
)


class TransitionError(ValueError):
    """A state change the state machine does not allow (the message names both states)."""


class UnknownJobError(KeyError):
    def __str__(self) -> str:
        return f"no job {self.args[0]}"


@dataclass(frozen=True)
class JobRecord:
    id: int
    name: str
    user: str
    group: str
    spec: dict[str, Any]
    gpus: float
    priority: int
    state: str
    placement: list[dict[str, Any]] | None  # [{"host": ..., "gpu_indices": [...]}]
    gpu_model: str | None
    handle: str | None
    submit_seconds: float
    start_seconds: float | None
    end_seconds: float | None
    predicted_runtime_seconds: float | None
    runtime_seconds: float | None
    exit_code: int | None
    reason: str | None
    attempts: int
    # it ran out of memory on GPUs of this size: it needs more (None: no OOM seen)
    memory_floor_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def job_spec(self) -> JobSpec:
        fields = dict(self.spec)
        fields["command"] = tuple(fields.get("command") or ())
        return JobSpec(**fields)


def spec_json(spec: JobSpec) -> dict[str, Any]:
    out = asdict(spec)
    out["command"] = list(spec.command)
    return out


_COLUMNS = (
    "id, name, user, grp, spec_json, gpus, priority, state, placement_json, gpu_model, handle, "
    "submit_seconds, start_seconds, end_seconds, predicted_runtime_seconds, runtime_seconds, "
    "exit_code, reason, attempts, memory_floor_bytes"
)


def _record(row: Sequence[Any]) -> JobRecord:
    return JobRecord(
        row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6], row[7],
        json.loads(row[8]) if row[8] else None, row[9], row[10], row[11], row[12], row[13],
        row[14], row[15], row[16], row[17], row[18], row[19],
    )  # fmt: skip


class JobStore:
    """The queue's durable state. Thread-safe: one lock, one connection, one writer."""

    def __init__(self, path: Path | str, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path}: job store schema v{version} is newer than this gpufleet "
                    f"(v{len(MIGRATIONS)}); upgrade gpufleet"
                )
            for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in sql.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={number}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes (each one transaction) ------------------------------------------------------
    def _tx(self, fn: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def submit(
        self,
        spec: JobSpec,
        group: str = "",
        predicted_runtime_seconds: float | None = None,
        state: str = PENDING,
    ) -> JobRecord:
        """Store a parsed spec (parse first: a bad spec never reaches here) with its first
        event; nothing is stored unless all of it is."""
        if state not in (PENDING, HELD):
            raise TransitionError(f"state: a job is submitted pending or held, not {state}")
        now = self.clock()

        def write(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO jobs (name, user, grp, spec_json, gpus, priority, state, "
                "submit_seconds, predicted_runtime_seconds) VALUES (?,?,?,?,?,?,?,?,?)",
                (spec.name, spec.user, group, json.dumps(spec_json(spec)), spec.gpus,
                 spec.priority, state, now, predicted_runtime_seconds),
            )  # fmt: skip
            job_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO job_events (job_id, at_seconds, state, message) VALUES (?,?,?,?)",
                (job_id, now, state, f"submitted by {spec.user}"),
            )
            return job_id

        return self.get(self._tx(write))

    def transition(
        self,
        job_id: int,
        to_state: str,
        message: str = "",
        *,
        expect: Iterable[str] | None = None,
        at_seconds: float | None = None,
        **fields: Any,
    ) -> JobRecord:
        """Move a job to ``to_state`` (checked against ``TRANSITIONS`` and, when given, the
        states it is expected to be in) and set ``fields`` (columns of ``jobs``) in one
        transaction with its event."""
        allowed_fields = {
            "placement", "gpu_model", "handle", "start_seconds", "end_seconds", "runtime_seconds",
            "exit_code", "reason", "attempts", "priority", "predicted_runtime_seconds",
            "memory_floor_bytes",
        }  # fmt: skip
        bad = set(fields) - allowed_fields
        if bad:
            raise ValueError(f"job fields: cannot set {', '.join(sorted(bad))}")
        now = self.clock() if at_seconds is None else at_seconds

        def write(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJobError(job_id)
            state = row[0]
            if expect is not None and state not in set(expect):
                raise TransitionError(f"job {job_id} is {state}, not {' or '.join(expect)}")
            if to_state != state and to_state not in TRANSITIONS[state]:
                raise TransitionError(f"job {job_id}: cannot go from {state} to {to_state}")
            sets = ["state = ?"]
            values: list[Any] = [to_state]
            for key, value in fields.items():
                column = "placement_json" if key == "placement" else key
                sets.append(f"{column} = ?")
                values.append(json.dumps(value) if key == "placement" and value else value)
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*values, job_id))
            db.execute(
                "INSERT INTO job_events (job_id, at_seconds, state, message) VALUES (?,?,?,?)",
                (job_id, now, to_state, message),
            )
            if state == RUNNING and to_state != RUNNING:  # its run ended (its GPUs are free)
                db.execute(
                    "UPDATE job_runs SET end_seconds = ? WHERE job_id = ? AND end_seconds IS NULL",
                    (now, job_id),
                )
            elif to_state == RUNNING and state != RUNNING:  # a run began
                db.execute(
                    "INSERT INTO job_runs (job_id, start_seconds, gpus) "
                    "SELECT id, COALESCE(start_seconds, ?), gpus FROM jobs WHERE id = ?",
                    (now, job_id),
                )

        self._tx(write)
        return self.get(job_id)

    def set_priority(self, job_id: int, priority: int, by: str) -> JobRecord:
        def write(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJobError(job_id)
            db.execute("UPDATE jobs SET priority = ? WHERE id = ?", (priority, job_id))
            db.execute(
                "INSERT INTO job_events (job_id, at_seconds, state, message) VALUES (?,?,?,?)",
                (job_id, self.clock(), row[0], f"priority set to {priority} by {by}"),
            )

        self._tx(write)
        return self.get(job_id)

    # -- reads --------------------------------------------------------------------------------
    def get(self, job_id: int) -> JobRecord:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            raise UnknownJobError(job_id)
        return _record(row)

    def jobs(
        self,
        states: Iterable[str] | None = None,
        user: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[JobRecord]:
        where, args = [], []
        if states is not None:
            wanted = list(states)
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
        if user is not None:
            where.append("user = ?")
            args.append(user)
        sql = f"SELECT {_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_record(r) for r in rows]

    def events(self, job_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at_seconds, state, message FROM job_events WHERE job_id = ? ORDER BY id",
                (job_id,),
            ).fetchall()
        return [{"at_seconds": r[0], "state": r[1], "message": r[2]} for r in rows]

    def counts(self) -> Mapping[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out

    def gpu_seconds_since(
        self, since_seconds: float, now_seconds: float
    ) -> list[tuple[str, str, float]]:
        """(user, group, GPU-seconds) held from ``since_seconds`` to ``now_seconds``, over
        every run of every job (for GPU-hour quotas): a run still going counts until now; the
        time a preempted job waited between its runs does not count."""
        with self._lock:
            rows = self._db.execute(
                "SELECT j.user, j.grp, SUM(MAX(0.0, MIN(COALESCE(r.end_seconds, :now), :now) "
                "- MAX(r.start_seconds, :since)) * MAX(r.gpus, 0.0)) "
                "FROM job_runs r JOIN jobs j ON j.id = r.job_id "
                "WHERE r.end_seconds IS NULL OR r.end_seconds >= :since "
                "GROUP BY j.user, j.grp ORDER BY j.user, j.grp",
                {"since": since_seconds, "now": now_seconds},
            ).fetchall()
        return [(r[0], r[1], float(r[2] or 0.0)) for r in rows]
