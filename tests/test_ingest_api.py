"""The ingest API and the read API, in-process (the app and a real store: a DuckDB file, and a
PostgreSQL database when the server is reachable)."""

from __future__ import annotations

import gzip
import time
from datetime import UTC, datetime

import orjson
import pytest
from fastapi.testclient import TestClient

from gpufleet.config import load_settings
from gpufleet.http.auth import new_token
from gpufleet.reports.service import compute_report
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from tests.conftest import make_batch, make_sample


@pytest.fixture(params=["duckdb", "postgresql"])
def api(request, tmp_path):
    server = {"data_dir": tmp_path}
    if request.param == "postgresql":
        server["database"] = request.getfixturevalue("postgres_url")
    settings = load_settings(None, overrides={"server": server}, environ={})
    store = open_store(settings.database_url)
    token, record = new_token("agents")
    store.create_token(record)
    revoked, rrec = new_token("old")
    store.create_token(rrec)
    store.revoke_token("old", time.time())
    with TestClient(create_app(settings, store=store)) as client:
        client.token = token
        client.revoked = revoked
        client.store = store
        client.headers["Authorization"] = f"Bearer {token}"
        yield client
    store.close()


def post(client, batch, **kw):
    body = batch.model_dump_json() if hasattr(batch, "model_dump_json") else batch
    return client.post("/api/v1/ingest", content=body, **kw)


def stored_rows(client) -> dict[str, int]:
    return {
        t: client.store.count(t)
        for t in ("batches", "host_samples", "gpu_samples", "process_samples")
    }


def test_batch_is_stored_once_however_often_it_is_sent(api):
    batch = make_batch(make_sample("gpu01"))
    first = post(api, batch)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "stored"
    for _ in range(3):
        again = post(api, batch)
        assert again.status_code == 200
        assert again.json()["status"] == "duplicate"
    assert stored_rows(api) == {
        "batches": 1,
        "host_samples": 1,
        "gpu_samples": 8,
        "process_samples": 8,
    }


def test_gzip_body_is_accepted(api):
    batch = make_batch(make_sample("gpu02"))
    r = post(
        api, gzip.compress(batch.model_dump_json().encode()), headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 200, r.text
    assert api.store.count("host_samples") == 1


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (
            lambda b: b["samples"][0]["gpus"][3].update(temperature_celsius=900),
            "samples[0].gpus[3].temperature_celsius",
        ),
        (
            lambda b: b["samples"][0]["gpus"][1].update(utilization_gpu_percent=-5),
            "samples[0].gpus[1].utilization_gpu_percent",
        ),
        (lambda b: b["samples"][0].update(host="bad host/name"), "samples[0].host"),
        (
            lambda b: b["samples"][0]["processes"][0].update(gpu_index=42),
            "samples[0].processes[0].gpu_index",
        ),
        (lambda b: b.update(samples=[]), "samples"),
        (lambda b: b.update(batch_id="x"), "batch_id"),
        (
            lambda b: b["samples"][0]["host_metrics"].update(surprise=1),
            "samples[0].host_metrics.surprise",
        ),
        (lambda b: b["samples"][0].update(ts=b["sent_at"] + 3600), "samples[0]"),
        # strict numbers: no false or 22.0 for an integer, no true for a number
        (lambda b: b["samples"][0]["gpus"][0].update(index=False), "samples[0].gpus[0].index"),
        (
            lambda b: b["samples"][0]["gpus"][1].update(memory_used_bytes=22.0),
            "samples[0].gpus[1].memory_used_bytes",
        ),
        (
            lambda b: b["samples"][1]["gpus"][0].update(power_watts=True),
            "samples[1].gpus[0].power_watts",
        ),
        # more than ingest.max_future_seconds (a day) ahead of the server's clock
        (
            lambda b: (
                b.update(sent_at=b["sent_at"] + 3 * 86400)
                or b["samples"][1].update(ts=b["sent_at"] - 1)
            ),
            "samples[1].ts",
        ),
        (lambda b: b.update(sent_at=4070908800.0), "sent_at"),  # 2099
    ],
)
def test_invalid_batch_is_rejected_whole_with_its_location(api, mutate, where):
    body = orjson.loads(make_batch(make_sample("gpu03"), make_sample("gpu04")).model_dump_json())
    mutate(body)
    before = stored_rows(api)
    r = post(api, orjson.dumps(body))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_batch"
    assert any(d["loc"].startswith(where) for d in err["details"]), err
    assert where in err["message"]
    assert stored_rows(api) == before


