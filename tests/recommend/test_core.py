"""The pure core: request validation, feasibility over generated fleets, stable answers, ETA."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydantic import ValidationError

from gpufleet.http.errors import validation_details
from gpufleet.recommend.fleet import GIB, FleetSnap, GpuSnap, HostSnap
from gpufleet.recommend.history import FleetHistory, HourlyHeld, build_history
from gpufleet.recommend.rank import Weights, recommend
from gpufleet.recommend.request import RecommendRequest, request_from_any

NOW = 1_795_000_000.0
MODELS = [("NVIDIA A100-SXM4-80GB", 80), ("Tesla V100-SXM2-32GB", 32), ("Tesla T4", 15)]


def host(name: str, model: int = 0, n: int = 8, taken: tuple[int, ...] = (), **kw) -> HostSnap:
    gname, mem = MODELS[model]
    gpus = tuple(
        GpuSnap(i, gname, mem * GIB, "taken" if i in taken else "free",
                held_since=NOW - 3600 if i in taken else None)
        for i in range(n)
    )  # fmt: skip
    return HostSnap(name, gpus, **kw)


def fleet(*hosts: HostSnap) -> FleetSnap:
    return FleetSnap(NOW, tuple(hosts))


def errors_of(body: dict, f: FleetSnap) -> list[dict]:
    with pytest.raises(ValidationError) as exc:
        request_from_any(body, f)
    return validation_details(exc.value)


BASE = {"gpus": 2, "gpu_mem_gib": 40, "hours": 6}


@pytest.mark.parametrize(
    "change, loc, words",
    [
        ({"gpus": 0}, "gpus", "greater than or equal to 1"),
        ({"gpus": "two"}, "gpus", "valid integer"),
        ({"gpu_mem_gib": 0}, "gpu_mem_gib", "greater than 0"),
        ({"gpu_mem_gib": -5}, "gpu_mem_gib", "greater than 0"),
        ({"gpu_mem_gib": 200}, "gpu_mem_gib", "more than the largest GPU in the fleet (80 GiB)"),
        ({"hours": 0}, "hours", "greater than 0"),
        ({"hours": float("nan")}, "hours", "finite"),
        ({"gpu_models": ["H100"]}, "gpu_models[0]", "no GPU in the fleet is a 'H100'"),
        ({"gpu_models": ["A100", "K80"]}, "gpu_models[1]", "no GPU in the fleet is a 'K80'"),
        ({"model": "llama-9000"}, "model", "unknown model type"),
        ({"data_gib": -1}, "data_gib", "greater than or equal to 0"),
        ({"data_gib": 10, "data_host": "nowhere"}, "data_host", "no host named 'nowhere'"),
        ({"gpus": 9}, "gpus", "can never fit: at most 8 such GPUs on any one host"),
        ({"gpus": 2, "gpu_models": ["V100"]}, "gpu_mem_gib", "largest matching GPU"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"gpu_mem_gb": 40}, "gpu_mem_gb", "renamed to gpu_mem_gib"),
        ({"data_gb": 10}, "data_gb", "renamed to data_gib"),
    ],
)
def test_invalid_requests_name_the_field(change: dict, loc: str, words: str) -> None:
    f = fleet(host("a100-1"), host("v100-1", model=1))
    details = errors_of({**BASE, **change}, f)
    assert details[0]["loc"] == loc, details
    assert words in details[0]["msg"], details


def test_multi_host_allows_more_than_one_host_holds() -> None:
    f = fleet(host("a", n=4), host("b", n=4))
    assert "multi_host" in errors_of({**BASE, "gpus": 6}, f)[0]["msg"]
    req = request_from_any({**BASE, "gpus": 6, "multi_host": True}, f)
    ans = recommend(req, f, FleetHistory())
    (c,) = ans.choices
    assert sum(len(g) for _, g in c.parts) == 6
    assert {h for h, _ in c.parts} == {"a", "b"}
    assert c.command.count("ssh") == 2


def test_model_names_and_gpu_models_are_forgiving() -> None:
    f = fleet(host("a100-1"), host("v100-1", model=1))
    r = request_from_any(
        {**BASE, "gpu_mem_gib": 16, "gpu_models": ["v100"], "model": "ResNet-50"}, f
    )
    ans = recommend(r, f, FleetHistory())
    assert [c.host for c in ans.choices] == ["v100-1"]


def random_fleet(rng: random.Random) -> FleetSnap:
    hosts = []
    for i in range(rng.randint(1, 12)):
        model = rng.randrange(len(MODELS))
        gname, mem = MODELS[model]
        gpus = []
        for g in range(rng.choice([1, 2, 4, 8])):
            state = rng.choice(["free", "free", "free", "taken", "reserved", "error"])
            used = rng.choice([None, 0, 2 * GIB, mem * GIB // 2])
            gpus.append(GpuSnap(g, gname, rng.choice([mem * GIB, mem * GIB, None]), state,
                                memory_used_bytes=used,
                                held_since=NOW - rng.uniform(0, 1e5) if state == "taken" else None))  # fmt: skip
        status = rng.choice(["online", "online", "online", "stale", "offline"])
        hosts.append(HostSnap(f"h{i:02d}", tuple(gpus), status))
    return FleetSnap(NOW, tuple(hosts))


def random_history(f: FleetSnap, rng: random.Random) -> FleetHistory:
    keys = [(h.name, g.index) for h in f.hosts for g in h.gpus]
    held = np.array([[rng.choice([0.0, 0.0, 1.0, 0.5, np.nan]) for _ in range(200)] for _ in keys])
    return build_history(
        HourlyHeld(int(NOW // 3600) * 3600 - 200 * 3600, keys, held.reshape(len(keys), 200))
    )


def test_never_recommends_a_taken_reserved_offline_or_small_gpu() -> None:
    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        f = random_fleet(rng)
        hist = random_history(f, rng)
        body = {
            "gpus": rng.choice([1, 1, 2, 3, 4, 8]),
            "gpu_mem_gib": rng.choice([4, 14, 16, 30, 40, 79]),
            "hours": rng.choice([0.5, 3, 24, 200]),
            "multi_host": rng.random() < 0.3,
            "limit": 50,
        }
        try:
            req = request_from_any(body, f)
        except ValidationError:
            continue
        ans = recommend(req, f, hist)
        by_name = {h.name: h for h in f.hosts}
        for c in ans.choices:
            parts = c.parts or ((c.host, c.gpus),)
            assert sum(len(g) for _, g in parts) == req.gpus
            for hname, gpus in parts:
                h = by_name[hname]
                assert h.status == "online"
                assert len(set(gpus)) == len(gpus)
                for i in gpus:
                    g = next(x for x in h.gpus if x.index == i)
                    assert g.state == "free", (hname, g)
                    assert g.memory_total_bytes is not None
                    assert g.memory_total_bytes >= req.gpu_mem_bytes
                    assert (g.memory_used_bytes or 0) + req.gpu_mem_bytes <= g.memory_total_bytes
                    checked += 1
            assert 0.0 <= c.p_free <= 1.0
            if not req.multi_host:
                assert not c.parts
        if not ans.choices:
            assert ans.note
    assert checked > 200


def test_same_state_same_answer_and_ties_go_to_the_name() -> None:
    f = fleet(*(host(f"node-{i}", taken=(0,)) for i in (3, 1, 2)))
    req = request_from_any({**BASE, "limit": 3}, f)
    first = recommend(req, f, FleetHistory()).as_json()
    for _ in range(5):
        assert recommend(req, f, FleetHistory()).as_json() == first
    assert [r["host"] for r in first["recommendations"]] == ["node-1", "node-2", "node-3"]
    # the same snapshot rebuilt in another host order gives the same answer
    g = FleetSnap(NOW, tuple(reversed(f.hosts)))
    assert recommend(req, g, FleetHistory()).as_json() == first


def test_history_steers_to_quiet_hosts_and_explains() -> None:
    f = fleet(host("busy-1", taken=(0, 1, 2, 3)), host("quiet-1", taken=(0, 1, 2, 3)))
    keys = [(h.name, g.index) for h in f.hosts for g in h.gpus]
    hours = 24 * 21
    rng = np.random.default_rng(1)
    held = np.zeros((len(keys), hours))
    for i, (name, _) in enumerate(keys):
        # busy-1's GPUs are taken again within hours of being freed; quiet-1's rarely are
        p = 0.5 if name == "busy-1" else 0.02
        held[i] = (rng.random(hours) < p).astype(float)
    hist = build_history(HourlyHeld(int(NOW // 3600) * 3600 - hours * 3600, keys, held))
    req = request_from_any({**BASE, "gpu_mem_gib": 10, "model": "resnet50"}, f)
    ans = recommend(req, f, hist)
    assert [c.host for c in ans.choices] == ["quiet-1", "busy-1"]
    best = ans.choices[0]
    assert best.p_free > ans.choices[1].p_free
    text = " ".join(best.reasons)
    assert "4 of 8 GPUs free now" in text
    assert "chance none of them is taken in the next 6 h" in text
    assert "less used than most hosts" in text
    assert "2.0x faster for ResNet-50 than a V100" in text
    assert best.command == f"CUDA_VISIBLE_DEVICES={','.join(map(str, best.gpus))} ssh quiet-1"
    assert "crowded host" in " ".join(ans.choices[1].reasons)


def test_data_location_and_eta_when_nothing_fits() -> None:
    f = fleet(host("a", n=4), host("b", n=4))
    req = request_from_any({**BASE, "gpu_mem_gib": 10, "data_gib": 500, "data_host": "b"}, f)
    ans = recommend(req, f, FleetHistory())
    assert ans.choices[0].host == "b"
    assert 0.0 < ans.choices[0].p_free < 1.0  # no history: the fleet's default rate, not "never"
    assert "already here" in " ".join(ans.choices[0].reasons)
    assert "copying 500 GiB from b takes ~1.2 h" in " ".join(ans.choices[1].reasons)

    full = fleet(host("a", n=4, taken=(0, 1, 2, 3)), host("b", n=4, taken=(0, 1, 2)),
                 host("c", n=4, status="offline"))  # fmt: skip
    req = request_from_any({**BASE, "gpu_mem_gib": 10}, full)
    ans = recommend(req, full, FleetHistory())
    assert ans.choices == ()
    assert "no online host has 2 free GPUs" in (ans.note or "")
    # nothing known: each job is expected to run about as long again as it has (1 h here,
    # 80% range 1/9 h .. 9 h); with seven such GPUs on two hosts, some set frees sooner
    assert ans.eta is not None and ans.eta.host == "a" and ans.eta.gpus == (0, 1)
    assert 0 < ans.eta.low_hours < ans.eta.in_hours < 1.0 and ans.eta.high_hours < 9.0
    assert f"likely free in ~{ans.eta.in_hours:.1f} h somewhere" in ans.eta.reason
    assert "likeliest on a: GPU 0 held for 1.0 h" in ans.eta.reason
    # one GPU held for 1 h, needed alone: the median is that GPU's own, 1 h
    one = fleet(host("a", n=1, taken=(0,)))
    req1 = request_from_any({**BASE, "gpus": 1, "gpu_mem_gib": 10}, one)
    eta1 = recommend(req1, one, FleetHistory()).eta
    assert eta1 is not None and eta1.in_hours == pytest.approx(1.0, rel=0.05)
    assert eta1.high_hours == pytest.approx(9.0, rel=0.1)
    assert ans.as_json()["eta"]["at"] > NOW


def test_request_model_alone_checks_sizes() -> None:
    with pytest.raises(ValidationError):
        RecommendRequest(gpus=1, gpu_mem_gib=0, hours=1)
    r = RecommendRequest(gpus=1, gpu_mem_gib=40, hours=1)
    assert r.gpu_mem_bytes == 40 * GIB


def test_among_equally_safe_sets_the_less_used_host_wins() -> None:
    # two identical hosts, one GPU held on each: equally safe; "a" has served 10 GPU-hours
    # since the history, "b" one
    def one_held(name: str, hours: float) -> HostSnap:
        gpus = tuple(
            GpuSnap(i, MODELS[0][0], 80 * GIB, "taken" if i == 0 else "free",
                    held_since=NOW - hours * 3600 if i == 0 else None)
            for i in range(8)
        )  # fmt: skip
        return HostSnap(name, gpus)

    f = fleet(one_held("a", 10), one_held("b", 1))
    req = request_from_any({**BASE, "limit": 2}, f)
    ans = recommend(req, f, FleetHistory())
    assert [c.host for c in ans.choices] == ["b", "a"]
    assert ans.choices[0].score == ans.choices[1].score
    # by score alone, the tie goes to the name
    plain = recommend(req, f, FleetHistory(), weights=Weights(band=0.0))
    assert [c.host for c in plain.choices] == ["a", "b"]


def test_strict_numbers_and_memory_a_card_never_has_free() -> None:
    f = fleet(host("a100-1"))
    assert errors_of({**BASE, "gpus": True}, f)[0]["loc"] == "gpus"
    assert "not true" in errors_of({**BASE, "gpus": True}, f)[0]["msg"]
    assert errors_of({**BASE, "hours": False}, f)[0]["loc"] == "hours"
    # the driver holds some memory on every card: 80 GB of an 80 GB card can never be had
    used = tuple(
        GpuSnap(i, MODELS[0][0], 80 * GIB, "free", memory_used_bytes=300 * 2**20) for i in range(8)
    )
    f = fleet(HostSnap("a100-1", used))
    (d,) = errors_of({**BASE, "gpu_mem_gib": 80}, f)
    assert d["loc"] == "gpu_mem_gib" and "can never fit" in d["msg"] and "79.7 GiB" in d["msg"]
    assert request_from_any({**BASE, "gpu_mem_gib": 79}, f).gpu_mem_gib == 79


@pytest.mark.parametrize(
    "hosts, body, words",
    [
        ([host("a", taken=(0, 1, 2, 3, 4, 5, 6))], {}, "GPUs: at most 1 of them free"),
        ([host("a", model=2), host("b", status="offline")], {"gpu_mem_gib": 20}, "hosts offline"),
        (
            [host("a"), host("b", model=2, status="offline")],
            {"gpu_models": ["T4"]},
            "GPU model: no online host has a T4",
        ),
        (
            [host("a", disk_free_bytes=10**9), host("b", disk_free_bytes=10**9)],
            {"data_gib": 50, "data_host": "a"},
            None,
        ),
        ([host("a", disk_free_bytes=10**9)], {"data_gib": 50}, "disk: the hosts with 2 free GPUs"),
    ],
)
def test_nothing_fits_names_the_limit(hosts, body, words) -> None:
    f = fleet(*hosts)
    req = request_from_any({**BASE, "gpu_mem_gib": 10} | body, f)
    ans = recommend(req, f, FleetHistory())
    if words is None:  # the data is on "a": no copy needed there, so it fits
        assert ans.choices and ans.choices[0].host == "a"
        return
    assert ans.choices == ()
    assert words in (ans.note or ""), ans.note


def test_memory_in_use_is_named_and_eta_has_a_range() -> None:
    half = tuple(
        GpuSnap(i, MODELS[0][0], 80 * GIB, "free", memory_used_bytes=60 * GIB) for i in range(4)
    ) + tuple(
        GpuSnap(i, MODELS[0][0], 80 * GIB, "taken", memory_used_bytes=70 * GIB,
                held_since=NOW - 2 * 3600)
        for i in range(4, 8)
    )  # fmt: skip
    f = fleet(HostSnap("a", half))
    req = request_from_any({**BASE, "gpu_mem_gib": 40}, f)
    ans = recommend(req, f, FleetHistory())
    assert "GPU memory in use" in (ans.note or "")
    assert ans.eta is not None and ans.eta.gpus == (4, 5)
    assert ans.eta.low_hours < ans.eta.in_hours < ans.eta.high_hours
    assert "80% range" in ans.eta.reason
    j = ans.as_json()["eta"]
    assert j["low_hours"] <= j["in_hours"] <= j["high_hours"]


def test_no_history_says_so_and_never_promises_certainty() -> None:
    f = fleet(host("a"), host("b"))
    ans = recommend(request_from_any({**BASE, "hours": 0.25}, f), f, FleetHistory())
    for c in ans.choices:
        assert c.p_free < 1.0
        text = " ".join(c.reasons)
        assert "no history for this host" in text and "100%" not in text


def test_a_multi_host_answer_lists_every_host() -> None:
    f = fleet(host("a", n=4), host("b", n=4))
    req = request_from_any({**BASE, "gpus": 6, "multi_host": True}, f)
    (c,) = recommend(req, f, FleetHistory()).as_json()["recommendations"]
    assert {p["host"] for p in c["hosts"]} == {"a", "b"}
    assert "a" in c["host"] and "b" in c["host"] and len(c["gpus"]) == 6


def test_remembered_answers_are_not_offered_again_until_they_expire() -> None:
    from gpufleet.recommend.baselines import GpufleetTop
    from gpufleet.recommend.rank import FleetIndex

    f = fleet(host("a", n=2), host("b", n=2))
    req = request_from_any({**BASE, "gpus": 2, "gpu_mem_gib": 10, "hours": 1}, f)
    top = GpufleetTop(remember_seconds=600)
    first = top(req, f, FleetHistory())
    second = top(req, f, FleetHistory())
    assert first is not None and second is not None and first.host != second.host
    assert top(req, f, FleetHistory()) is None  # both remembered: nothing to offer
    later = FleetSnap(NOW + 601, f.hosts)
    assert top(req, later, FleetHistory()) is not None
    # the index form the server uses gives the same as the snapshot form
    ix = FleetIndex(f, FleetHistory()).with_reserved({("a", 0), ("a", 1)})
    (only,) = recommend(req, f, FleetHistory(), index=ix).choices
    assert only.host == "b"
