"""Hand-made traces with known answers, the information boundary, and property tests of the
invariants for every policy."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufleet.sched.baselines import EasyBackfill
from gpufleet.sched.cluster import ClusterState, Placement, parse_cluster
from gpufleet.sched.gpufleet_policy import GpufleetPolicy, gittins_table
from gpufleet.sched.metrics import summarize
from gpufleet.sched.policy import Policy, SchedulerContext
from gpufleet.sched.reservation import reserve
from gpufleet.sched.runner import POLICY_NAMES, make_policy
from gpufleet.sched.sim import SimConfig, Simulator
from gpufleet.sched.simjob import SimJob
from tests.sched.conftest import make_job

REALISTIC = SimConfig()
REFERENCE = SimConfig(cost_model="reference")


class KnownRuntimes:
    """A runtime estimator that is told each job's runtime: the users' estimates of a test."""

    def __init__(self, seconds: dict[int, float]) -> None:
        self.seconds = seconds

    def predict_seconds(self, job: SimJob) -> float:
        return self.seconds[job.job_id]

    def observe(self, job: SimJob, seconds: float) -> None:
        pass


def run(policy_name, spec, items, policy=None, config=REALISTIC):
    policy = policy or make_policy(policy_name, spec, config, items)
    sim = Simulator(spec, items, policy, lambda a, b, m: 0.8, config)
    return sim, sim.run()


# -- the information boundary --------------------------------------------------------------------
class Snooper(Policy):
    """A policy that tries every way it has to read the truth."""

    name = "snooper"

    def __init__(self) -> None:
        self.found: list[str] = []
        self.queue: list[SimJob] = []

    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        for name in (
            "true_duration_seconds",
            "truth",
            "duration_seconds",
            "progress_fraction",
            "true_gpu_memory_bytes",
            "gpu_memory_bytes_true",
        ):
            if hasattr(job, name):
                self.found.append(f"job.{name}")
        with pytest.raises(AttributeError):
            job.true_duration_seconds = {"v100": 1.0}  # type: ignore[attr-defined]
        self.queue.append(job)

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        self.queue.append(job)

    def schedule(self, ctx: SchedulerContext) -> None:
        for name in ("jobs", "truth", "_truth", "simulator", "sim", "policy", "__dict__"):
            if hasattr(ctx, name):
                self.found.append(f"ctx.{name}")
        for job in ctx.running.values():
            if job.reported_progress is not None:
                self.found.append("progress of a job that does not report it")
        while self.queue:
            placement = ctx.cluster.find_whole(self.queue[0].num_gpus, "v100")
            if placement is None:
                return
            ctx.start(self.queue.pop(0), placement)


def test_a_policy_cannot_reach_the_truth() -> None:
    spec = parse_cluster("v100:4x4")
    snooper = Snooper()
    _, result = run("", spec, [make_job(i, 10.0 * i, 100.0 + i) for i in range(6)], snooper)
    assert result.unfinished_jobs == 0
    assert snooper.found == []


def test_progress_is_seen_only_where_the_job_reports_it() -> None:
    spec = parse_cluster("v100:1x1")
    seen: list[float | None] = []

    class Watcher(Snooper):
        def schedule(self, ctx: SchedulerContext) -> None:
            super().schedule(ctx)
            seen.extend(j.reported_progress for j in ctx.running.values())

        def next_wakeup_seconds(self, now_seconds: float) -> float | None:
            return now_seconds + 50.0

    item = make_job(0, 0.0, 200.0)
    item.job.reports_progress = True
    run("", spec, [item], Watcher())
    assert seen and seen[0] == 0.0 and any(p is not None and 0.2 < p < 0.3 for p in seen)
    seen.clear()
    run("", spec, [make_job(0, 0.0, 200.0)], Watcher())
    assert seen and all(p is None for p in seen)


# -- cost models ---------------------------------------------------------------------------------
def test_reference_model_counts_gpus_and_preempts_for_free() -> None:
    # two hosts of 4 with 2 GPUs busy on each: a 4-GPU job fits only when GPUs are counted
    spec = parse_cluster("v100:8x4")
    items = [
        make_job(0, 0.0, 1000.0, 2),
        make_job(1, 0.0, 1000.0, 2),
        make_job(2, 0.0, 1000.0, 2),
        make_job(3, 1.0, 100.0, 2),
    ]
    sim, _ = run("fifo", spec, [i.fresh() for i in items], config=REFERENCE)
    assert sim.jobs[3].first_start_seconds == 1.0
    items = [make_job(0, 0.0, 1000.0, 3), make_job(1, 1.0, 100.0, 4)]
    sim, _ = run("fifo", spec, [i.fresh() for i in items], config=REFERENCE)
    assert sim.jobs[1].first_start_seconds == 1.0  # 5 GPUs free of 8, no host boundary
    sim, _ = run("fifo", spec, [i.fresh() for i in items], config=REALISTIC)
    assert sim.jobs[1].first_start_seconds == 1.0  # the second host is free
    items = [make_job(0, 0.0, 1000.0, 3), make_job(1, 0.0, 1000.0, 3), make_job(2, 1.0, 100.0, 2)]
    sim, _ = run("fifo", spec, [i.fresh() for i in items], config=REFERENCE)
    assert sim.jobs[2].first_start_seconds == 1.0  # 1 + 1 free GPUs count as 2
    sim, _ = run("fifo", spec, [i.fresh() for i in items], config=REALISTIC)
    assert sim.jobs[2].first_start_seconds == 1000.0  # on whole hosts it waits


class PreemptAtTen(Policy):
    """Starts every job; at t=10 stops job 0 and starts it again; records when it is asked."""

    name = "probe"

    def __init__(self) -> None:
        self.waiting: list[SimJob] = []
        self.passes: list[float] = []

    def on_arrival(self, job: SimJob, now_seconds: float) -> None:
        self.waiting.append(job)

    def on_finish(self, job: SimJob, now_seconds: float) -> None:
        pass

    def on_failure(self, job: SimJob, now_seconds: float, reason: str) -> None:
        self.waiting.append(job)

    def schedule(self, ctx: SchedulerContext) -> None:
        self.passes.append(ctx.now_seconds)
        if ctx.now_seconds == 10.0 and 0 in ctx.running:
            job = ctx.running[0]
            ctx.preempt(job)
            self.waiting.append(job)
        for job in list(self.waiting):
            placement = ctx.cluster.find_whole(job.num_gpus, "v100")
            if placement is not None:
                ctx.start(job, placement)
                self.waiting.remove(job)

    def next_wakeup_seconds(self, now_seconds: float) -> float | None:
        return 10.0 if now_seconds < 10.0 else None


def test_no_scheduling_pass_where_only_superseded_events_fall() -> None:
    """Job 0's first finish (t=100) is superseded by its restart at t=10 (which costs the
    restart): nothing happens at t=100, so no pass (a pass there let Tiresias flip two jobs at
    every such event, each flip leaving more of them behind: a run that never ended)."""
    spec = parse_cluster("v100:4x4")
    policy = PreemptAtTen()
    sim, _ = run("probe", spec, [make_job(0, 0.0, 100.0)], policy=policy, config=REALISTIC)
    finish = sim.jobs[0].finish_seconds
    assert finish == 100.0 + REALISTIC.restart_cost_seconds > 100.0
    assert policy.passes == [0.0, 10.0, finish]


def test_data_is_copied_once_per_host() -> None:
    spec = parse_cluster("v100:1x1", bandwidth_bytes_per_second=1e9)

    class PreemptOnce(Snooper):
        done = False

        def schedule(self, ctx: SchedulerContext) -> None:
            if ctx.now_seconds >= 500 and not self.done and ctx.running:
                self.done = True
                job = next(iter(ctx.running.values()))
                ctx.preempt(job)
                self.queue.append(job)  # and restarted at once, on the same host
            super().schedule(ctx)

        def next_wakeup_seconds(self, now_seconds: float) -> float | None:
            return 500.0 if now_seconds < 500 else None

    item = make_job(0, 0.0, 1000.0)
    item.job.data_size_bytes = 100 * 10**9  # 100 s to copy
    sim, _ = run("", spec, [item], PreemptOnce(), REALISTIC)
    # 100 s copy, 400 s of work, preempted at 500, restart (60 s), no second copy, 600 s left
    assert sim.jobs[0].finish_seconds == pytest.approx(500 + 60 + 600)
    sim, _ = run("", spec, [item.fresh()], PreemptOnce(), REFERENCE)
    assert sim.jobs[0].finish_seconds == pytest.approx(1000.0)  # free preemption, no copy


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy_name", POLICY_NAMES)
def test_a_job_that_can_never_fit_is_refused_and_blocks_nobody(policy_name) -> None:
    spec = parse_cluster("v100:32x8")
    items = [make_job(0, 0.0, 100.0, 128)] + [make_job(i, 1.0 + i, 50.0) for i in range(1, 5)]
    sim, result = run(policy_name, spec, items)
    assert "128 GPUs" in result.refused[0] and "32" in result.refused[0]
    assert result.unfinished_jobs == 0
    assert all(sim.jobs[i].finish_seconds is not None for i in range(1, 5))
    summary = summarize(result)
    assert summary["refused_jobs"] == 1 and summary["jobs"] == 4


def test_a_job_too_big_for_every_gpu_is_refused_after_its_oom() -> None:
    spec = parse_cluster("k80:4x4")
    sim, result = run(
        "fifo",
        spec,
        [
            make_job(0, 0.0, 100.0, memory_gib=40, models=("k80",)),
            make_job(1, 1.0, 100.0, models=("k80",)),
        ],
    )
    assert "memory" in result.refused[0] and result.oom_failures == 1
    assert sim.jobs[1].finish_seconds is not None and result.unfinished_jobs == 0


# -- EASY -----------------------------------------------------------------------------------------
def test_easy_backfills_a_short_job_without_delaying_the_head() -> None:
    spec = parse_cluster("v100:4x4")
    items = [
        make_job(0, 0.0, 100.0, 3),
        make_job(1, 1.0, 500.0, 4),
        make_job(2, 2.0, 10.0, 1),
        make_job(3, 3.0, 200.0, 1),
    ]
    runtimes = {0: 100.0, 1: 500.0, 2: 10.0, 3: 200.0}
    sim, _ = run("", spec, items, EasyBackfill(KnownRuntimes(runtimes)))
    assert sim.jobs[2].first_start_seconds == 2.0  # ends before the head's reserved start
    assert sim.jobs[1].first_start_seconds == 100.0  # the head is not delayed
    assert sim.jobs[3].first_start_seconds >= 600.0  # would delay the head: waits


def test_reservation_of_a_multi_host_job_is_where_it_can_start() -> None:
    # 4 hosts x 4 GPUs; an 8-GPU job needs 2 whole hosts. Hosts 0 and 1 each keep one GPU until
    # t=20000; hosts 2 and 3 are free at t=9000. Counting GPUs anywhere would reserve t=5000 on
    # {0, 1, 2}, where it cannot start.
    spec = parse_cluster("v100:16x4")
    cluster = ClusterState(spec)
    running: dict[int, SimJob] = {}
    ends: dict[int, float] = {}

    def hold(job_id: int, gpus: list[tuple[int, int]], end: float) -> None:
        job = make_job(job_id, 0.0, end, len(gpus)).job
        job.placement = Placement(tuple(gpus), "v100")
        job.status = "running"
        cluster.allocate(job_id, job.placement)
        running[job_id] = job
        ends[job_id] = end

    hold(1, [(0, 0), (0, 1), (0, 2)], 5000.0)
    hold(2, [(0, 3)], 20000.0)
    hold(3, [(1, 0), (1, 1), (1, 2)], 5000.0)
    hold(4, [(1, 3)], 20000.0)
    hold(5, [(2, 0), (2, 1)], 9000.0)
    hold(6, [(2, 2), (2, 3)], 5000.0)
    hold(7, [(3, 0), (3, 1), (3, 2), (3, 3)], 9000.0)
    waiting = make_job(99, 0.0, 100.0, 8).job
    ends[99] = 100.0
    res = reserve(waiting, cluster, running, 0.0, ["v100"], KnownRuntimes(ends))
    assert res is not None
    assert (res.start_seconds, set(res.host_ids)) == (9000.0, {2, 3})
    small = make_job(98, 0.0, 100.0, 4).job
    res = reserve(small, cluster, running, 0.0, ["v100"], KnownRuntimes(ends))
    assert res is not None and res.start_seconds == 9000.0 and len(res.host_ids) == 1


def test_a_reservation_counts_gpus_held_by_unscheduled_work_as_never_free() -> None:
    # a live queue marks GPUs busy with work it does not schedule under ids no running job has:
    # the reservation must go where scheduled jobs end, not fail on the unknown holder
    spec = parse_cluster("v100:8x4")
    cluster = ClusterState(spec)
    cluster.allocate(-1, Placement(((0, 0),), "v100"))  # unscheduled work on host 0
    job = make_job(1, 0.0, 500.0, 4).job
    job.placement = Placement(tuple((1, g) for g in range(4)), "v100")
    job.status = "running"
    cluster.allocate(1, job.placement)
    waiting = make_job(2, 0.0, 100.0, 4).job
    res = reserve(waiting, cluster, {1: job}, 0.0, ["v100"], KnownRuntimes({1: 500.0, 2: 100.0}))
    assert res is not None and (res.start_seconds, set(res.host_ids)) == (500.0, {1})


# -- gpufleet --------------------------------------------------------------------------------------
def test_gittins_index_of_a_known_distribution() -> None:
    # half the jobs take 100 GPU-s, half 10,000: a new job is worth serving first (it may be
    # short); one that has had 100 and is still running is long: lowest index
    samples = [100.0] * 50 + [10_000.0] * 50
    grid, index = gittins_table(samples, grid_points=8, min_quantum=1.0)
    at = {float(a): float(i) for a, i in zip(grid, index, strict=True)}
    assert at[0.0] == pytest.approx(0.5 / (0.5 * 100 + 0.5 * 100), rel=1e-6)
    assert at[100.0] == pytest.approx(1 / 9900, rel=1e-6)
    assert at[10_000.0] == 0.0


def test_gpufleet_learns_to_serve_new_jobs_first() -> None:
    # one GPU; 40 short jobs teach it the sizes; a long job then gives way to new short jobs
    spec = parse_cluster("v100:1x1")
    items = [make_job(i, 100.0 * i, 50.0) for i in range(40)]
    items += [make_job(40, 4000.0, 5000.0), make_job(41, 4100.0, 50.0)]
    sim, result = run("gpufleet", spec, items, config=REFERENCE)
    assert sim.jobs[41].first_start_seconds == 4100.0  # preempted the long job
    assert result.unfinished_jobs == 0


def test_a_big_job_is_not_starved_by_a_stream_of_small_ones() -> None:
    spec = parse_cluster("v100:4x4")
    items = [make_job(i, 100.0 * i, 50.0) for i in range(30)]  # they teach it: jobs are short
    items.append(make_job(30, 3000.0, 1000.0, 4))
    # a stream that keeps at least one GPU busy at every moment
    items += [make_job(31 + i, 3001.0 + 30.0 * i, 60.0) for i in range(3000)]
    policy = GpufleetPolicy(spec, None, realistic=False, starve_after_seconds=3600.0)
    sim, _ = run("", spec, items, policy, REFERENCE)
    first = sim.jobs[30].first_start_seconds
    assert first is not None and first <= 3000.0 + 3600.0 + 60.0


def _two_host_stream(count: int) -> list:
    """Two 8-GPU hosts; 30 short jobs teach the policy the sizes, then a 16-GPU job (both hosts)
    arrives into a stream of 1-GPU jobs of 600 s, one every 100 s: at every moment some GPU is
    busy, so the big job never finds both hosts free unless GPUs are held for it."""
    items = [make_job(i, 100.0 * i, 50.0) for i in range(30)]
    items.append(make_job(30, 3050.0, 1000.0, 16))
    items += [make_job(31 + i, 3001.0 + 100.0 * i, 600.0) for i in range(count)]
    return items


def test_a_starving_big_job_gets_hosts_reserved_and_starts_by_a_bound() -> None:
    """Realistic model: the 16-GPU job starves once it has waited 1 h in all;
    it then gets both hosts reserved (nothing new placed there unless predicted to end by the
    reserved start), starts once the 1-GPU jobs running there end (600 s) and keeps its GPUs
    for its expected remaining time. Without a starvation limit it is preempted by every new
    1-GPU job and ends after the whole stream."""
    from gpufleet.sched.predictor import OnlineRuntimePredictor

    spec = parse_cluster("v100:16x8")
    policy = GpufleetPolicy(
        spec, OnlineRuntimePredictor(), starve_reserve=True, reserve_size_factor=0.0
    )
    sim, result = run("", spec, _two_host_stream(600), policy, REALISTIC)
    # it ran once before (new, it outranked the 1-GPU jobs) and was preempted; it then starves
    # (1 h of waits in all) and gets both hosts; started as the starving head it keeps them
    # while it is expected to need them (its class's mean residual). A 1-GPU job may preempt
    # it after that; its waits being past the limit it starves again at once and then waits
    # at most for the 600-s jobs on its hosts: a few rounds for 1,000 s of work
    start = sim.jobs[30].first_start_seconds
    done = sim.jobs[30].finish_seconds
    assert start is not None and done is not None
    assert done <= 3050.0 + 3600.0 + 1000.0 + 10 * (600.0 + 100.0)
    assert result.unfinished_jobs == 0

    unguarded = GpufleetPolicy(
        spec, OnlineRuntimePredictor(), reserve_after_seconds=1e12, reserve_size_factor=0.0
    )
    sim, _ = run("", spec, _two_host_stream(600), unguarded, REALISTIC)
    late = sim.jobs[30].finish_seconds
    assert late is not None and late > 3001.0 + 100.0 * 590  # behind the whole stream


def test_only_jobs_predicted_to_end_by_the_reserved_start_backfill_its_hosts() -> None:
    """While a 16-GPU job holds a reservation on both hosts, short jobs (predicted to end before
    the reserved start) still start there, long ones do not."""
    spec = parse_cluster("v100:16x8")
    # job 0 runs 2 h on one GPU; job 1 (16 GPUs) starves at once (starve limit 0 s)
    items = [make_job(0, 0.0, 7200.0), make_job(1, 1.0, 100.0, 16)]
    items += [make_job(2, 10.0, 60.0), make_job(3, 20.0, 9000.0)]
    known = KnownRuntimes({0: 7200.0, 1: 100.0, 2: 60.0, 3: 9000.0})
    policy = GpufleetPolicy(  # (no preemption by rank: the reservation alone decides)
        spec,
        known,
        starve_reserve=True,
        reserve_after_seconds=0.0,
        reserve_size_factor=0.0,
        reserve_held_factor=0.0,
        preempt_margin=1e9,
    )
    sim, result = run("", spec, items, policy, REALISTIC)
    assert sim.jobs[2].first_start_seconds == 10.0  # ends long before job 0 frees its GPU
    start1, start3 = sim.jobs[1].first_start_seconds, sim.jobs[3].first_start_seconds
    assert start1 is not None and start3 is not None
    assert start1 >= 7200.0 and start3 >= start1  # job 3 would delay job 1: it waits
    assert result.preemptions == 0


class PlainGpufleet(GpufleetPolicy):
    """gpufleet's policy without its shortcuts: the running jobs sorted afresh and walked in
    full at every pass, a pass at every schedule, every running job visited for the wake-up."""

    shortcuts = False


def heavy_mix(seed: int, count: int = 400) -> list:
    """An overloaded, heavy-tailed mix of 1- to 8-GPU jobs on two GPU models."""
    rng = random.Random(seed)
    items, t = [], 0.0
    for i in range(count):
        t += rng.expovariate(1 / 120.0)
        duration = min(2e5, rng.paretovariate(0.9) * 60.0)
        gpus = rng.choice([1, 1, 1, 2, 4, 8])
        items.append(make_job(i, t, duration, gpus, models=("v100", "k80")))
    return items


@pytest.mark.parametrize(
    "config, reserve",
    [(REALISTIC, False), (REALISTIC, True), (REFERENCE, False)],
    ids=["realistic", "realistic-reserve", "reference"],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_gpufleet_shortcuts_decide_like_full_passes(config, reserve, seed) -> None:
    """The incremental order, the walk from the first waiting job, the skipped passes and the
    wake-up heaps change no decision: every job starts, is preempted and finishes at the same
    instants as with full passes (starving jobs included: a 2 h starvation limit by default;
    reservations for starving jobs with ``starve_reserve``)."""
    spec = parse_cluster("v100:8x4,k80:8x4")
    outcomes = []
    heads = []
    for cls in (GpufleetPolicy, PlainGpufleet):
        policy = cls(
            spec,
            None,
            realistic=not config.reference,
            starve_after_seconds=7200.0,
            starve_reserve=reserve,
        )
        sim, result = run("", spec, heavy_mix(seed), policy, config)
        heads.append(policy.heads_started)
        outcomes.append(
            (
                [
                    (j.job_id, j.first_start_seconds, j.finish_seconds, j.preemptions)
                    for j in sim.jobs.values()
                ],
                result.preemptions,
            )
        )
    assert outcomes[0][1] > 0, "the mix preempts (the shortcuts have work to do)"
    if reserve:  # starving jobs get reservations and start as heads
        assert heads[0] > 0
    assert outcomes[0] == outcomes[1]
    assert heads[0] == heads[1]


# -- invariants of every policy ----------------------------------------------------------------
class RecordingSimulator(Simulator):
    """Checks, at every start, that the placement is sane."""

    times: list[float]

    def _start(self, job, placement: Placement, claimed_memory_bytes: int = 0) -> None:
        cluster: ClusterState = self.cluster
        assert job.job_id not in cluster.placements, "job placed twice"
        hosts = placement.host_ids
        assert len(hosts) == cluster.hosts_needed(job.num_gpus, placement.gpu_model)
        assert len(placement.gpus) == job.num_gpus
        assert len(set(placement.gpus)) == job.num_gpus
        assert all(cluster.hosts[h].gpu_model == placement.gpu_model for h in hosts)
        super()._start(job, placement, claimed_memory_bytes)
        self.times.append(self.now_seconds)


job_strategy = st.tuples(
    st.floats(0, 5000),
    st.floats(1, 3000),
    st.sampled_from([1, 1, 1, 2, 4, 8]),
    st.floats(1, 30),
)


@pytest.mark.parametrize("config", [REALISTIC, REFERENCE], ids=["realistic", "reference"])
@pytest.mark.parametrize("policy_name", POLICY_NAMES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(job_strategy, min_size=1, max_size=25))
def test_invariants_every_policy(policy_name, config, rows) -> None:
    spec = parse_cluster("v100:8x4,k80:8x4")

    def jobs():
        return [
            make_job(i, a, d, g, memory_gib=m, models=("v100", "k80"))
            for i, (a, d, g, m) in enumerate(rows)
        ]

    results = []
    for _ in range(2):
        items = jobs()
        policy = make_policy(policy_name, spec, config, items)
        sim = RecordingSimulator(spec, items, policy, lambda a, b, m: 0.8, config)
        sim.times = []
        result = sim.run()
        assert result.unfinished_jobs == 0, "every job finishes on a big-enough cluster"
        assert sim.times == sorted(sim.times), "time never goes backwards"
        for job in sim.jobs.values():
            assert job.finish_seconds is not None and job.finish_seconds >= job.arrival_seconds
            assert job.first_start_seconds >= job.arrival_seconds
        if config.reference:
            assert result.oom_failures == 0
        summary = summarize(result)
        summary.pop("sim_wall_s")
        summary.pop("jobs_per_second")
        results.append(summary)
    assert results[0] == results[1], "same input, same result"
    assert all(math.isfinite(v) for v in results[0].values() if isinstance(v, float))
