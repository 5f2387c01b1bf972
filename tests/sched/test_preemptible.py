"""``preemptible: false``: every preemptive policy keeps such a job on its GPUs until it ends,
and the simulator's context refuses to preempt it."""

from __future__ import annotations

import random

import pytest

from gpufleet.sched.cluster import parse_cluster
from gpufleet.sched.gpufleet_policy import GpufleetPolicy
from gpufleet.sched.policy import Policy, SchedulerContext
from gpufleet.sched.predictor import OnlineRuntimePredictor
from gpufleet.sched.runner import make_policy
from gpufleet.sched.sim import SimConfig, Simulator
from gpufleet.sched.simjob import SimJob
from tests.sched.conftest import make_job

REALISTIC = SimConfig()
REFERENCE = SimConfig(cost_model="reference")
PREEMPTIVE = ("tiresias", "dlas", "gavel", "gavel-lp", "gavel-lp-jct", "gavel-lp-makespan",
              "gpufleet", "gpufleet-reserve")  # fmt: skip


def mix(seed: int, count: int = 60, pinned_share: float = 0.3) -> list:
    """An overloaded, heavy-tailed mix of 1- to 8-GPU jobs on two GPU models (one half as
    fast), about
    ``pinned_share`` of them not preemptible."""
    rng = random.Random(seed)
    items, t = [], 0.0
    for i in range(count):
        t += rng.expovariate(1 / 120.0)
        duration = min(4e4, rng.paretovariate(0.7) * 120.0)
        gpus = rng.choice([1, 1, 1, 2, 4, 8])
        item = make_job(i, t, duration, gpus, models=("v100", "k80"))
        # k80 half as fast: policies that move jobs to faster GPUs have reason to
        item.job.runtime_ratio_by_model["k80"] = 2.0
        item.truth.duration_seconds["k80"] = 2.0 * duration
        item.job.preemptible = rng.random() >= pinned_share
        items.append(item)
    return items


def policy_of(name: str, spec, config, items) -> Policy:
    if name == "gpufleet-reserve":  # starving jobs get reservations (the opt-in study)
        return GpufleetPolicy(
            spec,
            OnlineRuntimePredictor(),
            realistic=not config.reference,
            starve_after_seconds=1800.0,
            starve_reserve=True,
        )
    return make_policy(name, spec, config, items)


@pytest.mark.parametrize("config", [REALISTIC, REFERENCE], ids=["realistic", "reference"])
@pytest.mark.parametrize("policy_name", PREEMPTIVE)
def test_no_policy_preempts_a_job_that_is_not_preemptible(policy_name, config) -> None:
    spec = parse_cluster("v100:8x4,k80:8x4")
    preempted = 0
    for seed in (1, 2, 3):
        items = mix(seed)
        pinned = {i.job.job_id for i in items if not i.job.preemptible}
        assert 0.15 * len(items) < len(pinned) < 0.45 * len(items)
        policy = policy_of(policy_name, spec, config, items)
        sim = Simulator(spec, items, policy, lambda a, b, m: 0.8, config)
        result = sim.run()
        assert result.unfinished_jobs == 0, "every job finishes"
        for job in sim.jobs.values():
            assert job.finish_seconds is not None
            if job.job_id in pinned:
                assert job.preemptions == 0, f"job {job.job_id} is not preemptible"
        preempted += result.preemptions
    assert preempted > 0, "the mix preempts the other jobs (the policy had the chance)"


class Grabby(Policy):
    """Starts each job at once where it fits, else preempts the first running job."""

    name = "grabby"

    def __init__(self) -> None:
        self.queue: list[SimJob] = []

    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        self.queue.append(job)

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        self.queue.append(job)

    def schedule(self, ctx: SchedulerContext) -> None:
        while self.queue:
            job = self.queue[0]
            placement = ctx.cluster.find_whole(job.num_gpus, "v100")
            if placement is None:
                ctx.preempt(next(iter(ctx.running.values())))
                continue
            self.queue.pop(0)
            ctx.start(job, placement)


@pytest.mark.parametrize("preemptible", [True, False])
def test_the_simulator_refuses_to_preempt_a_job_that_is_not_preemptible(preemptible) -> None:
    spec = parse_cluster("v100:1x1")
    items = [make_job(0, 0.0, 100.0), make_job(1, 10.0, 100.0)]
    items[0].job.preemptible = preemptible
    sim = Simulator(spec, items, Grabby(), lambda a, b, m: 0.8, REFERENCE)
    if preemptible:
        assert sim.run().preemptions == 1
    else:
        with pytest.raises(RuntimeError, match="job 0 is not preemptible"):
            sim.run()


def test_a_fresh_copy_keeps_the_flag() -> None:
    item = make_job(0, 0.0, 1.0)
    item.job.preemptible = False
    assert item.fresh().job.preemptible is False
    assert make_job(1, 0.0, 1.0).job.preemptible is True


def cost(seeds: range = range(1, 11)) -> None:
    """What pinning costs in the simulator (not a test): the mix's avg JCT with ~30% of its jobs
    not preemptible over the same mix with none (the same arrivals and runtimes, paired by seed),
    realistic cost model. Jobs checkpoint in the simulator, so this is the cost to the queue's
    order only, not what a job that cannot resume gains.
    ``nice -n 10 .venv/bin/python -m tests.sched.test_preemptible``"""
    import statistics

    spec = parse_cluster("v100:8x4,k80:8x4")
    for name in ("gpufleet", "tiresias", "dlas", "gavel"):
        ratios = []
        for seed in seeds:
            jct = []
            for share in (0.0, 0.3):
                items = mix(seed, pinned_share=share)
                sim = Simulator(spec, items, policy_of(name, spec, REALISTIC, items),
                                lambda a, b, m: 0.8, REALISTIC)  # fmt: skip
                sim.run()
                jct.append(statistics.mean(
                    (j.finish_seconds or 0.0) - j.arrival_seconds for j in sim.jobs.values()
                ))  # fmt: skip
            ratios.append(jct[1] / jct[0])
        print(f"{name}: avg JCT 30% pinned / none over {len(ratios)} seeds: mean "
              f"{statistics.mean(ratios):.3f}, sd {statistics.stdev(ratios):.3f}, "
              f"min {min(ratios):.3f}, max {max(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    cost()
