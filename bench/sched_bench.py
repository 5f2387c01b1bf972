"""Scheduling benchmark: prints the figures of issue 14 as tables (no timed assertions).

    nice -n 10 .venv/bin/python bench/sched_bench.py                    # everything (long)
    nice -n 10 .venv/bin/python bench/sched_bench.py --section reference
    nice -n 10 .venv/bin/python bench/sched_bench.py --section quality --seeds 1 --loads 1.0
    nice -n 10 .venv/bin/python bench/sched_bench.py --section speed --policies gpufleet

Sections:
- reference: the two traces of ../shared/data/tiresias at 64 and 32 GPUs, reference cost model
  (GPUs counted, free preemption, no transfer), each policy beside the reference simulator's
  published figures; ratios gpufleet / 2D-LAS (target: avg JCT < 1; goal: mean wait <= 0.8).
- quality: training VCs x loads 0.8/1.0/1.5 x seeds, realistic cost model, the first --max-jobs
  jobs of each VC: gpufleet / FIFO (target <= 0.5), gpufleet / best non-oracle baseline (target
  <= 0.9, none above 1.0), p99 queueing and the worst wait of an 8+ GPU job vs EASY, OOM, refused.
  Mean over seeds, with the range over seeds of gpufleet / best. The best baseline is chosen
  among the non-oracle baselines run (runner.NON_ORACLE_BASELINES: fifo, easy, tiresias, dlas,
  the Gavel-style heuristic ``gavel`` and Gavel's LP policies ``gavel-lp``, ``gavel-lp-jct``,
  ``gavel-lp-makespan``); a second table gives each policy's CPU seconds per run and, for the LP
  policies, the solves per run and the solver's CPU time per solve.
- heldout: the same on VCs never used while designing or tuning the policy.
- predictor: the online runtime predictor vs the trivial ones (VC median, last job of the same
  shape), per VC: MAPE, median APE, Spearman.
- steptime: the step-time predictor of the benchmark table (pair held out; nested choice).
- speed: the whole of philly_jobs.csv through each --policies, realistic model, load 1.0, seed 0
  (target: under 30 s for one policy), with the FIFO run beside it as the baseline of the machine;
  --cpu-limit stops a run after that many CPU seconds (its figure is then a lower bound).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REFERENCE = {  # ../shared/data/tiresias/README.md: avg JCT, median, p99, makespan, mean wait
    ("trace_6214e9_2000.csv", 64): {
        "fifo": (29_732, 312, 1_449_409, 4_243_293, 213),
        "tiresias": (29_614, 260, 1_452_787, 4_250_100, 96),
        "dlas": (29_614, 260, 1_452_787, 4_250_100, 96),
    },
    ("trace_6214e9_2000.csv", 32): {
        "fifo": (86_170, 34_556, 1_449_409, 4_243_293, 56_652),
        "tiresias": (30_395, 411, 1_470_733, 4_274_504, 877),
        "dlas": (30_395, 411, 1_470_733, 4_274_504, 877),
    },
    ("trace_0e4a51.csv", 64): {
        "fifo": (595_733, 451_712, 1_682_092, 7_461_851, 506_098),
        "tiresias": (199_205, 242, 2_029_489, 7_461_851, 109_570),
        "dlas": (200_905, 242, 2_038_367, 7_461_851, 111_269),
    },
    ("trace_0e4a51.csv", 32): {
        "fifo": (3_179_904, 3_628_406, 5_349_340, 9_695_303, 3_090_269),
        "tiresias": (800_817, 449, 5_658_919, 9_708_096, 711_182),
        "dlas": (812_094, 449, 5_700_519, 9_697_040, 722_458),
    },
}
TRAINING_VCS = "6214e9,11cb48,0e4a51,2869ce"
HELDOUT_VCS = "103959,ed69ec,e13805"
REALISTIC_POLICIES = (
    "fifo,easy,tiresias,dlas,gavel,gavel-lp,gavel-lp-jct,gavel-lp-makespan,gpufleet,sjf"
)


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()


def _reference_run(task: tuple[str, int, list[str]]) -> tuple[str, int, dict[str, Any]]:
    from gpufleet.sched.cluster import parse_cluster
    from gpufleet.sched.runner import run_policies
    from gpufleet.sched.sim import SimConfig
    from gpufleet.sched.trace import read_tiresias_trace

    trace, gpus, policies = task
    jobs = read_tiresias_trace(DATA / "tiresias" / trace)
    out = run_policies(
        parse_cluster(f"v100:{gpus}x4"), jobs, policies, SimConfig(cost_model="reference")
    )
    return trace, gpus, {name: summary for name, (summary, _) in out.items()}


def reference(args: argparse.Namespace, pool: ProcessPoolExecutor) -> list[dict[str, Any]]:
    policies = ["fifo", "tiresias", "dlas", "gpufleet", "sjf"]
    tasks = [(t, g, [p]) for (t, g) in REFERENCE for p in policies]
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for trace, gpus, res in pool.map(_reference_run, tasks):
        merged.setdefault((trace, gpus), {}).update(res)
    out = []
    keys = ("avg_jct_s", "p50_jct_s", "p99_jct_s", "makespan_s", "avg_wait_s")
    for (trace, gpus), res in merged.items():
        rows = []
        for name in policies:
            m = res[name]
            ref = REFERENCE[(trace, gpus)].get(name)
            label = f"{name} (oracle)" if m.get("oracle") else name
            rows.append([label, "gpufleet"] + [f"{m[k]:,.0f}" for k in keys])
            if ref:
                rows.append([name, "reference"] + [f"{v:,}" for v in ref])
                rows.append(
                    ["", "ratio"] + [f"{m[k] / v:.3f}" for k, v in zip(keys, ref, strict=True)]
                )
        g, las = res["gpufleet"], res["tiresias"]
        ratio = g["avg_jct_s"] / las["avg_jct_s"]
        wait = g["avg_wait_s"] / las["avg_wait_s"] if las["avg_wait_s"] else float("nan")
        _table(
            f"{trace}, {gpus} GPUs, reference cost model -- gpufleet / 2D-LAS: avg JCT "
            f"{ratio:.3f} (target < 1), mean wait {wait:.3f} (goal <= 0.8)",
            ["policy", "source", "avg JCT", "median", "p99", "makespan", "mean wait"],
            rows,
        )
        out.append(
            {
                "trace": trace,
                "gpus": gpus,
                "policies": res,
                "jct_vs_2dlas": ratio,
                "wait_vs_2dlas": wait,
            }
        )
    return out


def _vc_run(task: tuple[str, float, int, list[str], str, int]) -> dict[str, Any]:
    from gpufleet.sched.cluster import parse_cluster
    from gpufleet.sched.gavel import bench_rows, load_gavel
    from gpufleet.sched.predictor import Predictor
    from gpufleet.sched.runner import Experiment
    from gpufleet.sched.trace import read_philly

    vc, load, seed, policies, cluster, max_jobs = task
    gavel = load_gavel(DATA / "gavel_throughputs.json")
    trace = read_philly(DATA / "philly_jobs.csv", [vc])[:max_jobs]
    experiment = Experiment(trace, parse_cluster(cluster), gavel, load=load, seed=seed)
    cpu = time.process_time()
    results = experiment.run(policies, Predictor(bench_rows(gavel)))
    spent = time.process_time() - cpu
    print(
        f"  [{vc} load {load:g} seed {seed} {','.join(policies)}: {spent:.1f} CPU s]",
        file=sys.stderr,
        flush=True,
    )
    out = {n: s for n, (s, _) in results.items()}
    if len(policies) == 1:
        out[policies[0]]["cpu_s"] = spent
    return {"vc": vc, "load": load, "seed": seed, "policies": out}


def quality(
    args: argparse.Namespace, pool: ProcessPoolExecutor, vcs: list[str], label: str
) -> list[dict[str, Any]]:
    from gpufleet.sched.runner import NON_ORACLE_BASELINES

    tasks = [
        (vc, load, seed, [p], args.cluster, args.max_jobs)
        for vc in vcs
        for load in args.loads
        for seed in range(args.seeds)
        for p in args.policies
    ]
    merged: dict[tuple[str, float, int], dict[str, Any]] = {}
    for r in pool.map(_vc_run, tasks):
        merged.setdefault((r["vc"], r["load"], r["seed"]), {}).update(r["policies"])
    rows, summary = [], []
    for vc in vcs:
        for load in args.loads:
            runs = [merged[(vc, load, s)] for s in range(args.seeds)]

            def mean(p: str, key: str, runs: list[dict[str, Any]] = runs) -> float:
                return statistics.mean(r[p][key] for r in runs)

            base = [p for p in NON_ORACLE_BASELINES if p in args.policies]
            best = min(base, key=lambda p: mean(p, "avg_jct_s"))
            per_seed = [
                r["gpufleet"]["avg_jct_s"] / min(r[p]["avg_jct_s"] for p in base) for r in runs
            ]
            g = "gpufleet"
            entry = {
                "vc": vc,
                "load": load,
                "best_baseline": best,
                "avg_jct_s": {p: mean(p, "avg_jct_s") for p in args.policies},
                "vs_fifo": mean(g, "avg_jct_s") / mean("fifo", "avg_jct_s"),
                "vs_best": mean(g, "avg_jct_s") / mean(best, "avg_jct_s"),
                "vs_best_per_seed": per_seed,
                "p99q": (mean(g, "p99_queue_s"), mean("easy", "p99_queue_s")),
                "big_wait": (mean(g, "max_wait_large_s"), mean("easy", "max_wait_large_s")),
                "oom": {p: sum(r[p]["oom_failures"] for r in runs) for p in args.policies},
                "refused": sum(r[g]["refused_jobs"] for r in runs),
                "unfinished": sum(r[g]["unfinished_jobs"] for r in runs),
            }
            summary.append(entry)
            rows.append(
                [vc, f"{load:g}"]
                + [f"{entry['avg_jct_s'][p] / 3600:.2f}" for p in args.policies]
                + [
                    f"{entry['vs_fifo']:.2f}",
                    f"{entry['vs_best']:.2f} ({best})",
                    f"{min(per_seed):.2f}-{max(per_seed):.2f}",
                    f"{entry['p99q'][0] / 3600:.1f}/{entry['p99q'][1] / 3600:.1f}",
                    f"{entry['big_wait'][0] / 3600:.1f}/{entry['big_wait'][1] / 3600:.1f}",
                    f"{entry['oom'][g]}/{entry['oom']['fifo']}",
                    f"{entry['refused']}",
                    f"{entry['unfinished']}",
                ]
            )
    header = (
        ["vc", "load"]
        + [f"{p} h" for p in args.policies]
        + [
            "g/FIFO",
            "g/best",
            "g/best seeds",
            "p99q h g/easy",
            "8+GPU max wait h g/easy",
            "OOM g/fifo",
            "refused",
            "unfinished",
        ]
    )
    _table(
        f"{label}: avg JCT (h), mean over {args.seeds} seed(s); realistic cost model; cluster "
        f"{args.cluster}; first {args.max_jobs} jobs per VC; sjf is an oracle study; best: the "
        f"best of {','.join(p for p in NON_ORACLE_BASELINES if p in args.policies)}",
        header,
        rows,
    )
    _cost_table(label, args.policies, list(merged.values()))
    return summary


def _cost_table(label: str, policies: list[str], runs: list[dict[str, Any]]) -> None:
    """CPU seconds per run of each policy (one process per run), and the LP policies' solves."""
    rows = []
    for p in policies:
        got = [r[p] for r in runs if p in r]
        cpu = [g["cpu_s"] for g in got if "cpu_s" in g]
        row = [
            p,
            str(len(got)),
            f"{statistics.mean(cpu):.1f}" if cpu else "",
            f"{max(cpu):.1f}" if cpu else "",
        ]
        lp = [g for g in got if "lp_solves" in g]
        if lp:
            solves = sum(g["lp_solves"] for g in lp)
            solve_cpu = sum(g["lp_cpu_s"] for g in lp)
            row += [
                f"{solves / len(lp):.0f}",
                f"{1e3 * solve_cpu / max(solves, 1):.1f}",
                f"{max(g['lp_max_ms'] for g in lp):.0f}",
                f"{max(g['lp_largest_jobs'] for g in lp)}",
                f"{100 * solve_cpu / max(sum(cpu), 1e-9):.0f}%" if cpu else "",
            ]
        else:
            row += ["", "", "", "", ""]
        rows.append(row)
    _table(
        f"{label}: CPU per run (process time of the run, the machine shared) and the Gavel LPs' "
        "solves (HiGHS; solved at a round only when the jobs in play changed)",
        [
            "policy",
            "runs",
            "CPU s/run",
            "max CPU s",
            "LP solves/run",
            "ms/solve",
            "max ms",
            "largest LP (jobs)",
            "LP share of CPU",
        ],
        rows,
    )


