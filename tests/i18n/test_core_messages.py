"""What the capability cores say (the recommender's reasons, notes and estimates) in the
reader's language: built once as ``i18n.Msg``, sent by the API beside its English text, and
rendered by the /recommend page (a real server on loopback) and ``gpufleet recommend``."""

from __future__ import annotations

import html
import re

import httpx
import pytest

from gpufleet import i18n
from gpufleet.i18n import Msg, msg, nmsg
from tests.conftest import gpufleet_here
from tests.recommend.test_server import URL, feed

HAN = re.compile(r"[\u4e00-\u9fff]")
ZH_HEADERS = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}


def test_a_message_renders_in_each_language_and_survives_json():
    when = msg("{weekday} {part}", weekday=msg("Thursday"), part=msg("evenings"))
    m = msg("this host is usually quiet on {when}", when=when)
    assert m.render("en") == "this host is usually quiet on Thursday evenings" == str(m)
    assert m.render("zh-CN") == "此主机在周四晚上通常较空闲"
    back = Msg.from_json(m.as_json())
    assert back == m and back.render("zh-CN") == m.render("zh-CN")
    # numbers stay numbers in the JSON; the template's format spec formats them alike
    crowded = msg("a crowded host ({times:.1f}x the fleet's average use)", times=1.6666)
    assert crowded.as_json()["params"] == {"times": 1.6666}
    assert crowded.render("en").endswith("(1.7x the fleet's average use)")
    assert "1.7" in crowded.render("zh-CN") and HAN.search(crowded.render("zh-CN"))
    # plural: English by n, Chinese one form
    one, other = "{n} free GPU with {gib:g} GiB", "{n} free GPUs with {gib:g} GiB"
    assert nmsg(one, other, 1, gib=40.0).render("en") == "1 free GPU with 40 GiB"
    assert nmsg(one, other, 3, gib=40.0).render("en") == "3 free GPUs with 40 GiB"
    assert Msg.from_json(nmsg(one, other, 3, gib=40.0).as_json()).render("zh-CN").strip() == (
        "3 块 40 GiB 的空闲 GPU"
    )
    # a list parameter: joined the way each language joins
    parts = [msg("GPU {gpu} held for {hours:.1f} h", gpu=0, hours=1.0), "..."]
    eta = msg("likely free in ~{hours:.1f} h somewhere (80% range {low:.1f}-{high:.1f} h),"
              " judging by how long holds lasted before; likeliest on {host}: {detail}",
              hours=2.0, low=1.0, high=3.0, host="a", detail=parts)  # fmt: skip
    assert eta.render("en").endswith("likeliest on a: GPU 0 held for 1.0 h; ...")
    assert eta.render("zh-CN").endswith("最可能在 a：GPU 0 已被占用 1.0 小时；...")
    # a word with two meanings keeps its context through the JSON
    held = Msg.from_json(i18n.pmsg("job state", "held").as_json())
    assert held.render("zh-CN") == "挂起" and held.render("en") == "held"
    # plain text (an older server's English) is shown as it is
    assert i18n.render("3 of 8 GPUs free now", "zh-CN") == "3 of 8 GPUs free now"
    with pytest.raises(ValueError, match="'id'"):
        Msg.from_json({"params": {}})
    with pytest.raises(ValueError, match="params"):
        Msg.from_json({"id": "x", "params": [1]})


@pytest.fixture
def fed(server):
    feed(server)
    return server


