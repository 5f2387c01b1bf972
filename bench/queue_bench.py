"""Live queue benchmark (issue 20): prints tables, asserts nothing.

    nice -n 10 .venv/bin/python bench/queue_bench.py --section decision
    nice -n 10 .venv/bin/python bench/queue_bench.py --section simlive --seeds 0 1 2
    nice -n 10 .venv/bin/python bench/queue_bench.py --section simlive --dispatcher ssh
    nice -n 10 .venv/bin/python bench/queue_bench.py --section simlive --dispatcher ssh \
        --no-checkpoint [--not-preemptible]

Sections:
- decision: scheduling decision time of the live driver (``QueueDriver.set_fleet`` +
  ``schedule``, i.e. what one pass of the service costs besides I/O) with 10,000 queued jobs on
  1,000 hosts (8 GPUs each, four GPU models), GPUs all busy, one job finishing before each pass
  (its GPUs go to the policy). p50 / p99 per decision for gpufleet (the default) beside FIFO on
  the same input. Target: p99 < 100 ms.
- simlive: the same 300-job arrival sequence (seeded: Poisson arrivals, log-normal durations,
  median 3 s, 1/2/4 GPUs) through the live queue (the queue service, the replay dispatcher: jobs
  "run" for their duration in real time, 8 hosts x 4 GPUs) and through the simulator with the
  same policy object class and no restart or transfer cost: per-job start-time difference
  live - sim (median, p95 of the absolute value), avg JCT live / sim (aim: within 5%), and the
  OOM / unfinished ("deadlock") counts of the live run and of FIFO in the simulator on the same
  input. ``--dispatcher ssh``: the live jobs are real ``sleep`` processes started over SSH on 8
  loopback OpenSSH servers (one per host of the fleet, as in the tests) under gpufleet's
  supervisor, and their ends come back as events, instead of the replay dispatcher's timers. The replay fleet has no GPU memory model: an OOM cannot happen there, so the live OOM
  count shows placement never claimed a busy GPU, not that memory was modelled.
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
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from gpufleet.queue import store as st
from gpufleet.queue.dispatch.base import Dispatcher
from gpufleet.queue.dispatch.replay import ReplayDispatcher
from gpufleet.queue.driver import QueueDriver
from gpufleet.queue.fleet import FleetGpu, FleetHost, cluster_spec
from gpufleet.queue.policies import policy_factory
from gpufleet.queue.service import QueueService, draft_record
from gpufleet.queue.store import JobStore
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
               resume_dir: Path | None = None, preemptible: bool = True) -> dict:  # fmt: skip
    the_fleet = fleet(hosts, gpus)
    model = the_fleet[0].gpu_model
    the_fleet = [FleetHost(h.name, model, h.gpus) for h in the_fleet]
    svc = QueueService(
        JobStore(root / "q.sqlite3"), dispatcher or ReplayDispatcher(root / "r.json"),
        QueueDriver(policy_factory(policy)), lambda: the_fleet, refresh_seconds=1.0,
    )  # fmt: skip
    await svc.start()
    t0 = time.time()
    ids = []
    for k, (t, g, d) in enumerate(jobs):
        delay = t0 + t - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        job = spec(k, g, d, resume_dir=resume_dir, preemptible=preemptible)
        ids.append((await svc.submit(job)).id)
    deadline = time.time() + 600
    while time.time() < deadline:
        counts = svc.store.counts()
        if sum(counts[s] for s in st.FINAL) == len(ids):
            break
        await asyncio.sleep(0.5)
    await svc.stop()
    records = {r.id: r for r in svc.store.jobs()}
    out: dict[str, Any] = {"start": {}, "jct": {}, "oom": 0, "unfinished": 0}
    for k, job_id in enumerate(ids):
        r = records[job_id]
        submit = t0 + jobs[k][0]  # the sequence's own time (a late submit counts as waiting)
        if r.start_seconds is not None:
            out["start"][k + 1] = jobs[k][0] + (r.start_seconds - submit)
        if r.state == st.SUCCEEDED and r.end_seconds is not None:
            out["jct"][k + 1] = r.end_seconds - submit
        out["oom"] += r.state == st.OOM
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
    args = p.parse_args()
    if args.section in ("decision", "all"):
        section_decision(args)
    if args.section in ("simlive", "all"):
        section_simlive(args)


if __name__ == "__main__":
    main()