def predictor_section(args: argparse.Namespace) -> dict[str, Any]:
    from gpufleet.sched.predictor import (
        LastSameShapePredictor,
        OnlineRuntimePredictor,
        VcMedianPredictor,
        evaluate_online,
    )
    from gpufleet.sched.simjob import SimJob
    from gpufleet.sched.trace import read_philly

    trace = read_philly(DATA / "philly_jobs.csv")
    by_vc: dict[str, list[tuple[float, float, SimJob]]] = {}
    for i, row in enumerate(trace):
        job = SimJob(i, row.submit_seconds, row.num_gpus, "", {}, vc=row.vc)
        by_vc.setdefault(row.vc, []).append((row.submit_seconds, row.duration_seconds, job))
    predictors = {
        "online": OnlineRuntimePredictor,
        "vc median": VcMedianPredictor,
        "last same shape": LastSameShapePredictor,
    }
    rows, out = [], {}
    for vc, items in sorted(by_vc.items(), key=lambda kv: -len(kv[1])):
        if len(items) < 100:
            continue
        res = evaluate_online(items, predictors)
        out[vc] = res
        for name, m in res.items():
            rows.append(
                [
                    vc,
                    str(len(items)),
                    name,
                    f"{m['mape_pct']:.0f}",
                    f"{m['median_ape_pct']:.0f}",
                    f"{m['spearman']:.2f}",
                ]
            )
    _table(
        "runtime predictor, online (each job predicted at submission from the jobs finished by "
        "then); Philly has no users or models",
        ["vc", "jobs", "predictor", "MAPE %", "median APE %", "Spearman"],
        rows,
    )
    return out