def test_not_json_and_wrong_types_are_4xx(api):
    assert post(api, b"{not json").status_code == 422
    assert post(api, b"[]").status_code == 422
    assert (
        post(api, b'{"batch_id": "abcdefgh", "sent_at": "yesterday", "samples": [1]}').status_code
        == 422
    )
    r = post(api, b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = post(api, b"\x1f\x8bgarbage", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert api.store.count("batches") == 0


def test_too_large_body_is_413(api):
    r = post(api, b"x" * (9 * 2**20))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer nope", 401), ("Basic abc", 401), ("Bearer gft_0000_wrong", 401)],
)
def test_bad_token_is_refused_and_nothing_stored(api, header, status):
    headers = {"Authorization": header} if header else {}
    client = TestClient(api.app)
    with client:
        r = client.post("/api/v1/ingest", content=make_batch().model_dump_json(), headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["code"] == "unauthorized"
    assert api.store.count("batches") == 0


def test_revoked_token_is_403_and_wrong_secret_of_a_real_id_is_401(api):
    r = post(api, make_batch(), headers={"Authorization": f"Bearer {api.revoked}"})
    assert r.status_code == 403
    assert "revoked" in r.json()["error"]["message"]
    forged = api.token[: api.token.rindex("_") + 1] + "A" * 43
    r = post(api, make_batch(), headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    assert api.store.count("batches") == 0


def test_clock_skew_is_flagged_but_data_kept(api):
    now = time.time()
    sample = make_sample("skewed", ts=now - 600)
    r = post(api, make_batch(sample, sent_at=now - 590))
    assert r.status_code == 200
    ack = r.json()
    assert ack["clock_skew_seconds"] == pytest.approx(590, abs=5)
    assert "clock skew" in ack["warnings"][0]
    host = api.get("/api/v1/hosts/skewed").json()
    assert host["clock_skew_seconds"] == pytest.approx(590, abs=5)


def test_hosts_list_status_and_free_gpus(api):
    sample = make_sample("gpu05", gpus=4, procs=2)  # processes on GPUs 0 and 1
    assert post(api, make_batch(sample)).status_code == 200
    hosts = api.get("/api/v1/hosts").json()["hosts"]
    (h,) = [h for h in hosts if h["name"] == "gpu05"]
    assert h["status"] == "online"
    assert h["source"] == "agent"
    assert h["gpu_count"] == 4
    # GPUs 2 and 3 hold memory (make_sample gives every GPU some): only process-free, low-memory
    # GPUs count as free, so none of them is free here.
    assert h["free_gpu_count"] == 0
    idle = make_sample("gpu06", gpus=2, procs=0)
    for g in idle.gpus:
        g.memory_used_bytes = 300 * 2**20
    assert post(api, make_batch(idle)).status_code == 200
    (h6,) = [h for h in api.get("/api/v1/hosts").json()["hosts"] if h["name"] == "gpu06"]
    assert h6["free_gpu_count"] == 2


def test_host_detail_and_late_sample_does_not_hide_newer(api):
    now = time.time()
    new, old = make_sample("gpu07", ts=now), make_sample("gpu07", ts=now - 300)
    new.host_metrics.cpu_percent = 77.0
    old.host_metrics.cpu_percent = 11.0
    assert post(api, make_batch(new)).status_code == 200
    assert post(api, make_batch(old, sent_at=now)).status_code == 200  # a spooled sample, late
    detail = api.get("/api/v1/hosts/gpu07").json()
    assert detail["sample"]["host_metrics"]["cpu_percent"] == 77.0
    assert detail["last_seen"] == pytest.approx(now)
    series = api.get(
        "/api/v1/hosts/gpu07/series", params={"metric": "host.cpu_percent", "since": "-1h"}
    ).json()
    values = [v for _, v in series["series"][0]["points"]]
    assert sorted(values) == [11.0, 77.0]


def test_gpu_series_per_gpu(api):
    now = time.time()
    for k in range(5):
        assert (
            post(api, make_batch(make_sample("gpu08", ts=now - 50 + 10 * k, gpus=2))).status_code
            == 200
        )
    r = api.get(
        "/api/v1/hosts/gpu08/series",
        params={"metric": "gpu.temperature_celsius", "since": str(now - 100)},
    )
    body = r.json()
    assert body["unit"] == "celsius"
    assert [s["gpu"] for s in body["series"]] == [0, 1]
    assert [p[1] for p in body["series"][1]["points"]] == [51.0] * 5


def test_error_shape_is_the_same_everywhere(api):
    cases = [
        api.get("/api/v1/hosts/nope"),
        api.get("/api/v1/hosts/nope/series", params={"metric": "host.cpu_percent"}),
        api.get("/no/such/path"),
        api.delete("/api/v1/ingest"),
        post(api, b"{}"),
    ]
    assert post(api, make_batch(make_sample("gpu09"))).status_code == 200
    cases += [
        api.get("/api/v1/hosts/gpu09/series", params={"metric": "gpu.bogus"}),
        api.get(
            "/api/v1/hosts/gpu09/series", params={"metric": "host.cpu_percent", "since": "soon"}
        ),
        api.get(
            "/api/v1/hosts/gpu09/series", params={"metric": "host.cpu_percent", "max_points": 0}
        ),
        api.get("/api/v1/admin/tokens"),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.request.url, r.status_code)
        err = r.json()["error"]
        assert set(err) == {"status", "code", "message", "details"}
        assert err["status"] == r.status_code
        assert err["message"]


def test_healthz_metrics_and_openapi(api):
    assert post(api, make_batch(make_sample("gpu10"))).status_code == 200
    health = api.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["store"]["schema_version"] >= 1
    text = api.get("/metrics").text
    assert 'gpufleet_host_up{host="gpu10",status="online",source="agent"} 1\n' in text
    assert 'gpufleet_server_ingest_batches_total{result="stored"} 1\n' in text
    assert 'gpufleet_gpu_utilization_percent{host="gpu10",gpu="3"' in text
    spec = api.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/ingest"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Batch"
    assert "Sample" in spec["components"]["schemas"]
    assert api.get("/docs").status_code == 200


def test_admin_api_creates_and_revokes_tokens(api):
    key = (api.app.state.ctx.settings.server.data_dir / "admin.key").read_text().strip()
    admin = {"Authorization": f"Bearer {key}"}
    r = api.post("/api/v1/admin/tokens", json={"name": "rack-7"}, headers=admin)
    assert r.status_code == 201, r.text
    new = r.json()["token"]
    assert (
        post(
            api, make_batch(make_sample("rack7")), headers={"Authorization": f"Bearer {new}"}
        ).status_code
        == 200
    )
    assert (
        api.post("/api/v1/admin/tokens", json={"name": "rack-7"}, headers=admin).status_code == 409
    )
    assert (
        api.post("/api/v1/admin/tokens", json={"name": "bad name!"}, headers=admin).status_code
        == 422
    )
    assert api.delete("/api/v1/admin/tokens/rack-7", headers=admin).status_code == 200
    assert (
        post(
            api, make_batch(make_sample("rack7")), headers={"Authorization": f"Bearer {new}"}
        ).status_code
        == 403
    )
    names = [t["name"] for t in api.get("/api/v1/admin/tokens", headers=admin).json()["tokens"]]
    assert "rack-7" in names
    assert all(
        "secret" not in str(t)
        for t in api.get("/api/v1/admin/tokens", headers=admin).json()["tokens"]
    )


def test_store_failures_answer_503_or_500_in_the_error_shape(api, monkeypatch):
    """The hot path answers before FastAPI's middleware: its failures must still come back in
    the API's error shape (503 + Retry-After for a store error, 500 for a bug), and the
    server goes on serving."""
    from gpufleet.store import StoreError

    async def store_error(item):
        raise StoreError("disk full")

    async def bug(item):
        raise RuntimeError("a bug")

    monkeypatch.setattr(api.store, "ingest", store_error)
    r = post(api, make_batch(make_sample("gpu01")))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.json()["error"] == {
        "status": 503, "code": "store_failed", "message": "disk full", "details": [],
    }  # fmt: skip
    monkeypatch.setattr(api.store, "ingest", bug)
    r = post(api, make_batch(make_sample("gpu01")))
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal_error"
    monkeypatch.undo()
    r = post(api, make_batch(make_sample("gpu01")))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "stored"
    assert api.store.count("batches") == 1


def test_samples_read_on_a_real_h200_are_stored_and_shown_as_nvidia_smi_showed_them(api):
    """The agent's samples from a real H200 (tests/agent/fixtures/h200), moved to now: idle it
    is free at 0 bytes used; under load it is held by the recorded process, 25,459 MiB."""
    import json
    from pathlib import Path

    from gpufleet.wire import Sample

    rec = json.loads((Path(__file__).parent / "agent/fixtures/h200/samples.json").read_text())
    now = time.time()
    for offset, phase in ((-10.0, "idle"), (0.0, "load")):
        sample = Sample.model_validate(rec[phase]["sample"])
        shift = now + offset - sample.ts
        sample.ts += shift
        sample.host = "h200"
        for p in sample.processes:
            p.started_at = p.started_at + shift if p.started_at else None
        assert post(api, make_batch(sample)).status_code == 200
        (h,) = [h for h in api.get("/api/v1/hosts").json()["hosts"] if h["name"] == "h200"]
        assert h["free_gpu_count"] == (1 if phase == "idle" else 0), phase
        detail = api.get("/api/v1/hosts/h200").json()
        assert round(detail["sample"]["gpus"][0]["memory_used_bytes"] / 2**20) == int(
            rec[phase]["smi"]["gpus"][0]["memory.used"]
        )


def test_a_sample_posted_again_under_a_new_batch_id_is_counted_once_everywhere(api):
    """An agent that re-made a batch (a new batch_id) around samples already stored: both
    posts are stored, but the raw tiers keep one copy of each (host, sample time), so every
    tier and report counts host "twice" (each sample posted twice) as host "once"."""
    hour = (int(time.time()) // 3600 - 30) * 3600  # a completed hour, rolled up below
    for host, copies in (("once", 1), ("twice", 2)):
        samples = [make_sample(host, hour + 300 * i) for i in range(12)]
        for _ in range(copies):
            for smp in samples:
                r = post(api, make_batch(smp))
                assert r.status_code == 200 and r.json()["status"] == "stored", r.text
    assert stored_rows(api) == {
        "batches": 36, "host_samples": 24, "gpu_samples": 24 * 8, "process_samples": 24 * 8,
    }  # fmt: skip
    api.store.rollup(now=time.time(), tz="UTC", busy_util_percent=5.0)
    day = datetime.fromtimestamp(hour, UTC).date()

    def gpu_hours(by: str, tier: str) -> dict[str, float]:
        report = compute_report(api.store, period="day", by=by, first=day, last=day, tier=tier)
        return {r["key"]: r["gpu_hours"] for r in report["rows"]}

    once = gpu_hours("host", "raw")["once"]
    assert once > 0
    for tier in ("raw", "hour", "day"):
        assert gpu_hours("host", tier) == pytest.approx({"once": once, "twice": once}), tier
    assert sum(gpu_hours("fleet", "day").values()) == pytest.approx(2 * once)
