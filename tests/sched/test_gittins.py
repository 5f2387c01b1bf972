"""The size distribution a scheduler learns online and the Gittins index over it; the gpufleet
policy's per-class tables and its move of long jobs to faster GPUs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.gittins import (
    empirical,
    gittins_table,
    hold_beyond_sizes,
    index_table,
    kaplan_meier,
    mean_residual,
    mixture,
)
from gpufleet.sched.gpufleet_policy import GpufleetPolicy
from gpufleet.sched.sim import SimConfig, Simulator
from gpufleet.sched.simjob import JobTruth, SimInput, SimJob


def brute_index(samples: list[float], a: float, quanta: list[float]) -> float:
    """``max_D P(S - a <= D | S > a) / E[min(S - a, D) | S > a]`` by its definition."""
    rest = [s - a for s in samples if s > a]
    if not rest:
        return 0.0
    best = 0.0
    for d in quanta:
        done = sum(1 for r in rest if r <= d)
        spent = sum(min(r, d) for r in rest)
        best = max(best, done / spent if spent else 0.0)
    return best


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 2000).map(float), min_size=1, max_size=40))
def test_index_table_is_the_definition(samples: list[float]) -> None:
    grid, index = index_table(empirical(samples), grid_points=8, min_quantum=1.0, monotone=False)
    for i, a in enumerate(grid):
        step = max(1.0, grid[i + 1] - a) if i + 1 < grid.size else 1.0
        # the quanta: one grid step, or up to any sample at least one step away
        quanta = [step] + [s - a for s in samples if s - a >= step]
        assert index[i] == pytest.approx(brute_index(samples, float(a), quanta), rel=1e-9)


def test_gittins_table_of_samples_is_the_index_of_their_empirical_distribution() -> None:
    samples = np.random.default_rng(3).lognormal(6.0, 2.0, 300).round()
    grid, index = gittins_table(samples, grid_points=16)
    again = index_table(empirical(samples), grid_points=16)[1]
    assert index.shape == grid.shape and np.all(np.diff(index) <= 0)  # monotone by default
    assert index[0] == pytest.approx(again[0])  # same distribution, same index of a new job


def test_kaplan_meier_by_hand() -> None:
    # finished 1, 2, 3; one job has had 2.5 and is not done: at risk 4, 3, 1
    km = kaplan_meier([1.0, 2.0, 3.0], [2.5])
    assert km.sizes.tolist() == [1.0, 2.0, 3.0]
    assert km.mass.tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert km.tail == pytest.approx(0.0)
    # a job still running past every finished one: half the mass is beyond what is known
    km = kaplan_meier([1.0], [5.0])
    assert km.mass.tolist() == pytest.approx([0.5]) and km.tail == pytest.approx(0.5)
    # no censoring: the empirical distribution
    plain = kaplan_meier([3.0, 1.0, 1.0, 2.0])
    assert plain.mass.tolist() == pytest.approx(empirical([3.0, 1.0, 1.0, 2.0]).mass.tolist())


def test_kaplan_meier_corrects_the_bias_of_finished_jobs_only() -> None:
    # sizes ~ Exp(mean 1000); observed at a time when the jobs that started late are unfinished
    rng = np.random.default_rng(7)
    sizes = rng.exponential(1000.0, 4000)
    age = rng.uniform(0.0, 3000.0, 4000)  # how long each job has been in service
    done = sizes <= age
    km = kaplan_meier(sizes[done], age[~done])
    naive = empirical(sizes[done])
    true_median = 1000.0 * math.log(2)

    def median(dist) -> float:
        return float(dist.sizes[np.searchsorted(np.cumsum(dist.mass), 0.5)])

    assert abs(median(km) - true_median) < 0.1 * true_median
    assert median(naive) < 0.8 * true_median  # finished-only: biased short


def test_mixture_weights_and_mean_residual() -> None:
    short, long = empirical([10.0, 10.0]), empirical([1000.0])
    mix = mixture(short, 3.0, long, 1.0)
    assert mix.sizes.tolist() == [10.0, 1000.0]
    assert mix.mass.tolist() == pytest.approx([0.75, 0.25])
    assert mixture(short, 0.0, long, 1.0) is long
    residual = mean_residual(empirical([1.0, 3.0]), [0.0, 1.0, 3.0])
    assert residual[:2].tolist() == pytest.approx([2.0, 2.0]) and math.isnan(residual[2])


def finished(policy: GpufleetPolicy, job_id: int, gpus: int, service: float) -> SimJob:
    job = SimJob(job_id, 0.0, gpus, "", {"v100": 1.0})
    job.attained_gpu_seconds = service
    job.finish_seconds = service
    policy.on_finish(job, service)
    return job


def test_each_gpu_count_class_has_its_own_index() -> None:
    # 1-GPU jobs are short, 4-GPU jobs long: a new 1-GPU job outranks a new 4-GPU one, which
    # without classes would share one index
    spec = parse_cluster("v100:8x4")
    tables = {}
    for classes in (False, True):
        policy = GpufleetPolicy(spec, None, realistic=False, classes=classes, class_prior=5.0)
        for i in range(200):
            finished(policy, i, 1, 100.0 + i % 7)
            finished(policy, 1000 + i, 4, 40_000.0 + 100 * (i % 7))
        one = SimJob(5000, 0.0, 1, "", {"v100": 1.0})
        four = SimJob(5001, 0.0, 4, "", {"v100": 1.0})
        tables[classes] = (policy.gittins(0.0, one), policy.gittins(0.0, four))
    assert tables[False][0] == tables[False][1]
    assert tables[True][0] > 10 * tables[True][1]


def test_a_long_job_moves_to_a_faster_gpu_when_one_frees() -> None:
    # one fast host (v100) and one slow (k80, 3x slower); 30 short jobs teach it the sizes; a
    # long job starts on the k80 while the v100 is taken, and moves when the v100 frees
    spec = parse_cluster("v100:1x1,k80:1x1")

    def job(i: int, arrival: float, seconds: float) -> SimInput:
        view = SimJob(i, arrival, 1, "", {"v100": 1.0, "k80": 3.0})
        return SimInput(view, JobTruth({"v100": seconds, "k80": 3 * seconds}, 2**30))

    def items() -> list[SimInput]:
        jobs = [job(i, 200.0 * i, 100.0) for i in range(30)]
        return [*jobs, job(30, 7000.0, 2000.0), job(31, 7001.0, 20_000.0)]

    ends = {}
    for gain in (None, 300.0):
        policy = GpufleetPolicy(spec, None, realistic=True, migrate_gain_seconds=gain)
        sim = Simulator(spec, items(), policy, None, SimConfig())
        sim.run()
        ends[gain] = sim.jobs[31].finish_seconds
        assert all(j.finish_seconds is not None for j in sim.jobs.values())
    assert ends[None] is not None and ends[300.0] is not None
    assert ends[300.0] < ends[None] - 10_000.0


def test_past_every_finished_size_the_index_holds_its_last_value() -> None:
    dist = empirical([100.0, 200.0, 300.0, 300.0, 1000.0])
    grid, zero = index_table(dist, 16)
    _, held = index_table(dist, 16, hold_tail=True)
    last = int(np.nonzero(zero > 0)[0][-1])
    assert grid[last + 1] >= 1000.0 and zero[last + 1] == 0.0  # "never finishes"
    assert np.all(held[last + 1 :] == zero[last])
    assert np.array_equal(held[: last + 1], zero[: last + 1])
    assert np.array_equal(hold_beyond_sizes(np.zeros(3)), np.zeros(3))


def test_a_job_longer_than_every_finished_one_is_not_parked_behind_new_ones() -> None:
    # 20 jobs of 1,000 s teach the policy the sizes; a job that has had 5,000 s (longer than
    # every finished job) waits beside a newer one that has had 900 s, both on one GPU:
    # with index 0 past every finished size the newer one runs first, with the last index held
    # they are level and the earlier arrival runs first
    spec = parse_cluster("v100:1x1")
    order = {}
    for hold in (False, True):
        policy = GpufleetPolicy(spec, None, realistic=True, hold_tail=hold)
        for i in range(20):
            finished(policy, i, 1, 1000.0 + i)
        old = SimJob(100, 0.0, 1, "", {"v100": 1.0})
        old.attained_gpu_seconds = old.run_seconds = 5000.0
        new = SimJob(101, 10.0, 1, "", {"v100": 1.0})
        new.attained_gpu_seconds = new.run_seconds = 900.0
        order[hold] = policy.gittins(5000.0, old) >= policy.gittins(900.0, new)
        assert policy.gittins(900.0, new) > 0
    assert order == {False: False, True: True}


def test_the_job_that_gains_most_gets_the_fast_gpu() -> None:
    # one v100 and one k80; two 1-GPU jobs arrive together, the first about as fast on either
    # (k80 1.1x slower), the second 10x slower on the k80: the pass admits both; each on its
    # own fastest model, the first takes the v100 and the second crawls on the k80; dealt
    # out by index x speed, the second gets the v100 (no migration to faster GPUs here, which
    # would move it once the v100 frees)
    spec = parse_cluster("v100:1x1,k80:1x1")

    def job(i: int, k80: float) -> SimInput:
        view = SimJob(i, 0.0, 1, "", {"v100": 1.0, "k80": k80})
        return SimInput(view, JobTruth({"v100": 1000.0, "k80": 1000.0 * k80}, 2**30))

    ends = {}
    for gain in (False, True):
        policy = GpufleetPolicy(
            spec, None, realistic=True, assign_by_gain=gain, migrate_gain_seconds=None
        )
        sim = Simulator(spec, [job(0, 1.1), job(1, 10.0)], policy, None, SimConfig())
        sim.run()
        ends[gain] = [sim.jobs[i].finish_seconds or math.inf for i in (0, 1)]
    assert ends[False][1] > 9000.0  # the second job ran on the k80
    assert ends[True][1] < 2000.0 and ends[True][0] < 2000.0
    assert sum(ends[True]) < sum(ends[False]) / 3


def test_a_wide_class_with_nothing_finished_is_ranked_by_its_width() -> None:
    # only 1-GPU jobs of about 1,000 s have finished; a new 8-GPU job will hold 8 GPUs for as
    # long: ranked by the global sizes in GPU-seconds it looks as short as a 1-GPU job, ranked
    # by the sizes per GPU x 8 (``scaled_prior``) it is 8x less urgent per GPU-second
    spec = parse_cluster("v100:8x4")
    ratio = {}
    for scaled in (False, True):
        policy = GpufleetPolicy(spec, None, realistic=True, scaled_prior=scaled)
        for i in range(40):
            finished(policy, i, 1, 1000.0 + 10 * i)
        one = SimJob(100, 0.0, 1, "", {"v100": 1.0})
        eight = SimJob(101, 0.0, 8, "", {"v100": 1.0})
        ratio[scaled] = policy.gittins(0.0, one) / policy.gittins(0.0, eight)
    assert ratio[False] == pytest.approx(1.0)
    assert ratio[True] == pytest.approx(8.0, rel=0.05)
