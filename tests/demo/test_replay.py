"""The replay fleet's placement, determinism, and fidelity to the trace."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from gpufleet.demo.fleet import GPU_MODELS, build_fleet
from gpufleet.demo.replay import DAY, Replay
from gpufleet.demo.simhost import SimHost
from gpufleet.demo.trace import TraceJob, default_trace_path, load_trace
from gpufleet.errors import GpufleetError
from tests.conftest import need_file


@pytest.fixture(scope="module")
def trace() -> list[TraceJob]:
    path = default_trace_path()
    need_file(path, "the Philly trace")
    return load_trace(path)


def snapshot(r: Replay) -> list[tuple]:
    return sorted(
        (j.key, j.host, j.gpus, j.start, j.user.name, j.kind.name, j.pids) for j in r.jobs.values()
    )


def check_placement(r: Replay) -> None:
    for i, host in enumerate(r.hosts):
        spec = r.specs[i]
        used: list[int] = []
        for job in host.jobs.values():
            assert job.host == i
            assert len(job.gpus) == job.trace.num_gpus  # all of a job's GPUs on this host
            assert len(set(job.gpus)) == len(job.gpus)
            used.extend(job.gpus)
        assert len(host.jobs) <= spec.gpu_count
        assert len(used) == len(set(used)), f"{spec.name}: a GPU holds two jobs"
        assert all(0 <= g < spec.gpu_count for g in used)
        assert spec.flaky_gpu not in used
        assert sorted(used + host.free) == [g for g in range(spec.gpu_count) if g != spec.flaky_gpu]
    assert r.busy_gpus() + r.free == r.capacity


def test_fleet_is_mixed_and_seeded():
    fleet = build_fleet(24, seed=0)
    assert len(fleet) == 24 and len({h.name for h in fleet}) == 24
    assert {h.gpu_count for h in fleet} == {4, 8}
    assert len({h.shape.gpu for h in fleet}) >= 4
    assert len({h.group for h in fleet}) >= 4
    assert all(h.name.startswith(h.group + "-") for h in fleet)
    assert sum(h.flaky_gpu is not None for h in fleet) == 1
    assert sum(h.goes_offline for h in fleet) == 1
    assert build_fleet(24, seed=0) == fleet
    assert build_fleet(24, seed=1) != fleet
    assert len(build_fleet(500)) == 500 and len({h.name for h in build_fleet(500)}) == 500


def test_placement_respects_gpus(trace):
    r = Replay(build_fleet(24, seed=0), trace, seed=0)
    check_placement(r)
    assert r.jobs, "a lively fleet has jobs running at the start"
    t = r.start
    for _ in range(24 * 4):  # four days, hour by hour
        t += 3600
        r.advance(t)
        check_placement(r)
    assert r.stats.started > 1000 and r.stats.ended > 1000


def test_small_hosts_skip_jobs_too_big(trace):
    fleet = [h for h in build_fleet(30, seed=2) if h.gpu_count == 4][:3]
    fleet = [type(h)(i, h.name, h.group, h.shape) for i, h in enumerate(fleet)]
    r = Replay(fleet, trace, seed=2, load=0.9)
    r.advance(r.start + 2 * DAY)
    check_placement(r)
    assert r.stats.skipped_too_big > 0  # 8-GPU jobs cannot run on 4-GPU servers
    assert all(j.trace.num_gpus <= 4 for j in r.jobs.values())


def test_same_seed_same_fleet(trace):
    a = Replay(build_fleet(24, seed=5), trace, seed=5)
    b = Replay(build_fleet(24, seed=5), trace, seed=5)
    assert a.start == b.start and snapshot(a) == snapshot(b)
    # the state at a trace time does not depend on how often the replay was advanced
    t1 = a.start + 6 * 3600
    a.advance(t1)
    for k in range(1, 361):
        b.advance(b.start + k * 60)
    assert snapshot(a) == snapshot(b) and a.stats == b.stats
    c = Replay(build_fleet(24, seed=6), trace, seed=6)
    c.advance(t1)
    assert snapshot(c) != snapshot(a)


def test_jobs_come_from_the_trace(trace):
    rows = {j.row: j for j in trace}
    r = Replay(build_fleet(24, seed=0), trace, seed=0)
    seen: dict[str, tuple] = {}
    t = r.start
    for _ in range(200):
        for job in r.jobs.values():
            assert rows[job.trace.row] == job.trace  # a real row: same duration, GPU count
            assert len(job.gpus) == job.trace.num_gpus
            assert job.start >= job.submit
            assert job.start <= t <= job.end
            seen[job.key] = (job.start, job.end, job.trace.duration)
        t += 600
        r.advance(t)
    ended = [k for k in seen if k not in r.jobs]
    assert len(ended) > 100
    for key in ended:
        start, end, duration = seen[key]
        assert end - start == pytest.approx(duration)  # the job ran exactly as long as in the trace
    assert len({r.jobs[k].user.name for k in r.jobs} | {"x"}) > 3
    users = Counter(j.user.name for j in r.jobs.values())
    assert users.most_common(1)[0][1] >= 3  # a few heavy users


def test_sim_host_shows_the_jobs_through_the_collector(trace):
    r = Replay(build_fleet(24, seed=0), trace, seed=0)
    host = next(i for i, h in enumerate(r.hosts) if len(h.jobs) >= 2)
    spec = r.specs[host]
    now = time.time()
    sim = SimHost(spec, seed=0, interval=5.0, now=now)
    try:
        jobs = r.jobs_on(host)
        sim.apply(r, jobs, r.start + 120, now, lambda t: now - (r.start - t) / 60)
        sample = sim.collect()
    finally:
        sim.close()
    assert sample.host == spec.name
    assert [g.name for g in sample.gpus] == [GPU_MODELS[spec.shape.gpu].name] * spec.gpu_count
    assert len({g.uuid for g in sample.gpus}) == spec.gpu_count
    by_pid = {p.pid: p for p in sample.processes}
    assert len(by_pid) == sum(j.trace.num_gpus for j in jobs)
    for job in jobs:
        for rank, g in enumerate(job.gpus):
            p = by_pid[job.pids[rank]]
            assert p.gpu_index == g and p.user == job.user.name and p.uid == job.user.uid
            assert p.gpu_memory_bytes and p.command
    busy = {g for j in jobs for g in j.gpus}
    for gpu in sample.gpus:
        assert gpu.memory_total_bytes == GPU_MODELS[spec.shape.gpu].memory_bytes
        if gpu.index not in busy:
            assert gpu.utilization_gpu_percent == 0
    m = sample.host_metrics
    assert m.cpu_percent is not None and m.cpu_percent > 0 and m.load1 is not None
    assert m.memory_used_bytes and m.disks and m.net_rx_bytes_per_second
    assert sample.facts.driver_version == spec.shape.driver[0]


def test_missing_trace_is_a_clear_error(tmp_path):
    with pytest.raises(GpufleetError) as err:
        load_trace(tmp_path / "nope.csv")
    assert "not there" in str(err.value.message) and "--trace" in err.value.hint


def test_small_trace_exact(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-02 10:00:00,3600,2,7200,zz\n"
        "2017-10-02 10:30:00,600,4,2400,zz\n"
        "2017-10-02 11:00:00,60,16,960,zz\n"
    )
    trace = load_trace(csv)
    assert [j.row for j in trace] == [2, 3, 4]
    fleet = build_fleet(1, seed=0)
    t0 = trace[0].submit
    r = Replay(fleet, trace, seed=0, start=t0 - 60, load=1.0, warmup=60)
    r.multiplicity = 1.0  # exactly one copy of each job
    r.advance(t0 + 1)
    (job,) = r.jobs.values()
    assert job.trace.row == 2 and job.start == t0 and len(job.gpus) == 2
    r.advance(t0 + 1800 + 1)
    assert sorted(len(j.gpus) for j in r.jobs.values()) == [2, 4]
    r.advance(t0 + 3600 + 1)
    assert r.stats.skipped_too_big == 1 and not r.jobs and r.stats.ended == 2


def test_flaky_gpu_errors_with_xids_then_recovers(trace):
    fleet = build_fleet(24, seed=0)
    spec = next(h for h in fleet if h.flaky_gpu is not None)
    r = Replay(fleet, trace, seed=0)
    sim = SimHost(spec, seed=0, interval=5.0, now=time.time())
    g = spec.flaky_gpu
    base = 240.0 * (int(time.time()) // 240)  # phase 0 of the flaky cycle
    samples = []
    try:
        for phase in (10.0, 198.0, 210.0, 230.0, 250.0):
            wall = base + phase
            sim.apply(r, r.jobs_on(spec.index), r.start, wall, lambda t, w=wall: w)
            samples.append(sim.collect())
    finally:
        sim.close()
    healthy, warned, lost, still, back = (s.gpus[g] for s in samples)
    assert healthy.error is None and not healthy.xid_events
    assert [x.xid for x in warned.xid_events] == [79] and warned.error is None
    assert lost.error and "GPU is lost" in lost.error and still.error
    assert back.error is None and [x.xid for x in back.xid_events] == [48]
    assert back.ecc_uncorrected_volatile == 1
    assert all(s.gpus[(g + 1) % spec.gpu_count].error is None for s in samples)


def test_offline_host_schedule():
    from gpufleet.demo.engine import OFFLINE_FIRST, OFFLINE_FOR, OFFLINE_PERIOD, is_offline

    assert not is_offline(0) and not is_offline(OFFLINE_FIRST - 1)
    assert is_offline(OFFLINE_FIRST + 1) and is_offline(OFFLINE_FIRST + OFFLINE_FOR - 1)
    assert not is_offline(OFFLINE_FIRST + OFFLINE_FOR + 1)
    assert is_offline(OFFLINE_FIRST + OFFLINE_PERIOD + 1)
    assert OFFLINE_FOR > 60  # long enough for the server to call it offline, not just stale
