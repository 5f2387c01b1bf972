"""The recommender through a real server: the API, the CLI against it, and the web form."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import gpufleet_here, make_batch
from tests.web.conftest import fleet_sample

URL = "/api/v1/recommendations"


def feed(server) -> None:
    """Three hosts: two A100 hosts with 3 free GPUs, one V100 host (32 GB) with 8 free."""
    now = time.time()
    samples = [
        fleet_sample("vision-a100-01", 0, ts=now, busy=5),
        fleet_sample("vision-a100-02", 1, ts=now, busy=5),
        fleet_sample("nlp-v100-01", 2, ts=now, model="Tesla V100-SXM2-32GB", busy=0),
    ]
    for s in samples[2:]:
        for g in s.gpus:
            g.memory_total_bytes = 32 * 2**30
    server.post_seen(make_batch(*samples))


def post(server, body) -> httpx.Response:
    return httpx.post(server.url + URL, json=body, timeout=30)


@pytest.fixture
def fed(server):
    feed(server)
    return server


def test_api_ranks_free_gpus_with_reasons_and_command(fed) -> None:
    r = post(fed, {"gpus": 2, "gpu_mem_gib": 40, "hours": 6, "model": "resnet50"})
    assert r.status_code == 200, r.text
    data = r.json()
    recs = data["recommendations"]
    assert {x["host"] for x in recs} == {"vision-a100-01", "vision-a100-02"}  # V100s too small
    for x in recs:
        assert len(x["gpus"]) == 2 and all(g >= 5 for g in x["gpus"])  # GPUs 0-4 are held
        assert 0 < x["p_free_for_duration"] <= 1 and x["score"] > 0
        assert (
            x["command"] == f"CUDA_VISIBLE_DEVICES={','.join(map(str, x['gpus']))} ssh {x['host']}"
        )
        assert x["ssh"] == x["command"]
        assert any("3 of 8 GPUs free now" in why for why in x["reasons"])
    assert data["eta"] is None
    # the next asker is not sent to the set just recommended (the server remembers its
    # answers until that job had time to start): another host here
    again = post(fed, {"gpus": 2, "gpu_mem_gib": 40, "hours": 6, "model": "resnet50"}).json()
    top, nxt = recs[0], again["recommendations"][0]
    assert nxt["host"] != top["host"] or not set(nxt["gpus"]) & set(top["gpus"])
    assert all(
        not (r["host"] == top["host"] and set(r["gpus"]) & set(top["gpus"]))
        for r in again["recommendations"]
    )
    # nothing fits now: when and where it likely will
    r = post(fed, {"gpus": 4, "gpu_mem_gib": 60, "hours": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["recommendations"] == []
    assert "no online host has 4 free GPUs" in data["note"]
    assert data["eta"]["host"].startswith("vision-a100-0") and data["eta"]["in_hours"] > 0


ERRORS = [
    ({"gpus": 0, "gpu_mem_gib": 8, "hours": 1}, "gpus", "greater than or equal to 1"),
    ({"gpus": 1, "gpu_mem_gib": 100, "hours": 1}, "gpu_mem_gib", "largest GPU in the fleet"),
    ({"gpus": 1, "gpu_mem_gib": 8, "hours": -1}, "hours", "greater than 0"),
    ({"gpus": 1, "gpu_mem_gib": 8, "hours": 1, "gpu_models": ["H100"]}, "gpu_models[0]", "H100"),
    ({"gpus": 1, "gpu_mem_gib": 8, "hours": 1, "model": "foo"}, "model", "unknown model type"),
    ({"gpus": 9, "gpu_mem_gib": 8, "hours": 1}, "gpus", "can never fit"),
    ({"gpu_mem_gib": 8, "hours": 1}, "gpus", "Field required"),
    ({"gpus": 1, "gpu_mem_gib": 8, "hours": 1, "data_host": "x"}, "data_host", "no host named"),
]


def test_api_errors_name_the_field(fed) -> None:
    for body, loc, words in ERRORS:
        r = post(fed, body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_request" and err["status"] == 422
        assert err["details"][0]["loc"] == loc, (body, err)
        assert words in err["details"][0]["msg"], (body, err)
        assert loc in err["message"]
    r = httpx.post(fed.url + URL, content=b"{nope", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(fed.url + URL, json=[1, 2], timeout=10)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == "(body)"
    spec = httpx.get(fed.url + "/openapi.json", timeout=10).json()
    assert "post" in spec["paths"][URL]


def test_cli_against_the_server_and_wait(fed) -> None:
    args = ["recommend", "--server", fed.url, "--gpus", "2", "--gpu-mem", "40G", "--hours", "6"]
    r = gpufleet_here(*args, "--model", "resnet50", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["recommendations"][0]["host"].startswith("vision-a100-0")
    r = gpufleet_here(*args, "--gpu-model", "V100", "--gpu-mem", "16G")
    assert r.returncode == 0, r.stderr
    assert "1. nlp-v100-01  GPU 6,7" in r.stdout or "1. nlp-v100-01  GPU" in r.stdout
    assert "CUDA_VISIBLE_DEVICES=" in r.stdout and "ssh nlp-v100-01" in r.stdout
    bad = gpufleet_here(*args[:-2], "--hours", "6", "--gpu-model", "K80")
    assert bad.returncode != 0
    assert "error: --gpu-model: no GPU in the fleet is a 'K80'" in bad.stderr
    bad = gpufleet_here(*args[:5], "--gpu-mem", "lots", "--hours", "6")
    assert bad.returncode != 0 and "--gpu-mem" in bad.stderr and "40G" in bad.stderr
    bad = gpufleet_here(*args, "--data-size", "huge")
    assert bad.returncode != 0 and "--data-size" in bad.stderr and "40G" in bad.stderr
    r = gpufleet_here(*args, "--data-size", "100G", "--data-host", "nlp-v100-01", "--json")
    assert r.returncode == 0, r.stderr
    reasons = " ".join(x for rec in json.loads(r.stdout)["recommendations"] for x in rec["reasons"])
    assert "copying 100 GiB from nlp-v100-01" in reasons

    feed(fed)  # fresh samples: on a loaded machine the steps above can outlast "online"
    args = ["recommend", "--server", fed.url, "--gpus", "4", "--gpu-mem", "60G", "--hours", "1",
            "--wait", "--poll", "0.5"]  # fmt: skip
    r = gpufleet_here(*args, "--timeout", "1")
    assert r.returncode != 0 and "nothing fitting freed up within 1 s" in r.stderr
    assert "most likely soonest" in r.stdout
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "gpufleet", *args, "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(2)
    s = fleet_sample("vision-a100-01", 0, ts=time.time(), busy=1)  # its jobs ended
    assert fed.post(make_batch(s)).status_code == 200
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "1. vision-a100-01" in out and "ssh vision-a100-01" in out


@pytest.mark.slow
def test_web_form_shows_the_ranked_answer(fed, browser) -> None:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    js_errors: list[str] = []
    page.on("pageerror", lambda e: js_errors.append(str(e)))
    try:
        page.goto(fed.url + "/")
        page.click("nav >> text=Recommend")
        page.wait_for_url("**/recommend")
        page.fill("input[name=gpus]", "2")
        page.fill("input[name=gpu_mem_gib]", "40")
        page.fill("input[name=hours]", "6")
        page.select_option("select[name=model]", "resnet50")
        page.click("#rec-submit")
        page.wait_for_selector("#rec-answer li.rec")
        hosts = page.locator("li.rec .rec-host").all_inner_texts()
        assert hosts and all(h.startswith("vision-a100-0") for h in hosts)
        assert "CUDA_VISIBLE_DEVICES=" in page.locator("li.rec code.rec-cmd").first.inner_text()
        assert "3 of 8 GPUs free now" in page.locator("li.rec").first.inner_text()
        # the page shows what the API answers (the same function); the API, asked right
        # after, leaves out the set it just gave the page (it remembers its answers)
        api = post(fed, {"gpus": "2", "gpu_mem_gib": "40", "hours": "6", "model": "resnet50"})
        first_gpus = page.locator("li.rec .rec-gpus").first.inner_text()
        answers = api.json()["recommendations"]
        assert answers and {x["host"] for x in answers} <= set(hosts)
        assert all(f"GPU {', '.join(map(str, x['gpus']))}" != first_gpus or x["host"] != hosts[0]
                   for x in answers)  # fmt: skip
        assert "Listed in this order" in page.locator("#rec-order").inner_text()
        assert "#1:" in page.locator("li.rec .rec-why-here").first.inner_text()
        page.fill("input[name=gpu_mem_gib]", "500")
        page.click("#rec-submit")
        page.wait_for_selector("#rec-error")
        assert "gpu_mem_gib" in page.locator("#rec-error").inner_text()
    finally:
        ctx.close()
    assert not js_errors
