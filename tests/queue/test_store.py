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
    assert again.schema_version() == len(MIGRATIONS) == 2


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
    assert store.schema_version() == 2
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
