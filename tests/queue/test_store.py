"""The job store: atomic submission, the state machine, durability across reopen."""

from __future__ import annotations

import sqlite3

import pytest

from gpufleet.queue.store import (
    CANCELLED,
    DISPATCHING,
    HELD,
    MIGRATIONS,
    PENDING,
    RUNNING,
    SUCCEEDED,
    JobStore,
    TransitionError,
    UnknownJobError,
)
from gpufleet.sched.job import JobSpecError, parse_job

SPEC = "name: train\nuser: alice\ngpus: 2\nmodel_name: resnet50\nepochs: 3\ncommand: python t.py\n"


def test_submit_then_reopen_keeps_the_job_and_its_log(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    job = store.submit(parse_job(SPEC), group="vision", predicted_runtime_seconds=120.0)
    assert (job.state, job.user, job.group, job.gpus) == (PENDING, "alice", "vision", 2.0)
    assert job.job_spec().command == ("python", "t.py")
    store.close()
    again = JobStore(tmp_path / "q.sqlite3")
    assert again.get(job.id) == job
    assert [e["state"] for e in again.events(job.id)] == [PENDING]
    assert again.schema_version() == len(MIGRATIONS) == 3


def test_a_first_version_queue_is_upgraded_keeping_its_jobs(tmp_path):
    db = sqlite3.connect(tmp_path / "q.sqlite3")
    db.executescript(MIGRATIONS[0])
    db.execute(
        "INSERT INTO jobs (name, user, spec_json, gpus, state, submit_seconds) "
        'VALUES (\'old\', \'bob\', \'{"name": "old", "user": "bob", "gpus": 1}\', 1, '
        "'pending', 1.0)"
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    store = JobStore(tmp_path / "q.sqlite3")
    assert store.schema_version() == 3
    (job,) = store.jobs()
    assert (job.name, job.user, job.state, job.memory_floor_bytes) == ("old", "bob", PENDING, None)


def test_durability_settings(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    store.submit(parse_job(SPEC))
    db = sqlite3.connect(tmp_path / "q.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_bad_spec_stores_nothing(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    with pytest.raises(JobSpecError, match="gpus"):
        store.submit(parse_job(SPEC.replace("gpus: 2", "gpus: true")))
    assert store.jobs() == []


def test_the_state_machine(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    job = store.submit(parse_job(SPEC))
    store.transition(job.id, HELD, "held by alice")
    with pytest.raises(TransitionError, match="held to dispatching"):
        store.transition(job.id, DISPATCHING)
    store.transition(job.id, PENDING, "released")
    store.transition(job.id, DISPATCHING, placement=[{"host": "h1", "gpu_indices": [0, 1]}])
    store.transition(job.id, RUNNING, handle="h1:1", start_seconds=10.0)
    done = store.transition(job.id, SUCCEEDED, exit_code=0, end_seconds=70.0, runtime_seconds=60.0)
    assert done.placement == [{"host": "h1", "gpu_indices": [0, 1]}]
    assert (done.exit_code, done.runtime_seconds, done.handle) == (0, 60.0, "h1:1")
    for state in (PENDING, RUNNING, DISPATCHING, CANCELLED):
        with pytest.raises(TransitionError, match="cannot go from succeeded"):
            store.transition(job.id, state)
    assert [e["state"] for e in store.events(job.id)] == [
        PENDING, HELD, PENDING, DISPATCHING, RUNNING, SUCCEEDED,
    ]  # fmt: skip


def test_gpu_hours_count_every_run_and_not_the_wait_between(tmp_path):
    """A job preempted and restarted held its GPUs twice: both runs count toward GPU-hour
    quotas, the wait between them does not, and the window cuts a run at its edge."""
    clock = [0.0]
    store = JobStore(tmp_path / "q.sqlite3", clock=lambda: clock[0])
    job = store.submit(parse_job(SPEC), group="vision")  # 2 GPUs

    def at(t: float, state: str, **fields) -> None:
        clock[0] = t
        store.transition(job.id, state, **fields)

    at(5.0, DISPATCHING)
    at(10.0, RUNNING, start_seconds=10.0)
    at(110.0, RUNNING)  # "stopping its run": still on its GPUs
    at(130.0, PENDING, reason="preempted")  # stopped: 120 s held
    at(1000.0, DISPATCHING)
    at(1010.0, RUNNING, start_seconds=1010.0)
    # running: counted until now, and only from the window's start
    assert store.gpu_seconds_since(0.0, 1110.0) == [("alice", "vision", 2 * (120 + 100))]
    assert store.gpu_seconds_since(50.0, 1110.0) == [("alice", "vision", 2 * (80 + 100))]
    at(1210.0, SUCCEEDED, end_seconds=1210.0)
    assert store.gpu_seconds_since(0.0, 5000.0) == [("alice", "vision", 2 * (120 + 200))]
    assert store.gpu_seconds_since(1200.0, 5000.0) == [("alice", "vision", 2 * 10)]
    assert store.gpu_seconds_since(1300.0, 5000.0) == []
    # the record keeps only the last run's start: the runs are what counts
    assert store.get(job.id).start_seconds == 1010.0


def test_an_older_store_gets_its_runs_from_the_job_logs(tmp_path):
    db = sqlite3.connect(tmp_path / "q.sqlite3")
    for sql in MIGRATIONS[:2]:
        db.executescript(sql)
    db.execute(
        "INSERT INTO jobs (name, user, grp, spec_json, gpus, state, submit_seconds) "
        'VALUES (\'old\', \'bob\', \'nlp\', \'{"name": "old", "user": "bob", "gpus": 4}\', '
        "4, 'running', 1.0)"
    )
    events = [(2.0, "dispatching"), (3.0, "running"), (50.0, "running"), (53.0, "pending"),
              (60.0, "dispatching"), (61.0, "running")]  # fmt: skip
    db.executemany("INSERT INTO job_events (job_id, at_seconds, state) VALUES (1, ?, ?)", events)
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    store = JobStore(tmp_path / "q.sqlite3")
    assert store.schema_version() == 3
    # two runs: 3-53 (stopped) and 61- (running)
    assert store.gpu_seconds_since(0.0, 71.0) == [("bob", "nlp", 4 * (50 + 10))]


def test_expected_state_and_unknown_job(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    job = store.submit(parse_job(SPEC))
    with pytest.raises(TransitionError, match="is pending, not running"):
        store.transition(job.id, SUCCEEDED, expect=[RUNNING])
    with pytest.raises(UnknownJobError, match="no job 99"):
        store.transition(99, CANCELLED)
    with pytest.raises(ValueError, match="cannot set state_json"):
        store.transition(job.id, HELD, state_json="x")
    assert store.get(job.id).state == PENDING
