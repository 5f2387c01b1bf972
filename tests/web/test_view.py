"""The overview's pure core: idle tracking, per-GPU users, host views, fleet totals."""

from __future__ import annotations

from gpufleet.web.view import IdleTracker, fleet_totals, gpu_users, host_view, next_idle_since
from gpufleet.wire import GpuProcess
from tests.conftest import make_sample

T0 = 1_700_000_000.0


def _summary(sample, status="online"):
    return {
        "name": sample.host, "status": status, "reason": None, "last_seen": sample.ts,
        "last_received": sample.ts, "source": "agent", "agent_version": "1",
        "interval_seconds": 5.0, "gpu_count": len(sample.gpus), "free_gpu_count": 0,
        "gpu_models": ["A100"], "errors": [],
    }  # fmt: skip


def test_idle_since_starts_keeps_and_clears():
    s = make_sample("h", ts=T0, gpus=2, procs=2)
    g = s.gpus[0]
    g.utilization_gpu_percent = 1.0
    assert next_idle_since(None, g, s.processes, T0, idle_util_percent=5) == T0
    assert next_idle_since(T0 - 60, g, s.processes, T0, idle_util_percent=5) == T0 - 60
    g.utilization_gpu_percent = 50.0
    assert next_idle_since(T0 - 60, g, s.processes, T0, idle_util_percent=5) is None
    g.utilization_gpu_percent = None  # unknown is not idle
    assert next_idle_since(T0 - 60, g, s.processes, T0, idle_util_percent=5) is None


def test_free_gpu_is_never_idle():
    s = make_sample("h", ts=T0, gpus=1, procs=0)
    g = s.gpus[0]
    g.utilization_gpu_percent, g.memory_used_bytes = 0.0, 0
    assert next_idle_since(None, g, [], T0, idle_util_percent=5) is None


def test_tracker_marks_idle_after_the_threshold():
    tr = IdleTracker(idle_util_percent=5)
    for i in range(4):
        s = make_sample("h", ts=T0 + 600 * i, gpus=2, procs=2)
        s.gpus[0].utilization_gpu_percent = 0.0  # held (process) but idle
        s.gpus[1].utilization_gpu_percent = 80.0
        tr.observe(s)
    assert tr.of_host("h") == {0: T0}
    view = host_view(_summary(s), s, tr.of_host("h"), idle_after_seconds=1800)
    assert [g["idle"] for g in view["gpus"]] == [True, False]
    view = host_view(_summary(s), s, tr.of_host("h"), idle_after_seconds=3600)
    assert [g["idle"] for g in view["gpus"]] == [False, False]
    s2 = make_sample("h", ts=T0 + 3000, gpus=1, procs=0)  # GPU 1 gone; GPU 0 now free
    s2.gpus[0].utilization_gpu_percent, s2.gpus[0].memory_used_bytes = 0.0, 0
    tr.observe(s2)
    assert tr.since == {}


def test_gpu_users_sums_memory_per_user_largest_first():
    procs = [
        GpuProcess(pid=1, gpu_index=0, user="alice", gpu_memory_bytes=2**30),
        GpuProcess(pid=2, gpu_index=0, user="bob", gpu_memory_bytes=3 * 2**30),
        GpuProcess(pid=3, gpu_index=0, user="alice", gpu_memory_bytes=3 * 2**30),
        GpuProcess(pid=4, gpu_index=1, uid=1234),
    ]
    assert gpu_users(procs) == {
        0: [{"user": "alice", "gpu_memory_bytes": 4 * 2**30},
            {"user": "bob", "gpu_memory_bytes": 3 * 2**30}],
        1: [{"user": "uid 1234", "gpu_memory_bytes": 0}],
    }  # fmt: skip


def test_host_view_and_totals():
    a = make_sample("a", ts=T0, gpus=4, procs=2)  # GPUs 0, 1 held by user0, user1
    for g in a.gpus[2:]:
        g.memory_used_bytes = 0
    a.gpus[3].error = "NVML: GPU is lost"
    b = make_sample("b", ts=T0, gpus=2, procs=2)
    va = host_view(_summary(a), a, {}, idle_after_seconds=1800)
    vb = host_view(_summary(b, "offline"), b, {}, idle_after_seconds=1800)
    assert [g["free"] for g in va["gpus"]] == [False, False, True, False]
    assert va["users"] == ["user0", "user1"]
    assert va["disk_total_bytes"] == 2**40 and va["memory_total_bytes"] == 512 * 2**30
    t = fleet_totals([va, vb])
    assert t["gpus"] == {"total": 6, "in_use": 2, "free": 1, "down": 3, "idle": 0}
    assert t["hosts"] == {"online": 1, "stale": 0, "offline": 1}
    assert t["by_model"][0]["model"] == "NVIDIA A100-SXM4-80GB"
    # an offline host's holders do not count as holding GPUs now
    assert t["top_users"] == [{"user": "user0", "gpus": 1}, {"user": "user1", "gpus": 1}]


def test_host_view_without_sample():
    v = host_view(
        {"name": "x", "status": "offline", "reason": "host unreachable", "gpu_models": []},
        None, {}, idle_after_seconds=60,
    )  # fmt: skip
    assert v["gpus"] == [] and v["reason"] == "host unreachable"
    assert fleet_totals([v])["gpus"]["total"] == 0
