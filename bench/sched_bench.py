"""Scheduling benchmark: prints the figures of issue 6 as tables.

    .venv/bin/python bench/sched_bench.py                 # everything (long: ~1 h on 2 cores)
    .venv/bin/python bench/sched_bench.py --quick         # 1 seed, loads 1.0 only
    .venv/bin/python bench/sched_bench.py --section speed

Sections:
- speed: all of philly_jobs.csv through each policy (cluster --cluster, load 1.0, seed 0);
  wall seconds and jobs simulated per second (target: under 60 s each).
- quality: VCs 6214e9, 11cb48, 2869ce at loads 0.8/1.0/1.5, seeds 0-2: mean over seeds of avg JCT
  and p99 queueing per policy, OOM and unfinished counts, and gpufleet's ratios (targets:
  avg JCT <= 0.5x FIFO and <= 0.9x the best non-oracle baseline, p99 queue <= EASY's, zero OOM,
  zero unfinished).
- heldout: the same on VCs not used while designing the policy (103959, 0e4a51, ed69ec).
- predictor: pair-held-out MAPE of the neighbour step-time predictor with the shipped weights, and
  nested (weights chosen per held-out pair by an inner leave-one-pair-out that never sees it).
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
POLICIES = ["fifo", "sjf", "easy", "tiresias", "gavel", "gpufleet"]
NON_ORACLE = ["easy", "tiresias", "gavel"]


def _run(task: tuple[str, list[str] | None, float, int, list[str], str]) -> dict[str, Any]:
    from gpufleet.sched.cluster import parse_cluster
    from gpufleet.sched.gavel import bench_rows, load_gavel
    from gpufleet.sched.predictor import Predictor
    from gpufleet.sched.runner import Experiment
    from gpufleet.sched.trace import read_philly

    trace_path, vcs, load, seed, policies, cluster = task
    gavel = load_gavel(DATA / "gavel_throughputs.json")
    rows = bench_rows(gavel)
    trace = read_philly(trace_path, vcs)
    experiment = Experiment(trace, parse_cluster(cluster), gavel, load=load, seed=seed)
    predictor = Predictor(rows)
    out: dict[str, Any] = {}
    for policy in policies:
        cpu = time.process_time()
        results = experiment.run([policy], predictor)
        out[policy] = dict(results[policy][0], cpu_s=time.process_time() - cpu)
    return {"vcs": vcs, "load": load, "seed": seed, "policies": out}


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()


def speed(args: argparse.Namespace, pool: ProcessPoolExecutor) -> dict[str, Any]:
    tasks = [(str(args.trace), None, 1.0, 0, [p], args.cluster) for p in args.policies]
    out = {}
    rows = []
    for result in pool.map(_run, tasks):
        for name, m in result["policies"].items():
            out[name] = m
            ok = "yes" if m["sim_wall_s"] < 60 else "NO"
            rows.append(
                [
                    name,
                    str(m["jobs"]),
                    f"{m['sim_wall_s']:.1f}",
                    f"{m['jobs_per_second']:.0f}",
                    ok,
                    str(m["unfinished_jobs"]),
                    f"{m['cpu_s']:.1f}",
                ]
            )
    # wall s: the simulation alone; cpu s: this process's CPU time for the policy, building the
    # jobs included (steadier than wall time when other work shares the cores)
    _table(
        f"speed: whole trace, cluster {args.cluster}, load 1.0 (target < 60 s per policy)",
        ["policy", "jobs", "wall s", "jobs/s", "<60s", "unfinished", "cpu s"],
        rows,
    )
    return out


def quality(
    args: argparse.Namespace, pool: ProcessPoolExecutor, vcs: list[str], label: str
) -> list[dict[str, Any]]:
    tasks = [
        (str(args.trace), [vc], load, seed, args.policies, args.cluster)
        for vc in vcs
        for load in args.loads
        for seed in range(args.seeds)
    ]
    results = list(pool.map(_run, tasks))
    summary = []
    rows = []
    for vc in vcs:
        for load in args.loads:
            runs = [r for r in results if r["vcs"] == [vc] and r["load"] == load]

            def mean(policy: str, key: str, runs: list[dict[str, Any]] = runs) -> float:
                return statistics.mean(r["policies"][policy][key] for r in runs)

            jct = {p: mean(p, "avg_jct_s") for p in args.policies}
            p99q = {p: mean(p, "p99_queue_s") for p in args.policies}
            baselines = [p for p in NON_ORACLE if p in jct]
            best = min(baselines, key=lambda p: jct[p]) if baselines else None
            g = "gpufleet"
            entry = {
                "vc": vc,
                "load": load,
                "avg_jct_s": jct,
                "p99_queue_s": p99q,
                "oom": {
                    p: sum(r["policies"][p]["oom_failures"] for r in runs) for p in args.policies
                },
                "unfinished": {
                    p: sum(r["policies"][p]["unfinished_jobs"] for r in runs) for p in args.policies
                },
            }
            if g in jct:
                entry["jct_vs_fifo"] = jct[g] / jct["fifo"] if "fifo" in jct else None
                entry["jct_vs_best"] = jct[g] / jct[best] if best else None
                entry["best_baseline"] = best
                entry["p99q_vs_easy"] = p99q[g] / p99q["easy"] if p99q.get("easy") else None
            summary.append(entry)
            row = [vc, f"{load:g}"] + [f"{jct[p] / 3600:.2f}" for p in args.policies]
            if g in jct:
                row += [
                    f"{entry['jct_vs_fifo']:.2f}" if entry.get("jct_vs_fifo") else "-",
                    f"{entry['jct_vs_best']:.2f} ({best})" if entry.get("jct_vs_best") else "-",
                    f"{p99q[g] / 3600:.1f}/{p99q.get('easy', 0) / 3600:.1f}",
                    f"{entry['p99q_vs_easy']:.2f}" if entry.get("p99q_vs_easy") else "-",
                    f"{entry['oom'][g]}/{entry['oom'].get('fifo', '-')}",
                    str(entry["unfinished"][g]),
                ]
            rows.append(row)
    header = ["vc", "load"] + [f"{p} JCT h" for p in args.policies]
    if "gpufleet" in args.policies:
        header += ["vs FIFO", "vs best", "p99q h g/easy", "p99q ratio", "OOM g/fifo", "unfin g"]
    _table(f"{label}: mean over {args.seeds} seed(s), cluster {args.cluster}", header, rows)
    return summary


def predictor_section() -> dict[str, Any]:
    from gpufleet.sched.evaluate import alone_error, nested_pair_error
    from gpufleet.sched.gavel import bench_rows, load_gavel

    rows = bench_rows(load_gavel(DATA / "gavel_throughputs.json"))
    shipped = alone_error(rows, "pair", "neighbors")
    nested = nested_pair_error(rows)
    top = list(nested["chosen"].items())[:3]
    _table(
        "predictor: step time, each (model, GPU model) pair held out (target MAPE < 15%)",
        ["evaluation", "pairs", "MAPE %"],
        [
            [
                "shipped weights (chosen by LOO on all pairs)",
                str(shipped["held_out"]),
                f"{shipped['mape_pct']:.1f}",
            ],
            [
                "nested: weights chosen without the held-out pair",
                str(nested["held_out"]),
                f"{nested['mape_pct']:.1f}",
            ],
        ],
    )
    print(f"inner choices ({', '.join(nested['grid_columns'])}): {top}")
    return {"shipped": shipped, "nested": nested}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trace", type=Path, default=DATA / "philly_jobs.csv")
    parser.add_argument("--cluster", default="v100:32,p100:32,k80:32")
    parser.add_argument(
        "--section", choices=["all", "speed", "quality", "heldout", "predictor"], default="all"
    )
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--vcs", default="6214e9,11cb48,2869ce")
    parser.add_argument("--heldout-vcs", default="103959,0e4a51,ed69ec")
    parser.add_argument("--loads", default="0.8,1.0,1.5")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 seed, load 1.0")
    parser.add_argument("--json", type=Path, help="Also write all figures here.")
    args = parser.parse_args()
    args.policies = args.policies.split(",")
    args.loads = [float(x) for x in args.loads.split(",")]
    if args.quick:
        args.seeds, args.loads = 1, [1.0]
    started = time.perf_counter()
    out: dict[str, Any] = {"cluster": args.cluster, "seeds": args.seeds, "loads": args.loads}
    with ProcessPoolExecutor(args.workers) as pool:
        if args.section in ("all", "speed"):
            out["speed"] = speed(args, pool)
        if args.section in ("all", "quality"):
            out["quality"] = quality(args, pool, args.vcs.split(","), "quality")
        if args.section in ("all", "heldout"):
            out["heldout"] = quality(args, pool, args.heldout_vcs.split(","), "held-out VCs")
    if args.section in ("all", "predictor"):
        out["predictor"] = predictor_section()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