def steptime_section() -> dict[str, Any]:
    """The step-time predictor (benchmark table): pair-held-out MAPE with the shipped weights,
    and nested (weights chosen per held-out pair by an inner leave-one-pair-out)."""
    from gpufleet.sched.evaluate import alone_error, nested_pair_error
    from gpufleet.sched.gavel import bench_rows, load_gavel

    rows = bench_rows(load_gavel(DATA / "gavel_throughputs.json"))
    shipped = alone_error(rows, "pair", "neighbors")
    nested = nested_pair_error(rows)
    _table(
        "step-time predictor: each (model, GPU model) pair held out (target MAPE < 15%)",
        ["evaluation", "pairs", "MAPE %"],
        [
            ["shipped weights", str(shipped["held_out"]), f"{shipped['mape_pct']:.1f}"],
            ["nested", str(nested["held_out"]), f"{nested['mape_pct']:.1f}"],
        ],
    )
    return {"shipped": shipped, "nested": nested}


class _OutOfTime(Exception):
    pass


def _speed_run(task: tuple[str, str, float | None]) -> dict[str, Any]:
    from gpufleet.sched.cluster import parse_cluster
    from gpufleet.sched.gavel import load_gavel
    from gpufleet.sched.runner import Experiment
    from gpufleet.sched.trace import read_philly

    policy, cluster, cpu_limit = task
    gavel = load_gavel(DATA / "gavel_throughputs.json")
    experiment = Experiment(read_philly(DATA / "philly_jobs.csv"), parse_cluster(cluster), gavel)
    cpu = time.process_time()
    wall = time.perf_counter()
    finished = [0, 0]

    def progress(name: str, done: int, total: int) -> None:
        finished[:] = [done, total]
        if cpu_limit is not None and time.process_time() - cpu > cpu_limit:
            raise _OutOfTime

    try:
        summary, _ = experiment.run([policy], on_progress=progress)[policy]
    except _OutOfTime:
        return {
            "policy": policy,
            "stopped": True,
            "jobs": finished[1],
            "finished_jobs": finished[0],
            "sim_wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
        }
    return dict(summary, policy=policy, stopped=False, cpu_s=time.process_time() - cpu)


