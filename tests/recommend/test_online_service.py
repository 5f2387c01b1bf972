"""The server's side of online calibration (recommend/service.py, recommend/outcomes.py): its
answers are recorded, settled from the live state, used for what it states next, and kept
across a restart."""

from __future__ import annotations

import time

import pytest

from gpufleet.config import Settings
from gpufleet.http.auth import TokenCache
from gpufleet.http.context import Context
from gpufleet.live.state import LiveState
from gpufleet.recommend.service import RecommendService
from gpufleet.store.duck import DuckDBStore
from gpufleet.wire import GpuProcess
from tests.web.conftest import fleet_sample


@pytest.fixture
def ctx(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    settings = Settings(server={"data_dir": tmp_path})
    live = LiveState(status_cfg={"stale_after_intervals": 1e9, "offline_after_seconds": 1e9})
    yield Context(settings, store, live, TokenCache(store), "k")
    store.close()


def show(ctx, host: str, busy: int, now: float, extra: dict[int, float] | None = None) -> None:
    """The host's GPUs 0..busy-1 held (for an hour), and GPU g held since ``extra[g]``."""
    s = fleet_sample(host, 0, ts=now, busy=busy)
    for g, since in (extra or {}).items():
        s.gpus[g].memory_used_bytes = 30 * 2**30
        s.processes.append(GpuProcess(pid=9000 + g, gpu_index=g, user="zoe",
                                      command="python x.py", started_at=since))  # fmt: skip
    ctx.live.update(s, source="push", token_name=None, received_at=now, agent_version=None,
                    clock_skew_seconds=None)  # fmt: skip


def ask(svc: RecommendService, body: dict, now: float) -> dict:
    req, snap, index = svc.parse(body, now)
    return svc.answer(req, snap, index)


def test_answers_are_settled_from_live_state_and_survive_a_restart(ctx) -> None:
    t0 = time.time()
    show(ctx, "a100-01", 5, t0)
    show(ctx, "a100-02", 5, t0)
    svc = RecommendService(ctx)
    out = ask(svc, {"gpus": 1, "gpu_mem_gib": 20, "hours": 1, "limit": 2}, t0)
    assert out["calibrated_on_answers"] == 0 and len(out["recommendations"]) == 2
    top, other = out["recommendations"]
    # someone else takes the second answer's GPU 20 minutes later
    g = other["gpus"][0]
    show(ctx, other["host"], 5, t0 + 1200, {g: t0 + 1100})
    show(ctx, top["host"], 5, t0 + 1200)
    got = svc.settle(t0 + 1200)
    assert got["answers_settled"] == 1  # the taken one; the other's window is not over
    assert got["calibrated_on"] == 0  # and even a failure counts only once its window is over
    got = svc.settle(t0 + 3700)
    # both settled; the map learns from the answers below the top only (people follow the
    # top one: online.OnlineParams.top_answers)
    assert got["answers_settled"] == 1 and got["calibrated_on"] == 1
    svc.close()
    # a restart: the same outcomes, read back from recommend.sqlite3
    again = RecommendService(ctx)
    kept = sorted((s.host, s.gpus, s.outcome) for s in again.chance.answers.values())
    assert kept == sorted([(top["host"], tuple(top["gpus"]), True),
                           (other["host"], tuple(other["gpus"]), False)])  # fmt: skip
    again.settle(t0 + 3800)
    out = ask(again, {"gpus": 1, "gpu_mem_gib": 20, "hours": 1}, t0 + 3800)
    assert out["calibrated_on_answers"] == 1
    assert any("checked against 1 of this fleet's past answers" in why
               for why in out["recommendations"][0]["reasons"])  # fmt: skip
    again.close()


def test_a_nothing_fits_estimate_is_settled_when_a_set_fits_and_kept_across_a_restart(ctx) -> None:
    t0 = time.time()
    show(ctx, "a100-01", 6, t0)
    svc = RecommendService(ctx)
    out = ask(svc, {"gpus": 4, "gpu_mem_gib": 20, "hours": 2}, t0)
    assert out["recommendations"] == [] and out["eta"]["range_from"] == "past holds"
    svc.close()
    svc = RecommendService(ctx)  # restarted while it waits
    assert list(svc.eta_requests) == list(svc.etas.estimates)
    assert svc.settle(t0 + 600)["estimates_settled"] == 0
    show(ctx, "a100-01", 2, t0 + 1800)  # four GPUs freed
    assert svc.settle(t0 + 1800)["estimates_settled"] == 1
    (e,) = svc.etas.estimates.values()
    assert e.actual == pytest.approx(0.5)
    svc.close()


def test_switched_off_it_states_the_offline_map(ctx, tmp_path) -> None:
    ctx.settings.recommend.calibrate_online = False
    t0 = time.time()
    show(ctx, "a100-01", 5, t0)
    svc = RecommendService(ctx)
    out = ask(svc, {"gpus": 1, "gpu_mem_gib": 20, "hours": 1}, t0)
    assert out["calibrated_on_answers"] == 0 and svc.settle(t0 + 60) == {}
    assert not (tmp_path / "recommend.sqlite3").exists()


def test_an_estimate_saved_under_the_old_field_names_is_still_settled(ctx) -> None:
    """a recommend.sqlite3 written earlier holds requests with ``gpu_mem_gb``/``data_gb``:
    they are read in today's names (GiB), not dropped."""
    import json
    import sqlite3
    from pathlib import Path

    from gpufleet.recommend.outcomes import DB_FILE

    t0 = time.time()
    show(ctx, "a100-01", 6, t0)
    svc = RecommendService(ctx)
    out = ask(svc, {"gpus": 4, "gpu_mem_gib": 20, "hours": 2}, t0)
    assert out["recommendations"] == [] and out["eta"] is not None
    svc.close()
    db = sqlite3.connect(Path(ctx.settings.server.data_dir) / DB_FILE)
    ((key, body),) = db.execute("SELECT key, request FROM etas").fetchall()
    old = json.loads(body)
    old["gpu_mem_gb"] = old.pop("gpu_mem_gib")
    old["data_gb"] = 2**30 / 10**9 * old.pop("data_gib", 0.0)
    db.execute("UPDATE etas SET request = ? WHERE key = ?", (json.dumps(old), key))
    db.commit()
    db.close()
    svc = RecommendService(ctx)
    assert svc.eta_requests[key].gpu_mem_gib == 20
    show(ctx, "a100-01", 2, t0 + 1800)  # four GPUs freed
    assert svc.settle(t0 + 1800)["estimates_settled"] == 1
    svc.close()
