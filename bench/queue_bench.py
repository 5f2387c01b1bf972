"""Live queue benchmark (issue 20): prints tables, asserts nothing.

    nice -n 10 .venv/bin/python bench/queue_bench.py --section decision
    nice -n 10 .venv/bin/python bench/queue_bench.py --section simlive --seeds 0 1 2
    nice -n 10 .venv/bin/python bench/queue_bench.py --section simlive --dispatcher ssh
    nice -n 10 .venv/bin/python bench/queue_bench.py --section simlive --dispatcher ssh \
        --no-checkpoint [--not-preemptible]
    nice -n 10 .venv/bin/python bench/queue_bench.py --section simlive --memory --seeds 0 1 2

Sections:
- decision: scheduling decision time of the live driver (``QueueDriver.set_fleet`` +
  ``schedule``, i.e. what one pass of the service costs besides I/O) with 10,000 queued jobs on
  1,000 hosts (8 GPUs each, four GPU models), GPUs all busy, one job finishing before each pass
  (its GPUs go to the policy). p50 / p99 per decision for gpufleet (the default) beside FIFO on
  the same input. Target: p99 < 100 ms.
- simlive: the same 300-job arrival sequence (seeded: Poisson arrivals, log-normal durations,
  median 3 s, 1/2/4 GPUs) through the live queue (the queue service, the replay dispatcher: jobs
  "run" for their duration in real time, 8 hosts x 4 GPUs) and through the simulator with the
  same policy object class and no restart or transfer cost: per-job first-start difference
  live - sim (median, p95 of the absolute value), avg JCT live / sim (aim: within 5%), and the
  OOM / unfinished ("deadlock") counts of the live run and of FIFO in the simulator on the same
  input. ``--dispatcher ssh``: the live jobs are real ``sleep`` processes started over SSH on 8
  loopback OpenSSH servers (one per host of the fleet, as in the tests) under gpufleet's
  supervisor, and their ends come back as events, instead of the replay dispatcher's timers.
  Without ``--memory`` the fleet has one GPU model and the jobs no memory figure: an OOM cannot
  happen there, so its OOM count shows placement never claimed a busy GPU, nothing more.
- simlive ``--memory`` (replay dispatcher only): 8 hosts x 4 GPUs, alternately 16 GiB
  (v100-16gb) and 80 GiB (a100) GPUs, 300 jobs of 1/2/4/8 GPUs (8 spans two hosts) whose true
  memory per GPU is log-uniform in [2, 64] GiB, half of them declaring it (``--declare``). The
  replay dispatcher holds the truth (its GPU-memory model: a run that does not fit fails as an
  OOM after ``--oom-after`` s); the queue and the policy see the specs. The same input through
  the live queue and the simulator (same OOM delay, no restart cost), each with ``--policy``
  and with FIFO: OOMs, jobs ended by an OOM, jobs not ended ``--deadline`` s after the last
  arrival ("deadlocked"), the start-difference / JCT columns and the preemptions of each.

    nice -n 10 .venv/bin/python bench/queue_bench.py --section simlive --memory --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from gpufleet.queue import store as st
from gpufleet.queue.dispatch.base import Dispatcher, Launch
from gpufleet.queue.dispatch.replay import ReplayDispatcher
from gpufleet.queue.driver import QueueDriver
from gpufleet.queue.fleet import FleetGpu, FleetHost, cluster_spec
from gpufleet.queue.policies import policy_factory
from gpufleet.queue.service import QueueService, SubmitError, draft_record
from gpufleet.queue.store import JobStore
from gpufleet.sched.gpumodels import default_table
from gpufleet.sched.job import JobSpec
from gpufleet.sched.predictor import OnlineRuntimePredictor
from gpufleet.sched.sim import SimConfig, Simulator
from gpufleet.sched.simjob import JobTruth, SimInput, SimJob

GIB = 2**30
MODELS = ("a100", "h100", "v100", "t4")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def fleet(hosts: int, gpus: int, busy: set[tuple[int, int]] = frozenset()) -> list[FleetHost]:  # type: ignore[assignment]
    return [
        FleetHost(
            f"h{i:04d}",
            MODELS[i % len(MODELS)],
            tuple(FleetGpu(g, 80 * GIB, 0, (i, g) in busy) for g in range(gpus)),
        )
        for i in range(hosts)
    ]


def spec(k: int, gpus: int, seconds: float, user: str = "u",
         resume_dir: Path | None = None, preemptible: bool = True) -> JobSpec:  # fmt: skip
    """A job that sleeps ``seconds``; with ``resume_dir``, one that checkpoints as the
    simulator assumes every job does: SIGTERM (a preemption) saves the milliseconds done,
    and a later run sleeps only what is left."""
    command: tuple[str, ...] = ("sleep", f"{seconds:.3f}")
    if resume_dir is not None:
        f = resume_dir / f"j{k}.done"
        command = ("sh", "-c", (
            f"f={f}; total={round(seconds * 1000)}; d=$(cat $f 2>/dev/null || echo 0); "
            "s=$(date +%s%N); "
            "trap 'echo $((d + ($(date +%s%N) - s) / 1000000)) > $f; exit 143' TERM; "
            "l=$((total - d)); if [ $l -gt 0 ]; then "
            "sleep $((l / 1000)).$(printf %03d $((l % 1000))) & wait $!; fi"
        ))  # fmt: skip
    return JobSpec(f"j{k}", f"{user}{k % 50}", float(gpus), "resnet50", epochs=1,
                   command=command, preemptible=preemptible)  # fmt: skip


# -- decision time ---------------------------------------------------------------------------
def decision(policy: str, jobs: int, hosts: int, decisions: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    driver = QueueDriver(policy_factory(policy))
    the_fleet = fleet(hosts, 8)
    driver.set_fleet(the_fleet)
    records = []
    for k in range(jobs + hosts * 8):
        gpus = rng.choices([1, 2, 4, 8], weights=[6, 3, 2, 1])[0]
        r = draft_record(spec(k, gpus, 60), "vc")
        r = st.JobRecord(**{**r.to_json(), "id": k + 1, "submit_seconds": float(k)})
        records.append(r)
        driver.add(r, float(k))
    now = float(len(records))
    driver.schedule(now)  # the first pass admits every job and fills the fleet
    times = []
    for _ in range(decisions):
        now += 1.0
        if driver.running:
            done = rng.choice(list(driver.running))
            driver.finished(done, now, 60.0)
        t0 = time.perf_counter()
        driver.set_fleet(the_fleet)
        driver.schedule(now)
        times.append(time.perf_counter() - t0)
    return times


def section_decision(args: argparse.Namespace) -> None:
    print(f"## Decision time: {args.jobs:,} queued jobs, {args.hosts:,} hosts x 8 GPUs, "
          f"{args.decisions} decisions after one finish each (ms)\n")  # fmt: skip
    print("| policy | p50 | p99 | max | target p99 < 100 ms |")
    print("|---|---|---|---|---|")
    for policy in ("gpufleet", "fifo"):
        ms = [t * 1000 for t in decision(policy, args.jobs, args.hosts, args.decisions, 0)]
        ok = "met" if pct(ms, 0.99) < 100 else "NOT met"
        print(f"| {policy} | {pct(ms, 0.5):.1f} | {pct(ms, 0.99):.1f} | {max(ms):.1f} | "
              f"{ok if policy == 'gpufleet' else '(baseline)'} |")  # fmt: skip
    print()


# -- simulator vs live -----------------------------------------------------------------------
def arrivals(seed: int, n: int, hosts: int, gpus: int) -> list[tuple[float, int, float]]:
    """(submit offset s, GPUs, duration s): load about 0.9 of the fleet."""
    rng = random.Random(f"simlive:{seed}")
    jobs = []
    sizes = [rng.choices([1, 2, 4], weights=[6, 3, 1])[0] for _ in range(n)]
    durations = [min(30.0, 3.0 * math.exp(rng.gauss(0, 0.7))) for _ in range(n)]
    work = sum(s * d for s, d in zip(sizes, durations, strict=True))
    span = work / (0.9 * hosts * gpus)
    t = 0.0
    for s, d in zip(sizes, durations, strict=True):
        t += rng.expovariate(n / span)
        jobs.append((round(t, 3), s, round(d, 3)))
    return jobs


def simulate(policy: str, jobs: list[tuple[float, int, float]], hosts: int, gpus: int,
             preemptible: bool = True) -> dict:  # fmt: skip
    the_fleet = fleet(hosts, gpus)
    model = the_fleet[0].gpu_model
    the_fleet = [FleetHost(h.name, model, h.gpus) for h in the_fleet]
    spec_ = cluster_spec(the_fleet)
    inputs = [
        SimInput(
            SimJob(
                k + 1,
                t,
                g,
                "resnet50",
                {model: 1.0},
                synthetic=False,
                user=f"u{k % 50}",
                preemptible=preemptible,
            ),
            JobTruth({model: d}, 1 * GIB),
        )
        for k, (t, g, d) in enumerate(jobs)
    ]
    config = SimConfig(cost_model="realistic", restart_cost_seconds=0.0)
    policy_obj = policy_factory(policy)(spec_, OnlineRuntimePredictor())
    sim = Simulator(spec_, inputs, policy_obj, config=config)
    result = sim.run()
    return {
        "start": {r.job_id: r.first_start_seconds for r in result.jobs},
        "jct": {
            r.job_id: r.finish_seconds - r.arrival_seconds
            for r in result.jobs
            if r.finish_seconds is not None
        },
        "oom": result.oom_failures,
        "unfinished": result.unfinished_jobs,
    }


@contextlib.contextmanager
def ssh_servers(names: list[str], root: Path) -> Iterator[Callable[[Path], Dispatcher]]:
    """One real OpenSSH server on loopback per host name (the tests' set-up); yields a
    factory of SSH dispatchers to them (a fresh state directory each time)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.poller.conftest import start_sshd, stop_sshd

    from gpufleet.poller.service import SshHostConfig
    from gpufleet.queue.dispatch.ssh import SshDispatcher

    procs, configs = [], []
    try:
        for name in names:
            proc, sshd = start_sshd(root / f"sshd-{name}", smi=False)
            procs.append(proc)
            configs.append(SshHostConfig(name=name, host="127.0.0.1", port=sshd.port,
                                         user=sshd.user, key_file=sshd.key_file))  # fmt: skip

        def make(state: Path) -> Dispatcher:
            return SshDispatcher(configs, state_dirs={c.name: str(state / c.name) for c in configs})

        yield make
    finally:
        for proc in procs:
            stop_sshd(proc)


async def live(policy: str, jobs: list[tuple[float, int, float]], hosts: int, gpus: int,
               root: Path, dispatcher: Dispatcher | None = None,
               resume_dir: Path | None = None, preemptible: bool = True,
               the_fleet: list[FleetHost] | None = None, specs: list[JobSpec] | None = None,
               deadline_seconds: float = 600.0,
               fleet_now: Callable[[], list[FleetHost]] | None = None) -> dict:  # fmt: skip
    """The sequence through the live queue service; ``the_fleet`` and ``specs`` (with the
    dispatcher) replace the default 8 x 4 one-model fleet and ``spec()``'s jobs. A job not
    ended ``deadline_seconds`` after the last arrival counts as unfinished."""
    if the_fleet is None:
        the_fleet = fleet(hosts, gpus)
        model = the_fleet[0].gpu_model
        the_fleet = [FleetHost(h.name, model, h.gpus) for h in the_fleet]
    svc = QueueService(
        JobStore(root / "q.sqlite3"), dispatcher or ReplayDispatcher(root / "r.json"),
        QueueDriver(policy_factory(policy)), fleet_now or (lambda: the_fleet),
        refresh_seconds=1.0,
    )  # fmt: skip
    await svc.start()
    t0 = time.time()
    ids: list[int | None] = []
    out: dict[str, Any] = {"start": {}, "jct": {}, "oom": 0, "oom_ended": 0,
                           "unfinished": 0, "refused": 0, "preempted": 0}  # fmt: skip
    for k, (t, g, d) in enumerate(jobs):
        delay = t0 + t - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        job = specs[k] if specs is not None else spec(k, g, d, resume_dir=resume_dir,
                                                      preemptible=preemptible)  # fmt: skip
        try:
            ids.append((await svc.submit(job)).id)
        except SubmitError:
            ids.append(None)
            out["refused"] += 1
    deadline = t0 + (jobs[-1][0] if jobs else 0.0) + deadline_seconds
    while time.time() < deadline:
        counts = svc.store.counts()
        if sum(counts[s] for s in st.FINAL) == len(ids) - out["refused"]:
            break
        await asyncio.sleep(0.5)
    await svc.stop()
    records = {r.id: r for r in svc.store.jobs()}
    for k, job_id in enumerate(ids):
        if job_id is None:
            continue
        r = records[job_id]
        submit = t0 + jobs[k][0]  # the sequence's own time (a late submit counts as waiting)
        events = svc.store.events(job_id)
        # its first start, as the simulator's first_start_seconds (the record's start_seconds
        # is its last run's: a job preempted or retried after an OOM started earlier)
        first = min((e["at_seconds"] for e in events if e["state"] == st.RUNNING), default=None)
        if first is not None:
            out["start"][k + 1] = jobs[k][0] + (first - submit)
        if r.state == st.SUCCEEDED and r.end_seconds is not None:
            out["jct"][k + 1] = r.end_seconds - submit
        # runs that ran out of GPU memory: a retry on a larger GPU ("ran out of GPU memory on
        # ...: waits for a larger GPU") or the end of the job ("ran out of GPU memory")
        out["oom"] += sum(e["message"].startswith("ran out of GPU memory") for e in events)
        out["preempted"] += sum(e["message"].startswith("preempted by the policy") for e in events)
        out["oom_ended"] += r.state == st.OOM
        out["unfinished"] += r.state not in st.FINAL
    svc.store.close()
    return out


def section_simlive(args: argparse.Namespace) -> None:
    hosts, gpus = 8, 4
    with TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        make = None
        if args.dispatcher == "ssh":
            make = stack.enter_context(ssh_servers([h.name for h in fleet(hosts, gpus)], Path(tmp)))
        _simlive(args, hosts, gpus, make)


def _simlive(
    args: argparse.Namespace, hosts: int, gpus: int, make: Callable[[Path], Dispatcher] | None
) -> None:
    what = (
        "replay dispatcher"
        if make is None
        else (
            f"SSH dispatcher to {hosts} loopback sshd, jobs "
            + ("that do not checkpoint" if args.no_checkpoint else "that checkpoint on SIGTERM")
        )
    ) + (", every job preemptible: false (here and in the simulator)" if args.not_preemptible
         else "")  # fmt: skip
    print(f"## Simulator vs live: {args.n} jobs, {hosts} hosts x {gpus} GPUs, policy "
          f"{args.policy}, {what} (seconds)\n")  # fmt: skip
    print("| seed | start diff median | start diff p95 | avg JCT live | avg JCT sim | live / sim "
          "| OOM live / sim FIFO | unfinished live / sim FIFO |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for seed in args.seeds:
        jobs = arrivals(seed, args.n, hosts, gpus)
        sim = simulate(args.policy, jobs, hosts, gpus, not args.not_preemptible)
        fifo = simulate("fifo", jobs, hosts, gpus)
        with TemporaryDirectory() as tmp:
            d = None if make is None else make(Path(tmp) / "state")
            resume = None
            if make is not None and not args.no_checkpoint:
                resume = Path(tmp) / "progress"
                resume.mkdir()
            got = asyncio.run(live(args.policy, jobs, hosts, gpus, Path(tmp), d, resume,
                                   not args.not_preemptible))  # fmt: skip
        diffs = [abs(got["start"][k] - sim["start"][k]) for k in got["start"]
                 if sim["start"].get(k) is not None]  # fmt: skip
        both = [k for k in got["jct"] if k in sim["jct"]]
        live_jct = statistics.mean(got["jct"][k] for k in both)
        sim_jct = statistics.mean(sim["jct"][k] for k in both)
        ratios.append(live_jct / sim_jct)
        print(f"| {seed} | {statistics.median(diffs):.2f} | {pct(diffs, 0.95):.2f} | "
              f"{live_jct:.2f} | {sim_jct:.2f} | **{live_jct / sim_jct:.3f}** | "
              f"{got['oom']} / {fifo['oom']} | {got['unfinished']} / {fifo['unfinished']} |")  # fmt: skip
    if len(ratios) > 1:
        print(f"\nlive / sim avg JCT over seeds: mean {statistics.mean(ratios):.3f}, range "
              f"{min(ratios):.3f}-{max(ratios):.3f} (aim: within 5%)")  # fmt: skip
    print()


# -- simulator vs live, with GPU memory ------------------------------------------------------
MEMORY_MODELS = ("v100-16gb", "a100")  # 16 and 80 GiB per GPU (sched/gpu_models.csv)


@dataclass(frozen=True)
class MemoryJob:
    submit_seconds: float
    gpus: int
    seconds: float
    true_bytes: int  # what it really allocates per GPU: the replayed world's and the sim's truth
    declared_bytes: int | None  # ``gpu_memory`` in its spec (None: the user gave none)


def memory_fleet(hosts: int, gpus: int) -> list[FleetHost]:
    """Hosts alternate between the models of ``MEMORY_MODELS``, the 16 GiB one first."""
    out = []
    for i in range(hosts):
        model = MEMORY_MODELS[i % len(MEMORY_MODELS)]
        memory = default_table().memory_bytes(model)
        out.append(
            FleetHost(f"h{i:04d}", model, tuple(FleetGpu(g, memory, 0) for g in range(gpus)))
        )
    return out


def memory_arrivals(seed: int, n: int, hosts: int, gpus: int, declare: float) -> list[MemoryJob]:
    """Load about 0.9 of the fleet: Poisson arrivals; 1/2/4/8 GPUs (weights 5/3/1/1; 8 spans
    two hosts); durations log-normal, median 3 s, capped at 30 s; true memory per GPU
    log-uniform in [2, 64] GiB (40% need more than a 16 GiB GPU); a job declares its memory
    (rounded up to a whole GiB) with probability ``declare``."""
    rng = random.Random(f"simlive-memory:{seed}")
    sizes = [rng.choices([1, 2, 4, 8], weights=[5, 3, 1, 1])[0] for _ in range(n)]
    durations = [min(30.0, 3.0 * math.exp(rng.gauss(0, 0.7))) for _ in range(n)]
    needs = [int(2 * GIB * 32 ** rng.random()) for _ in range(n)]
    declared = [math.ceil(b / GIB) * GIB if rng.random() < declare else None for b in needs]
    work = sum(s * d for s, d in zip(sizes, durations, strict=True))
    span = work / (0.9 * hosts * gpus)
    t, jobs = 0.0, []
    for k in range(n):
        t += rng.expovariate(n / span)
        jobs.append(MemoryJob(round(t, 3), sizes[k], round(durations[k], 3), needs[k], declared[k]))
    return jobs


def memory_spec(k: int, job: MemoryJob) -> JobSpec:
    return JobSpec(f"j{k}", f"u{k % 50}", float(job.gpus), "resnet50", job.declared_bytes,
                   epochs=1, command=("sleep", f"{job.seconds:.3f}"))  # fmt: skip


def simulate_memory(policy: str, jobs: list[MemoryJob], the_fleet: list[FleetHost],
                    oom_after: float, deadline: float) -> dict:  # fmt: skip
    """The simulator on the same input: each job is the view the live driver builds from its
    spec (GPU models its declared memory fits, with the driver's margin; runtime ratios from
    the GPU table), the truth its real memory and duration (the same on both models, as on
    the replay fleet)."""
    spec_ = cluster_spec(the_fleet)
    driver = QueueDriver(policy_factory(policy))
    driver.set_fleet(the_fleet)
    inputs = []
    for k, job in enumerate(jobs):
        draft = draft_record(memory_spec(k, job), "vc")
        record = st.JobRecord(**{**draft.to_json(), "id": k + 1,
                                 "submit_seconds": job.submit_seconds})  # fmt: skip
        driver.add(record, job.submit_seconds)
        view = driver.jobs.pop(k + 1)
        truth = JobTruth({m: job.seconds for m in MEMORY_MODELS}, job.true_bytes)
        inputs.append(SimInput(view, truth))
    config = SimConfig(cost_model="realistic", restart_cost_seconds=0.0,
                       oom_detect_seconds=oom_after)  # fmt: skip
    sim = Simulator(spec_, inputs, policy_factory(policy)(spec_, OnlineRuntimePredictor()),
                    config=config)  # fmt: skip
    result = sim.run()
    end_by = jobs[-1].submit_seconds + deadline
    jct = {r.job_id: r.finish_seconds - r.arrival_seconds for r in result.jobs
           if r.finish_seconds is not None and r.finish_seconds <= end_by}  # fmt: skip
    after_oom = sum(why.startswith("ran out of GPU memory") for why in result.refused.values())
    return {
        "start": {r.job_id: r.first_start_seconds for r in result.jobs},
        "jct": jct,
        "oom": result.oom_failures,
        "oom_ended": after_oom,
        "preempted": result.preemptions,
        "refused": len(result.refused) - after_oom,
        "unfinished": len(result.jobs) - len(jct),
    }


def observed(the_fleet: list[FleetHost], world: ReplayDispatcher) -> list[FleetHost]:
    """The fleet as agents would report it: each GPU's memory in use, from what the replayed
    runs on it really allocate (nvidia-smi's view, after the fact; the jobs' needs are not)."""
    used: dict[tuple[str, int], int] = {}
    for run in world.runs.values():
        if run.oom or not run.memory_bytes:
            continue
        for host, indices in run.hosts:
            for g in indices:
                used[host, g] = used.get((host, g), 0) + run.memory_bytes
    out = []
    for h in the_fleet:
        gpus = tuple(
            FleetGpu(g.index, g.memory_total_bytes, used.get((h.name, g.index), 0), g.busy)
            for g in h.gpus
        )
        out.append(FleetHost(h.name, h.gpu_model, gpus))
    return out


def section_memory(args: argparse.Namespace) -> None:
    hosts, gpus = 8, 4
    if args.dispatcher != "replay":
        sys.exit("error: --memory runs with the replay dispatcher only (its GPU-memory model)\n"
                 "hint: drop --dispatcher ssh")  # fmt: skip
    the_fleet = memory_fleet(hosts, gpus)
    memory = {h.name: min(g.memory_total_bytes for g in h.gpus) for h in the_fleet}
    models = ", ".join(f"{hosts // 2} x {gpus} {m} ({default_table().memory_bytes(m) / GIB:.0f} "
                       f"GiB)" for m in MEMORY_MODELS)  # fmt: skip
    print(f"## Simulator vs live with GPU memory: {args.n} jobs, {hosts} hosts ({models}, "
          f"alternating), replay dispatcher with its memory model, OOM detected after "
          f"{args.oom_after:g} s, {args.declare:.0%} of jobs declare gpu_memory; unfinished = "
          f"not ended {args.deadline:g} s after the last arrival (seconds)\n")  # fmt: skip
    print("| seed | policy | start diff median | start diff p95 | avg JCT live | avg JCT sim "
          "| live / sim | OOM runs live / sim | ended by OOM live / sim "
          "| unfinished live / sim "
          "| succeeded live / sim | preemptions live / sim |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    totals: dict[str, list[int]] = {}
    inputs = []
    for seed in args.seeds:
        jobs = memory_arrivals(seed, args.n, hosts, gpus, args.declare)
        big = [j for j in jobs if j.true_bytes > min(memory.values())]
        inputs.append(
            f"seed {seed}: {sum(j.gpus > gpus for j in jobs)} jobs span hosts, "
            f"{sum(j.declared_bytes is not None for j in jobs)} declare their memory, "
            f"{len(big)} need more than a 16 GiB GPU, of which "
            f"{sum(j.declared_bytes is None for j in big)} do not say so"
        )
        truth = {f"j{k}": j.true_bytes for k, j in enumerate(jobs)}

        def allocates(launch: Launch, truth: dict[str, int] = truth) -> int | None:
            return truth.get(launch.name)

        for policy in (args.policy, "fifo"):
            sim = simulate_memory(policy, jobs, the_fleet, args.oom_after, args.deadline)
            with TemporaryDirectory() as tmp:
                world = ReplayDispatcher(
                    Path(tmp) / "r.json", host_gpu_memory_bytes=memory,
                    job_memory_bytes=allocates,
                    oom_after_seconds=args.oom_after,
                )  # fmt: skip
                got = asyncio.run(live(
                    policy, [(j.submit_seconds, j.gpus, j.seconds) for j in jobs], hosts, gpus,
                    Path(tmp), world, the_fleet=the_fleet,
                    fleet_now=lambda world=world: observed(the_fleet, world),
                    specs=[memory_spec(k, j) for k, j in enumerate(jobs)],
                    deadline_seconds=args.deadline,
                ))  # fmt: skip
            diffs = [abs(got["start"][k] - sim["start"][k]) for k in got["start"]
                     if sim["start"].get(k) is not None]  # fmt: skip
            both = [k for k in got["jct"] if k in sim["jct"]]
            live_jct = statistics.mean(got["jct"][k] for k in both)
            sim_jct = statistics.mean(sim["jct"][k] for k in both)
            print(f"| {seed} | {policy} | {statistics.median(diffs):.2f} | {pct(diffs, 0.95):.2f} "
                  f"| {live_jct:.2f} | {sim_jct:.2f} | {live_jct / sim_jct:.3f} | "
                  f"**{got['oom']}** / {sim['oom']} | "
                  f"{got['oom_ended']} / {sim['oom_ended']} | "
                  f"**{got['unfinished']}** / {sim['unfinished']} | "
                  f"{len(got['jct'])} / {len(sim['jct'])} | "
                  f"{got['preempted']} / {sim['preempted']} |", flush=True)  # fmt: skip
            t = totals.setdefault(policy, [0, 0, 0, 0, 0, 0])
            for i, v in enumerate((got["oom"], sim["oom"], got["unfinished"], sim["unfinished"],
                                   got["refused"], sim["refused"])):  # fmt: skip
                t[i] += v
    print()
    for line in inputs:
        print(f"- {line}")
    for policy, t in totals.items():
        print(f"- {policy}, over {len(args.seeds)} seed(s): OOM live {t[0]}, sim {t[1]}; "
              f"unfinished live {t[2]}, sim {t[3]}; refused at submission live {t[4]}, "
              f"sim {t[5]}")  # fmt: skip
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--section", choices=["decision", "simlive", "all"], default="all")
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--hosts", type=int, default=1_000)
    p.add_argument("--decisions", type=int, default=200)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--policy", default="gpufleet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--dispatcher",
        choices=["replay", "ssh"],
        default="replay",
        help="simlive: who runs the live jobs (ssh: real processes, loopback sshd)",
    )
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="simlive over ssh: a preempted job starts again from its beginning",
    )
    p.add_argument(
        "--not-preemptible",
        action="store_true",
        help="simlive: every job says preemptible: false (live and simulated)",
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="simlive: a 16 / 80 GiB fleet, jobs with true memory needs, some undeclared, some\n"
        "spanning hosts; OOM and unfinished counts of the live queue and the simulator,\n"
        "with --policy and with FIFO (replay dispatcher)",
    )
    p.add_argument("--declare", type=float, default=0.5,
                   help="simlive --memory: share of jobs that declare gpu_memory")  # fmt: skip
    p.add_argument("--oom-after", type=float, default=0.5,
                   help="simlive --memory: seconds from a start to its OOM (live and sim)")  # fmt: skip
    p.add_argument("--deadline", type=float, default=600.0,
                   help="simlive: seconds after the last arrival by which a job must end")  # fmt: skip
    args = p.parse_args()
    if not 0.0 <= args.declare <= 1.0:
        p.error(f"--declare: a share between 0 and 1, not {args.declare}")
    if args.section in ("decision", "all"):
        section_decision(args)
    if args.section in ("simlive", "all"):
        if args.memory:
            section_memory(args)
        else:
            section_simlive(args)


if __name__ == "__main__":
    main()
