"""``preemptible: false`` through the queue's HTTP API (what the queue page and ``gpufleet job
ID`` show): the job's spec carries the field, and a value that is not a boolean is refused
with the field named."""

from __future__ import annotations

from tests.queue.test_api import SPEC, app_client, wait_state  # noqa: F401  (the fixture)


def test_the_field_is_stored_and_shown_with_the_job(app_client):  # noqa: F811
    client, admin = app_client()
    pinned = SPEC.format(user="ann", gpus=1, s=0.2) + "preemptible: false\n"
    r = client.post("/api/v1/admin/jobs", content=pinned, headers=admin)
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    plain = client.post("/api/v1/admin/jobs", content=SPEC.format(user="ann", gpus=1, s=0.2),
                        headers=admin).json()["id"]  # fmt: skip
    shown = client.get(f"/api/v1/jobs/{job}").json()  # what `gpufleet job ID` prints
    assert shown["spec"]["preemptible"] is False
    assert client.get(f"/api/v1/jobs/{plain}").json()["spec"]["preemptible"] is True
    listed = {j["id"]: j for j in client.get("/api/v1/jobs").json()["jobs"]}  # the page's data
    assert listed[job]["spec"]["preemptible"] is False
    assert wait_state(client, job, "succeeded")["spec"]["preemptible"] is False


def test_a_value_that_is_not_a_boolean_names_the_field(app_client):  # noqa: F811
    client, admin = app_client()
    for value in ('"no"', "1"):
        text = SPEC.format(user="a", gpus=1, s=1) + f"preemptible: {value}\n"
        r = client.post("/api/v1/admin/jobs", content=text, headers=admin)
        assert r.status_code == 422
        assert r.json()["error"]["message"].startswith("preemptible: must be true or false, got")
    assert client.get("/api/v1/jobs").json()["jobs"] == []
