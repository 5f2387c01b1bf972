"""Hand-made traces with known answers, and property tests of the invariants for every policy."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.sched.cluster import ClusterState, Placement, parse_cluster
from gpufleet.sched.gpufleet_policy import GpufleetPolicy
from gpufleet.sched.metrics import summarize
from gpufleet.sched.runner import POLICY_NAMES, make_policy
from gpufleet.sched.sim import Simulator
from tests.sched.conftest import make_job


def run(policy_name, spec, jobs, policy=None):
    policy = policy or make_policy(policy_name, spec, lambda a, b, m: 0.8)
    sim = Simulator(spec, jobs, policy, lambda a, b, m: 0.8)
    result = sim.run()
    return sim, result


def test_backfill_starts_the_small_job_now() -> None:
    spec = parse_cluster("v100:4x4")
    for name in ("easy", "gpufleet"):
        jobs = [
            make_job(0, 0.0, 100.0, gpus=3),
            make_job(1, 1.0, 500.0, gpus=4),
            make_job(2, 2.0, 10.0, gpus=1),
        ]
        sim, result = run(name, spec, jobs)
        assert sim.jobs[2].first_start_seconds == 2.0, name
        assert sim.jobs[1].first_start_seconds == 100.0, name  # the big job is not delayed
        assert result.unfinished_jobs == 0
    jobs = [
        make_job(0, 0.0, 100.0, gpus=3),
        make_job(1, 1.0, 500.0, gpus=4),
        make_job(2, 2.0, 10.0, gpus=1),
    ]
    sim, _ = run("fifo", spec, jobs)
    assert sim.jobs[2].first_start_seconds >= 600.0  # FIFO: stuck behind the big job


def _starvation_trace():
    jobs = [make_job(0, 0.0, 500.0, gpus=1), make_job(1, 1.0, 1000.0, gpus=4)]
    jobs += [make_job(2 + i, 10.0 + 50 * i, 600.0, gpus=1) for i in range(60)]
    return jobs


def test_reservation_holds_gpus_for_the_starving_big_job() -> None:
    spec = parse_cluster("v100:4x4")
    policy = GpufleetPolicy(spec, None, starve_after_seconds=0.0, starve_factor=0.0)
    sim, result = run("gpufleet", spec, _starvation_trace(), policy)
    assert sim.jobs[1].first_start_seconds == 500.0
    assert result.unfinished_jobs == 0
    # without a reservation (oracle SJF) the big job waits for the whole stream of small ones
    sim, _ = run("sjf", spec, _starvation_trace())
    assert sim.jobs[1].first_start_seconds > 2000.0


def test_gpufleet_never_ooms_where_fifo_does() -> None:
    spec = parse_cluster("k80:4x4,v100:4x4")
    jobs = [make_job(i, float(i), 100.0, memory_gib=20.0, models=("k80", "v100")) for i in range(6)]
    sim, result = run("fifo", spec, jobs)
    assert result.oom_failures > 0 and result.unfinished_jobs == 0
    jobs = [make_job(i, float(i), 100.0, memory_gib=20.0, models=("k80", "v100")) for i in range(6)]
    sim, result = run("gpufleet", spec, jobs)
    assert result.oom_failures == 0 and sim.memory_overcommits == 0


def test_gpufleet_packs_small_jobs_when_memory_fits() -> None:
    spec = parse_cluster("v100:1x1")
    jobs = [make_job(0, 0.0, 1000.0, memory_gib=8.0), make_job(1, 1.0, 100.0, memory_gib=8.0)]
    sim, result = run("gpufleet", spec, jobs)
    assert sim.jobs[1].first_start_seconds == 1.0  # shared the GPU
    assert result.oom_failures == 0
    jobs = [make_job(0, 0.0, 1000.0, memory_gib=20.0), make_job(1, 1.0, 100.0, memory_gib=20.0)]
    sim, result = run("gpufleet", spec, jobs)
    assert sim.jobs[1].first_start_seconds == 1000.0  # 2 x 22 GiB claimed > 32 GiB: no sharing
    assert result.oom_failures == 0


class RecordingSimulator(Simulator):
    """Checks, at every start, that the placement is sane."""

    def start(self, job, placement: Placement, claimed_memory_bytes: int = 0) -> None:
        cluster: ClusterState = self.cluster
        assert job.job_id not in cluster.placements, "job placed twice"
        hosts = placement.host_ids
        assert len(hosts) == cluster.hosts_needed(job.num_gpus, placement.gpu_model)
        assert len(placement.gpus) == job.num_gpus
        assert len(set(placement.gpus)) == job.num_gpus
        assert all(cluster.hosts[h].gpu_model == placement.gpu_model for h in hosts)
        super().start(job, placement, claimed_memory_bytes)
        self.times.append(self.now_seconds)

    times: list[float]


job_strategy = st.tuples(
    st.floats(0, 5000),
    st.floats(1, 3000),
    st.sampled_from([1, 1, 1, 2, 4, 8]),
    st.floats(1, 30),
    st.floats(0.5, 2.0),
)


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(job_strategy, min_size=1, max_size=25))
def test_invariants_every_policy(policy_name, rows) -> None:
    spec = parse_cluster("v100:8x4,k80:8x4")

    def jobs():
        return [
            make_job(i, a, d, g, memory_gib=m, predicted=d * e, models=("v100", "k80"))
            for i, (a, d, g, m, e) in enumerate(rows)
        ]

    results = []
    for _ in range(2):
        policy = make_policy(policy_name, spec, lambda a, b, m: 0.8)
        sim = RecordingSimulator(spec, jobs(), policy, lambda a, b, m: 0.8)
        sim.times = []
        result = sim.run()
        assert result.unfinished_jobs == 0, "every job finishes on a big-enough cluster"
        assert sim.times == sorted(sim.times), "time never goes backwards"
        for job in sim.jobs.values():
            assert job.finish_seconds is not None and job.finish_seconds >= job.arrival_seconds
            assert job.first_start_seconds >= job.arrival_seconds
        if policy_name == "gpufleet":
            assert sim.memory_overcommits == 0 and result.oom_failures == 0
        summary = summarize(result)
        summary.pop("sim_wall_s")
        summary.pop("jobs_per_second")
        results.append(summary)
    assert results[0] == results[1], "same input, same result"
    assert all(math.isfinite(v) for v in results[0].values())


def test_aging_follows_queue_pressure() -> None:
    spec = parse_cluster("v100:4x4")
    policy = GpufleetPolicy(spec, None, aging=0.3, busy_aging=0.1, busy_queue_per_gpu=1.0)
    jobs = [make_job(i, float(i), 1000.0 + 10 * i, gpus=1) for i in range(40)]
    seen = []
    original = policy._follow_pressure

    def spy() -> None:
        original()
        seen.append(policy.aging)

    policy._follow_pressure = spy  # type: ignore[method-assign]
    _, result = run("gpufleet", spec, jobs, policy)
    assert result.unfinished_jobs == 0
    assert 0.1 in seen and seen[-1] == 0.3  # busy while > 4 jobs wait, calm again at the end


def _long_job_behind_a_stream():
    # one GPU; a long job arrives while a short one runs, then a stream of short jobs keeps the
    # queue full: shortest-first alone would leave the long job waiting for the whole stream
    jobs = [make_job(0, 0.0, 1000.0), make_job(1, 1.0, 100_000.0)]
    jobs += [make_job(2 + i, 10.0 + 400 * i, 500.0) for i in range(150)]
    return jobs


def test_a_job_starves_once_it_waited_longer_than_a_fifo_would_make_it() -> None:
    spec = parse_cluster("v100:1x1")
    # its fair wait: the 999 s left of job 0 (a FIFO starts it then), so it starves after
    # 6 h + 999 s and gets the GPU when the short job then running ends
    policy = GpufleetPolicy(spec, None, preempt_ratio=0.0)
    sim, result = run("gpufleet", spec, _long_job_behind_a_stream(), policy)
    assert 6 * 3600 + 999 < sim.jobs[1].first_start_seconds < 6 * 3600 + 999 + 500 + 1
    assert result.unfinished_jobs == 0
    # bounded by its runtime alone (6 h + 4 x 100,000 s) it waits for the whole stream
    policy = GpufleetPolicy(spec, None, preempt_ratio=0.0, fifo_factor=0.0)
    sim, _ = run("gpufleet", spec, _long_job_behind_a_stream(), policy)
    assert sim.jobs[1].first_start_seconds > 60_000