def _text(page: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</(?:p|section|ol)>', page, re.S)
    assert m, page[-2000:]
    return html.unescape(re.sub(r"<[^>]+>", " ", m.group(1)))


def _reasons(page: str) -> str:
    lists = re.findall(r'<ul class="rec-reasons">(.*?)</ul>', page, re.S)
    assert lists, page[-2000:]
    return html.unescape(re.sub(r"<[^>]+>", " | ", " ".join(lists)))


def test_the_api_sends_each_reason_as_a_message_whose_english_is_the_reason(fed):
    r = httpx.post(fed.url + URL, json={"gpus": 2, "gpu_mem_gib": 40, "hours": 6,
                                        "model": "resnet50"}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    for rec in r.json()["recommendations"]:
        assert len(rec["reasons_i18n"]) == len(rec["reasons"]) >= 2
        assert [i18n.render(m, "en") for m in rec["reasons_i18n"]] == rec["reasons"]
        zh = [i18n.render(m, "zh-CN") for m in rec["reasons_i18n"]]
        assert all(HAN.search(z) for z in zh), zh
    data = httpx.post(fed.url + URL, json={"gpus": 4, "gpu_mem_gib": 60, "hours": 2},
                      timeout=30).json()  # fmt: skip
    assert i18n.render(data["note_i18n"], "en") == data["note"]
    assert i18n.render(data["eta"]["reason_i18n"], "en") == data["eta"]["reason"]


def test_the_recommend_page_shows_the_reasons_in_the_readers_language(fed):
    q = "/recommend?gpus=2&gpu_mem_gib=40&hours=6&model=resnet50"
    zh = httpx.get(fed.url + q, headers=ZH_HEADERS, timeout=30)
    assert zh.status_code == 200, zh.text[:300]
    reasons = _reasons(zh.text)
    assert "现有 3/8 块 GPU 空闲；GPU" in reasons, reasons
    assert "GPUs free now" not in reasons and "chance none of them" not in reasons
    en = httpx.get(fed.url + q, timeout=30).text
    assert "3 of 8 GPUs free now; GPUs" in _reasons(en)
    # nothing fits: the note and the estimate's reason
    q = "/recommend?gpus=4&gpu_mem_gib=60&hours=2"
    zh = httpx.get(fed.url + q, headers=ZH_HEADERS, timeout=30).text
    note = _text(zh, "rec-note")
    assert note.startswith("目前没有在线主机有 4 块 60 GiB 的空闲 GPU"), note
    assert "no online host" not in note
    eta = _text(zh, "rec-eta")
    assert "某处可能空闲" in eta and "最可能在 vision-a100-0" in eta and "likely free" not in eta
    en = httpx.get(fed.url + q, timeout=30).text
    assert "no online host has 4 free GPUs with 60 GiB right now" in _text(en, "rec-note")


def test_gpufleet_recommend_prints_the_reasons_in_the_clis_language(fed):
    args = ["recommend", "--server", fed.url, "--gpus", "2", "--gpu-mem", "40G", "--hours", "6",
            "--data-size", "100G", "--data-host", "nlp-v100-01"]  # fmt: skip
    r = gpufleet_here(*args, env={"GPUFLEET_LANG": "zh-CN"})
    assert r.returncode == 0, r.stderr
    assert "现有 3/8 块 GPU 空闲；GPU" in r.stdout, r.stdout
    assert "从 nlp-v100-01 复制 100 GiB 约需" in r.stdout, r.stdout
    assert "GPUs free now" not in r.stdout and "copying" not in r.stdout
    r = gpufleet_here(*args, env={"GPUFLEET_LANG": "en"})
    assert "3 of 8 GPUs free now" in r.stdout and "copying 100 GiB from nlp-v100-01" in r.stdout
    # fresh samples: on a busy machine the CLI calls above can outlast the hosts' 60 s online
    # window, and an offline fleet gives another note (no estimate)
    feed(fed)
    r = gpufleet_here("recommend", "--server", fed.url, "--gpus", "4", "--gpu-mem", "60G", "--hours",
                 "2", env={"GPUFLEET_LANG": "zh-CN"})  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "目前没有在线主机有 4 块 60 GiB 的空闲 GPU" in r.stdout and "最可能在" in r.stdout, (
        r.stdout
    )


def test_a_quota_names_itself_in_each_language():
    from gpufleet.queue.quota import Limit, QuotaRules, Usage

    rules = QuotaRules(users={"ann": Limit(gpus_at_once=2, gpu_hours_per_week=5)})
    m = rules.blocks_msg("ann", "", 1, Usage(gpus={("user", "ann"): 2}))
    assert m is not None
    assert m.render("en") == "quota: user ann may hold 2 GPUs at once; holds 2, this job needs 1"
    assert rules.blocks("ann", "", 1, Usage(gpus={("user", "ann"): 2})) == m.render("en")
    assert Msg.from_json(m.as_json()).render("zh-CN") == (
        "配额：用户 ann 同时最多占用 2 块 GPU；已占用 2 块，此作业需要 2 块".replace(
            "需要 2", "需要 1"
        )
    )
    used = rules.blocks_msg("ann", "", 1, Usage(gpu_hours={("user", "ann"): 5.0}))
    assert used is not None and "已用 5.0 / 5 GPU 时" in used.render("zh-CN")
    assert "has used 5.0 of 5 GPU-hours" in used.render("en")


def test_why_a_job_waits_in_the_clis_and_the_pages_language(tmp_path, server_factory, browser):
    from tests.queue.test_cli import Heartbeat, api_jobs, cli, config, wait

    srv = server_factory("--config", config(tmp_path, policy="fifo"))  # FIFO: no preemption
    admin = {"Authorization": f"Bearer {(srv.data_dir / 'admin.key').read_text().strip()}"}
    with Heartbeat(srv, hosts=1, gpus=1):
        ids = []
        for name in ("first", "second"):  # one GPU: the second waits for the first
            spec = {"name": name, "user": "ann", "gpus": 1, "model_name": "resnet50",
                    "epochs": 1, "command": ["sleep", "600"]}  # fmt: skip
            r = httpx.post(srv.url + "/api/v1/admin/jobs", json=spec, headers=admin, timeout=30)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

        def second_waits_for_resources() -> dict | None:
            jobs = {j["id"]: j for j in api_jobs(srv)}
            j = jobs.get(ids[1])
            ok = j and j["state"] == "pending" and j["waiting_reason"].startswith("resources")
            return j if ok and jobs[ids[0]]["state"] == "running" else None

        job = wait(second_waits_for_resources)
        assert i18n.render(job["waiting_reason_i18n"], "en") == job["waiting_reason"]
        assert job["waiting_reason"] == "resources: 1 GPU(s) not free on a usable GPU model"
        r = cli(srv, "jobs", env={"GPUFLEET_LANG": "zh-CN", "COLUMNS": "250"})
        assert r.returncode == 0, r.stderr
        assert "资源：可用的 GPU 型号上没有 1 块空闲 GPU" in r.stdout, r.stdout
        assert "not free on a usable" not in r.stdout
        r = cli(srv, "jobs", env={"GPUFLEET_LANG": "en", "COLUMNS": "250"})
        assert "resources: 1 GPU(s) not free on a usable GPU model" in r.stdout, r.stdout
        # the queue page's script renders the same message in the page's language
        context = browser.new_context(locale="zh-CN")
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/queue")
            cell = f"#pending-table tr[data-job='{job['id']}'] td.reason"
            page.wait_for_selector(cell, timeout=30_000)
            assert page.inner_text(cell) == "资源：可用的 GPU 型号上没有 1 块空闲 GPU"
            assert not errors, errors
        finally:
            context.close()
