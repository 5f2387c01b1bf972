"""The queue's HTTP API in the real app (in process, a real DuckDB file and job store): submit,
list, cancel, hold/release, priority, errors naming the field or the quota, who may do what."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from gpufleet.accounts.users import new_user
from gpufleet.config import load_settings
from gpufleet.http.local import fresh_token
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from tests.accounts.conftest import PASSWORDS, ROLES, login
from tests.conftest import make_batch, make_sample

SPEC = "name: t\nuser: {user}\ngpus: {gpus}\nmodel_name: resnet50\nepochs: 1\ncommand: sleep {s}\n"


@pytest.fixture
def app_client(tmp_path):
    made = []

    def make(**queue):
        queue.setdefault("dispatcher", "replay")
        queue.setdefault("refresh_seconds", 0.1)
        settings = load_settings(
            overrides={"server": {"data_dir": tmp_path / f"d{len(made)}"}, "queue": queue},
            environ={},
        )
        store = open_store(settings.database_url)
        for name, role in ROLES.items():
            store.create_user(new_user(name, PASSWORDS[name], role))
        token = fresh_token(store, "t")
        client = TestClient(create_app(settings, store=store), follow_redirects=False)
        client.__enter__()
        made.append((client, store))
        sample = make_sample("gpu01", ts=time.time(), gpus=4, procs=0)
        idle = [g.model_copy(update={"memory_used_bytes": 0}) for g in sample.gpus]
        sample = sample.model_copy(update={"gpus": idle})
        r = client.post("/api/v1/ingest", content=make_batch(sample).model_dump_json(),
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 200, r.text
        admin = {"Authorization": f"Bearer {client.app.state.ctx.admin_key}"}
        end = time.monotonic() + 60.0  # generous: the queue sees the fleet at its next refresh
        while client.get("/api/v1/jobs").json()["status"]["fleet_gpus"] < 4:
            assert time.monotonic() < end, "the queue never saw gpu01's 4 GPUs"
            time.sleep(0.05)
        return client, admin

    yield make
    for client, store in made:
        client.__exit__(None, None, None)
        store.close()


def wait_state(client, job_id, state, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = client.get(f"/api/v1/jobs/{job_id}").json()
        if got["state"] == state:
            return got
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {got['state']}, not {state}")


def test_submit_run_list_and_logs(app_client):
    client, admin = app_client()
    r = client.post("/api/v1/admin/jobs", content=SPEC.format(user="ann", gpus=2, s=0.3),
                    headers=admin)  # fmt: skip
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["user"], job["state"], job["gpus"]) == ("ann", "pending", 2.0)
    done = wait_state(client, job["id"], "succeeded")
    assert [e["state"] for e in done["events"]][-1] == "succeeded"
    assert done["placement"][0]["host"] == "gpu01" and len(done["placement"][0]["gpu_indices"]) == 2
    listed = client.get("/api/v1/jobs?state=succeeded").json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert listed["status"]["policy"] == "gpufleet" and listed["counts"]["succeeded"] == 1
    assert "no logs kept" in client.get(f"/api/v1/jobs/{job['id']}/logs").text
    metrics = client.get("/metrics").text
    assert 'gpufleet_queue_jobs{state="succeeded"} 1' in metrics
    assert "gpufleet_queue_predictor_recent_error_ratio" in metrics
    page = client.get("/queue")
    assert page.status_code == 200 and "queue.js" in page.text


def test_errors_name_the_field_and_nothing_is_stored(app_client):
    client, admin = app_client()
    r = client.post("/api/v1/admin/jobs", content=SPEC.format(user="a", gpus="true", s=1),
                    headers=admin)  # fmt: skip
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["message"] == "gpus: must be a non-negative number, got true"
    assert err["message"].endswith("got true") and err["details"][0]["loc"] == "gpus"
    k8s = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x, annotations: {model_name: m}}\n"
    r = client.post("/api/v1/admin/jobs", content=k8s, headers=admin)
    assert r.json()["error"]["message"] == "metadata.annotations.data_size: is required (GB)"
    r = client.post("/api/v1/admin/jobs", content=SPEC.format(user="a", gpus=16, s=1),
                    headers=admin)  # fmt: skip
    assert r.json()["error"]["message"] == "gpus: asks for 16; the largest usable GPU pool has 4"
    assert client.get("/api/v1/jobs").json()["jobs"] == []
    assert client.get("/api/v1/jobs/99").status_code == 404
    assert client.get("/api/v1/jobs?state=bogus").status_code == 422


def test_who_may_do_what(app_client):
    client, admin = app_client()
    r = client.post("/api/v1/jobs", content=SPEC.format(user="ann", gpus=1, s=60))
    assert r.status_code == 401
    root_job = client.post("/api/v1/admin/jobs", content=SPEC.format(user="root", gpus=1, s=60),
                           headers=admin).json()  # fmt: skip
    csrf = login(client, "ann")
    h = {"X-CSRF-Token": csrf}
    mine = client.post("/api/v1/jobs?hold=1", content=SPEC.format(user="ann", gpus=1, s=0.2),
                       headers=h)  # fmt: skip
    assert mine.status_code == 201 and mine.json()["state"] == "held"
    other = client.post("/api/v1/jobs", content=SPEC.format(user="bob", gpus=1, s=1), headers=h)
    assert other.status_code == 403 and "only an admin submits for 'bob'" in other.text
    assert client.post(f"/api/v1/jobs/{root_job['id']}/cancel", headers=h).status_code == 403
    pr = client.put(f"/api/v1/jobs/{mine.json()['id']}/priority", json={"priority": 3}, headers=h)
    assert pr.status_code == 403
    assert client.post(f"/api/v1/jobs/{mine.json()['id']}/release", headers=h).status_code == 200
    wait_state(client, mine.json()["id"], "succeeded")
    again = client.post(f"/api/v1/jobs/{mine.json()['id']}/cancel", headers=h)
    assert again.status_code == 409 and "nothing to cancel" in again.text
    form = client.post("/api/v1/jobs", data={"name": "f", "command": "sleep 0.1", "gpus": "1",
                                              "model_name": "m", "csrf_token": csrf})  # fmt: skip
    assert form.status_code == 201 and form.json()["user"] == "ann"
    up = client.put(f"/api/v1/admin/jobs/{root_job['id']}/priority", json={"priority": 2},
                    headers=admin)  # fmt: skip
    assert up.status_code == 200 and up.json()["priority"] == 2
    assert (
        client.post(f"/api/v1/admin/jobs/{root_job['id']}/cancel", headers=admin).status_code == 200
    )
    wait_state(client, root_job["id"], "cancelled")


def test_quota_refusal_names_the_quota(app_client):
    client, admin = app_client(
        quotas={"users": {"ann": {"gpus_at_once": 2}}}, groups={"vision": ["ann"]}
    )
    r = client.post("/api/v1/admin/jobs", content=SPEC.format(user="ann", gpus=3, s=1),
                    headers=admin)  # fmt: skip
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        "quota: user ann may hold 2 GPUs at once; this job asks for 3"
    )
    ok = client.post("/api/v1/admin/jobs", content=SPEC.format(user="ann", gpus=2, s=30),
                     headers=admin).json()  # fmt: skip
    wait_state(client, ok["id"], "running")
    waits = client.post("/api/v1/admin/jobs", content=SPEC.format(user="ann", gpus=1, s=1),
                        headers=admin).json()  # fmt: skip
    assert waits["group"] == "vision"
    end = time.monotonic() + 30
    while time.monotonic() < end:
        reason = client.get(f"/api/v1/jobs/{waits['id']}").json()["waiting_reason"]
        if reason.startswith("quota"):
            break
        time.sleep(0.05)
    assert reason == "quota: user ann may hold 2 GPUs at once; holds 2, this job needs 1"


@pytest.mark.parametrize("dispatcher", ["slurm", "kubernetes", "local"])
def test_a_dispatcher_option_it_does_not_have_is_a_config_error(app_client, dispatcher):
    from gpufleet.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        app_client(dispatcher=dispatcher, dispatcher_options={"no_such_option": 1})
    assert "queue.dispatcher_options" in str(err.value) and "no_such_option" in str(err.value)


def test_an_unknown_dispatcher_is_a_config_error_that_lists_the_known_ones(app_client):
    from gpufleet.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        app_client(dispatcher="pbs")
    assert "'pbs'" in str(err.value)
    assert "slurm or kubernetes" in (err.value.hint or "")
