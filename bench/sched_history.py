"""Per-job histories of the scheduling policies, to check that a speed-up changed no decision.

    # record with the code before the change (a detached worktree of the old commit):
    git worktree add --detach /tmp/gf-speed-before <old commit>
    PYTHONPATH=/tmp/gf-speed-before/src nice -n 10 .venv/bin/python bench/sched_history.py \
        record /tmp/histories-before.json.gz
    # record with the code now and compare, input by input, job by job:
    nice -n 10 .venv/bin/python bench/sched_history.py compare /tmp/histories-before.json.gz

A history is, per job, its first start, its finish, its preemption count and the seconds it held
GPUs (every restart moves that one), as exact floats. The inputs: the two reference traces of
../shared/data/tiresias at 64 and 32 GPUs (reference cost model); two training VCs (6214e9,
0e4a51; first 2,000 jobs) at loads 0.8 and 1.5 (realistic model); the first 3,000 jobs of
philly_jobs.csv at load 1.0 (realistic model). ``--policies`` and ``--inputs`` narrow it down.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
POLICIES = "fifo,easy,tiresias,dlas,gavel,gpufleet"
CLUSTER = "v100:32,p100:32,k80:32"
INPUTS = {
    "ref-6214e9-64": ("reference", "trace_6214e9_2000.csv", 64),
    "ref-6214e9-32": ("reference", "trace_6214e9_2000.csv", 32),
    "ref-0e4a51-64": ("reference", "trace_0e4a51.csv", 64),
    "ref-0e4a51-32": ("reference", "trace_0e4a51.csv", 32),
    "vc-6214e9-0.8": ("vc", "6214e9", 0.8),
    "vc-6214e9-1.5": ("vc", "6214e9", 1.5),
    "vc-0e4a51-0.8": ("vc", "0e4a51", 0.8),
    "vc-0e4a51-1.5": ("vc", "0e4a51", 1.5),
    "slice-3000": ("slice", 3000, 1.0),
}


def history(task: tuple[str, str]) -> tuple[str, str, dict[str, Any]]:
    from gpufleet.sched.cluster import parse_cluster
    from gpufleet.sched.gavel import bench_rows, load_gavel
    from gpufleet.sched.metrics import summarize
    from gpufleet.sched.predictor import Predictor
    from gpufleet.sched.runner import Experiment, make_policy, truth_colocation
    from gpufleet.sched.sim import SimConfig, Simulator
    from gpufleet.sched.trace import read_philly, read_tiresias_trace

    name, policy_name = task
    kind, what, size = INPUTS[name]
    cpu = time.process_time()
    if kind == "reference":
        jobs = read_tiresias_trace(DATA / "tiresias" / str(what))
        spec = parse_cluster(f"v100:{size}x4")
        config = SimConfig(cost_model="reference")
        colocation = None
    else:
        gavel = load_gavel(DATA / "gavel_throughputs.json")
        if kind == "vc":
            trace = read_philly(DATA / "philly_jobs.csv", [str(what)])[:2000]
        else:
            trace = read_philly(DATA / "philly_jobs.csv")[: int(what)]
        experiment = Experiment(trace, parse_cluster(CLUSTER), gavel, load=float(size), seed=0)
        jobs = experiment.jobs(Predictor(bench_rows(gavel)))
        spec, config = experiment.spec, experiment.config
        colocation = truth_colocation(gavel)
    policy = make_policy(policy_name, spec, config, jobs)
    sim = Simulator(spec, [j.fresh() for j in jobs], policy, colocation, config)
    result = sim.run()
    return (
        name,
        policy_name,
        {
            "jobs": {
                str(r.job_id): [r.first_start_seconds, r.finish_seconds, r.run_seconds]
                for r in result.jobs
            },
            "preemptions": result.preemptions,
            "per_job_preemptions": {
                str(j.job_id): j.preemptions for j in sim.jobs.values() if j.preemptions
            },
            "refused": sorted(result.refused),
            "unfinished": result.unfinished_jobs,
            "avg_jct_s": summarize(result)["avg_jct_s"],
            "cpu_s": time.process_time() - cpu,
        },
    )


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    tasks = [(n, p) for n in args.inputs for p in args.policies]
    out: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for name, policy, h in pool.map(history, tasks):
            out.setdefault(name, {})[policy] = h
            print(
                f"  {name:15} {policy:9} avg JCT {h['avg_jct_s']:>12,.1f} s  "
                f"preemptions {h['preemptions']:>6}  {h['cpu_s']:6.1f} CPU s",
                file=sys.stderr,
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["record", "compare"])
    parser.add_argument("path", type=Path, help="histories file (.json.gz)")
    parser.add_argument("--policies", default=POLICIES)
    parser.add_argument("--inputs", default=",".join(INPUTS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.policies = args.policies.split(",")
    args.inputs = args.inputs.split(",")
    for name in args.inputs:
        if name not in INPUTS:
            parser.error(f"--inputs: unknown input {name!r}; choose from {', '.join(INPUTS)}")
    now = run_all(args)
    if args.mode == "record":
        with gzip.open(args.path, "wt") as f:
            json.dump(now, f)
        print(f"recorded {sum(len(v) for v in now.values())} histories in {args.path}")
        return
    with gzip.open(args.path, "rt") as f:
        before = json.load(f)
    differ = 0
    for name, by_policy in now.items():
        for policy, h in by_policy.items():
            old = before.get(name, {}).get(policy)
            if old is None:
                print(f"{name} {policy}: not in {args.path}")
                differ += 1
                continue
            keys = ("jobs", "preemptions", "per_job_preemptions", "refused", "unfinished")
            bad = [k for k in keys if old[k] != h[k]]
            jobs = [j for j in h["jobs"] if old["jobs"].get(j) != h["jobs"][j]]
            status = "identical" if not bad else f"DIFFER in {', '.join(bad)}"
            if jobs:
                status += f" ({len(jobs)} jobs, first {jobs[0]}: {old['jobs'].get(jobs[0])}"
                status += f" -> {h['jobs'][jobs[0]]})"
            cpu = f"{old['cpu_s']:.1f} -> {h['cpu_s']:.1f} CPU s"
            print(f"{name:15} {policy:9} {len(h['jobs']):5} jobs  {status}  ({cpu})")
            differ += bool(bad)
    print(f"{differ} of {sum(len(v) for v in now.values())} histories differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