def speed(args: argparse.Namespace, pool: ProcessPoolExecutor) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(["fifo", *args.policies]))
    tasks = [(p, args.cluster, args.cpu_limit) for p in names]
    results = list(pool.map(_speed_run, tasks))
    fifo = next(r for r in results if r["policy"] == "fifo")
    rows = []
    for r in results:
        over = ">" if r["stopped"] else ""
        rows.append(
            [
                r["policy"],
                str(r["jobs"]),
                f"{over}{r['sim_wall_s']:.1f}",
                f"{over}{r['cpu_s']:.1f}",
                f"{over}{r['cpu_s'] / fifo['cpu_s']:.1f}" if not fifo["stopped"] else "",
                f"stopped, {r['finished_jobs']} finished"
                if r["stopped"]
                else str(r["unfinished_jobs"]),
                "" if r["stopped"] else str(r["refused_jobs"]),
            ]
        )
    _table(
        f"speed: whole philly_jobs.csv, cluster {args.cluster}, realistic, load 1.0 "
        "(target < 30 s wall for one policy; wall s is the simulation's, cpu s the process's; "
        "x FIFO: CPU s over FIFO's in the same run, the same machine's baseline)",
        ["policy", "jobs", "wall s", "cpu s", "x FIFO", "unfinished", "refused"],
        rows,
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cluster", default="v100:32,p100:32,k80:32")
    parser.add_argument(
        "--section",
        choices=["all", "reference", "quality", "heldout", "predictor", "steptime", "speed"],
        default="all",
    )
    parser.add_argument("--policies", default=REALISTIC_POLICIES)
    parser.add_argument("--vcs", default=TRAINING_VCS, help="training VCs")
    parser.add_argument("--heldout-vcs", default=HELDOUT_VCS)
    parser.add_argument("--loads", default="0.8,1.0,1.5")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cpu-limit",
        type=float,
        help="speed: stop a policy's run after this many CPU seconds (reported as '>').",
    )
    parser.add_argument("--json", type=Path, help="Also write all figures here.")
    args = parser.parse_args()
    args.policies = args.policies.split(",")
    args.loads = [float(x) for x in args.loads.split(",")]
    started = time.perf_counter()
    out: dict[str, Any] = {"cluster": args.cluster, "seeds": args.seeds, "loads": args.loads}
    with ProcessPoolExecutor(args.workers) as pool:
        if args.section in ("all", "reference"):
            out["reference"] = reference(args, pool)
        if args.section in ("all", "quality"):
            out["quality"] = quality(args, pool, args.vcs.split(","), "training VCs")
        if args.section in ("all", "heldout"):
            out["heldout"] = quality(args, pool, args.heldout_vcs.split(","), "held-out VCs")
        if args.section in ("all", "speed"):
            out["speed"] = speed(args, pool)
    if args.section in ("all", "predictor"):
        out["predictor"] = predictor_section(args)
    if args.section in ("all", "steptime"):
        out["steptime"] = steptime_section()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
