"""The report's edges: the API (JSON, CSV, one error shape), the CLI on a local store, and
the pure core's long-tail and percentile helpers."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from gpufleet.config import load_settings
from gpufleet.reports.core import COLUMNS, gini, long_tail
from gpufleet.server.app import create_app
from gpufleet.store import open_store
from gpufleet.warehouse.facts import percentile_from_hist
from tests.conftest import gpufleet_here
from tests.reports.brute import generate
from tests.reports.test_warehouse import ingest

START = datetime(2024, 2, 27, tzinfo=UTC).timestamp()
END = START + 48 * 3600


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    store = open_store(d / "gpufleet.duckdb")
    ingest(store, generate(START, END, seed=3, hosts=3))
    store.close()
    r = gpufleet_here("rollup", "--data-dir", str(d), env={"GPUFLEET_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    assert "rolled up" in r.stdout
    return d


@pytest.fixture
def client(data_dir):
    settings = load_settings(None, overrides={"server": {"data_dir": data_dir}}, environ={})
    with TestClient(create_app(settings)) as c:
        yield c


def test_api_json_and_csv(client):
    r = client.get("/api/v1/reports?period=day&by=user&from=2024-02-27&to=2024-02-29")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["period"] == "day" and body["by"] == "user" and body["tier"] == "day"
    assert {row["period_start"] for row in body["rows"]} == {"2024-02-27", "2024-02-28"}
    row = body["rows"][0]
    for k in ("gpu_hours", "busy_gpu_hours", "avg_util", "p95_util", "mem_gb_hours",
              "energy_kwh", "idle_held_hours", "peak_concurrent_gpus"):  # fmt: skip
        assert k in row
    assert body["totals"]["gpu_hours"] > 0
    assert body["long_tail"]["hosts"] == 3
    r = client.get("/api/v1/reports?period=month&by=host&from=2024-02-01&to=2024-02-29&format=csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 3


@pytest.mark.parametrize(
    "query, code",
    [
        ("period=fortnight", "invalid_period"),
        ("by=planet", "invalid_by"),
        ("from=2024-13-01", "invalid_date"),
        ("from=2024-03-01&to=2024-02-01", "invalid_range"),
        ("period=custom", "invalid_range"),
    ],
)
def test_api_errors_have_the_one_shape(client, query, code):
    r = client.get(f"/api/v1/reports?{query}")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == code and err["status"] == 400 and err["message"]


def test_cli_report_reads_the_local_store(data_dir):
    args = ["report", "--period", "custom", "--by", "host", "--from", "2024-02-27",
            "--to", "2024-02-28", "--data-dir", str(data_dir)]  # fmt: skip
    r = gpufleet_here(*args, "--format", "json", env={"GPUFLEET_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert [row["key"] for row in body["rows"]] == ["node0", "node1", "node2"]
    r = gpufleet_here(*args, env={"GPUFLEET_CONFIG": "", "COLUMNS": "200"})
    assert r.returncode == 0 and "node1" in r.stdout and "long tail" in r.stdout
    r = gpufleet_here("report", "--by", "planet", "--data-dir", str(data_dir))
    assert r.returncode != 0 and "planet" in r.stderr


def test_core_helpers():
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    hist = [0.0] * 20
    hist[3] = 100.0  # all time within [15, 20)
    assert 15 <= percentile_from_hist(hist, 0.95) <= 20
    assert percentile_from_hist([0.0] * 20, 0.95) is None
    tail = long_tail(
        [
            {
                "key": f"h{i}",
                "held_seconds": 3600 * i,
                "sample_seconds": 3600 * 10,
                "util_seconds": 3600.0,
                "util_percent_seconds": 3600.0 * 10 * i,
            }
            for i in range(10)
        ]
    )
    assert tail["busiest_hosts_gpu_hours_share"] == pytest.approx((9 + 8) / 45)
    assert tail["least_used_hosts"] == ["h0", "h1"]
    assert tail["least_used_idle_gpu_hours"] == pytest.approx(10 + 9)


@pytest.mark.slow
def test_cli_report_finds_the_running_server_and_fits_80_columns(data_dir, tmp_path):
    import shutil

    from tests.conftest import ServerProc, free_port

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    srv = ServerProc(data, free_port(), token="")
    srv.start()
    try:
        args = ["report", "--period", "custom", "--by", "host", "--from", "2024-02-27",
                "--to", "2024-02-28", "--data-dir", str(data)]  # fmt: skip
        env = {"GPUFLEET_CONFIG": "", "COLUMNS": "80", "GPUFLEET_SERVER": ""}
        r = gpufleet_here(*args, env=env)  # the store is the server's: only its API can answer
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80, r.stdout
        assert "node1" in r.stdout and "GPU-h held" in r.stdout and "--wide" in r.stdout
        wide = gpufleet_here(*args, "--wide", env=env)
        assert wide.returncode == 0, wide.stderr
        assert "held vs prev %" in wide.stdout and "energy kWh" in wide.stdout
        assert "--wide" not in wide.stdout
        assert "httpx" not in r.stderr  # no log line for a successful call
    finally:
        srv.stop()


def test_cli_report_on_an_empty_store_says_how_to_get_data(tmp_path):
    r = gpufleet_here("report", "--data-dir", str(tmp_path / "empty"),
                      env={"GPUFLEET_CONFIG": "", "COLUMNS": "200", "GPUFLEET_SERVER": ""})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "no usage in this period yet" in r.stdout.lower() and "make run" in r.stdout
