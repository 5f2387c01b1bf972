"""GPU-sharing placement benchmark (issue 19): prints the figures as tables.

    nice -n 10 .venv/bin/python bench/frag_bench.py                      # 1,200 nodes, seeds 21-25
    nice -n 10 .venv/bin/python bench/frag_bench.py --seeds 2 --nodes 400 # quicker
    nice -n 10 .venv/bin/python bench/frag_bench.py --section speed

Sections:
- quality: for each seed a synthetic Alibaba-format trace (``generate_trace``: heterogeneous
  nodes, ~40% sharing pods, multi-GPU and CPU-only pods) in three scenarios: "constrained" (a
  third of the GPU pods accept only some GPU models, the generator's default), "unconstrained"
  (no type constraints), and "constrained-sorted" (constrained, the node list sorted by GPU model
  as an inventory lists it instead of the generator's random order); FGD's workload inflation
  (pods drawn from the trace until the GPU they ask for reaches 130% of capacity, none leaves). Per policy, mean and spread (sd, min..max) over
  seeds of: the arrived workload at the first failure of a pod that fits the empty cluster, the
  unallocated GPU share then, and at 100% arrived the unallocated and fragmented GPU shares and the
  fragmentation rate. Then each FGD-style policy against the best baseline of the same seed
  (first-fit, best-fit, gpu-packing, gpu-clustering, random-fit): the reduction of unallocated
  GPUs, per seed. No parameter is tuned here: fgd, fgd-usable and fgd-pool run with the first
  values written down (window 2,000, refresh 200, 32 classes, pool weight 1; fgd-usable and
  fgd-pool were designed looking at seed 0, seeds 1-3 then served as their held-out check);
  fgd-barrier's settings (window 8,000, 128 classes, barrier one pod, class weights p^0.5, exact
  ties to nodes in use) were chosen on training seeds 11-15. The default seeds 21-25 are held
  out: run once with the chosen settings (2026-12-04).
- speed: 8,000 pods (the trace's own pods, in order) on 1,200 nodes through each policy; wall and
  CPU seconds (target < 10 s) and the CPU ratio to first-fit measured in the same run.

``--plot PATH`` writes the allocated-vs-arrived chart of the first seed's constrained scenario.
``--variant NAME=BASE:KEY=VALUE,...`` adds an FGD-style policy: BASE's settings
(``share.FGD_SETTINGS``) with the keys given replaced (``FragmentationAware``'s arguments), e.g.
``--variant no-pack=fgd-barrier:prefer_used=False``; it is compared like the FGD variants.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from gpufleet.sched.alibaba import generate_trace, node_specs
from gpufleet.sched.share import (
    FGD_SETTINGS,
    POLICIES,
    FragmentationAware,
    ShareCluster,
    SharePolicy,
    make_policy,
)
from gpufleet.sched.sharesim import InflationResult, inflate, plot_allocation, run_inflation

BASELINES = ["first-fit", "best-fit", "gpu-packing", "gpu-clustering", "random-fit"]
FGD = [p for p in POLICIES if p.startswith("fgd")]
METRICS = [
    ("1st fail at %", "first_failure_arrived_ratio"),
    ("unalloc there %", "unallocated_share_at_first_failure"),
    ("unalloc 100% %", "unallocated_share_at_full"),
    ("frag 100% %", "fragmented_share_at_full"),
    ("frag rate %", "fragmentation_rate_at_full"),
]


VARIANTS: dict[str, dict[str, Any]] = {}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=BASE:KEY=VALUE,...`` -> (NAME, settings); values are Python literals."""
    name, sep, rest = text.partition("=")
    base, _, overrides = rest.partition(":")
    if not sep or not name or base not in FGD_SETTINGS:
        raise SystemExit(
            f"error: --variant {text!r}: expected NAME=BASE:KEY=VALUE,... with BASE one of "
            f"{', '.join(FGD_SETTINGS)}"
        )
    settings = dict(FGD_SETTINGS[base])
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(
                f"error: --variant {text!r}: {key}={value!r} is not a literal"
            ) from None
    try:
        FragmentationAware(name=name, **settings)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: --variant {text!r}: {exc}") from None
    return name, settings


def policy_by_name(name: str, seed: int) -> SharePolicy:
    if name in VARIANTS:
        return FragmentationAware(name=name, **VARIANTS[name])
    return make_policy(name, seed)


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()


def _spread(values: list[float | None]) -> str:
    xs = [v * 100 for v in values if v is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ±{statistics.stdev(xs):.2f} [{min(xs):.2f}..{max(xs):.2f}]"


def quality(
    args: argparse.Namespace, scenario: str, constrained: float, sort_nodes: bool = False
) -> dict[str, Any]:
    runs: dict[str, list[InflationResult]] = {p: [] for p in args.policies}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        nodes, pods = generate_trace(
            args.nodes, args.pods, seed=seed, constrained_share=constrained
        )
        if sort_nodes:  # the node list in the order an inventory lists it: by GPU model
            nodes = sorted(nodes, key=lambda n: (n.gpu_model, n.sn))
        specs = node_specs(nodes)
        capacity = ShareCluster(specs).gpu_capacity_milli
        requests = inflate([p.request for p in pods], capacity, args.inflate, seed=1000 + seed)
        for policy in args.policies:
            result = run_inflation(specs, requests, policy_by_name(policy, seed))
            runs[policy].append(result)
            print(
                f"  [{scenario} seed {seed}] {policy}: {result.wall_seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
        if seed == seeds[0] and args.plot and scenario == "constrained":
            plot_allocation([runs[p][0] for p in args.policies], args.plot)
    rows = [
        [p, *[_spread([getattr(r, key) for r in runs[p]]) for _, key in METRICS]]
        for p in args.policies
    ]
    _table(
        f"{scenario}: {args.nodes} nodes, {args.pods}-pod traces, inflation to "
        f"{args.inflate * 100:.0f}%, seeds {seeds[0]}-{seeds[-1]} (mean ±sd [min..max], "
        "% of GPU capacity)",
        ["policy", *[h for h, _ in METRICS]],
        rows,
    )
    baselines = [p for p in BASELINES if p in runs]
    rows = []
    for fgd in [p for p in runs if p in FGD or p in VARIANTS]:
        for _label, key in METRICS[1:3]:
            reductions = []
            for i in range(len(seeds)):
                best = min(
                    (getattr(runs[b][i], key) for b in baselines),
                    key=lambda v: 1.0 if v is None else v,
                )
                mine = getattr(runs[fgd][i], key)
                if best and mine is not None:
                    reductions.append(1 - mine / best)
            rows.append(
                [
                    fgd,
                    key,
                    _spread(reductions),
                    " ".join(f"{r * 100:+.0f}" for r in reductions),
                ]
            )
    if baselines:
        _table(
            f"{scenario}: fewer unallocated GPUs than the best baseline of the same seed "
            "(% reduction; negative = more; target >= 49)",
            ["policy", "measure", "mean ±sd [min..max]", "per seed"],
            rows,
        )
    return {p: [r.as_dict() for r in rs] for p, rs in runs.items()}


def speed(args: argparse.Namespace) -> None:
    nodes, pods = generate_trace(1200, 8000, seed=0)
    specs = node_specs(nodes)
    requests = [p.request for p in pods]
    cpus: dict[str, float] = {}
    rows = []
    for policy in args.policies:
        started, cpu = time.perf_counter(), time.process_time()
        result = run_inflation(specs, requests, policy_by_name(policy, 0))
        cpus[policy] = time.process_time() - cpu
        wall = time.perf_counter() - started
        rows.append([policy, f"{wall:.2f}", f"{cpus[policy]:.2f}", str(result.failed_pods)])
    base = cpus.get("first-fit")
    for row in rows:
        row.append(f"{cpus[row[0]] / base:.1f}x" if base else "-")
        row.append("yes" if cpus[row[0]] < 10 else "NO")
    _table(
        "speed: 8,000 pods on 1,200 nodes (one run each, one process; the machine is shared, "
        "so CPU seconds say more than wall seconds)",
        ["policy", "wall s", "CPU s", "failed pods", "CPU vs first-fit", "CPU < 10 s"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--section", choices=["quality", "speed", "all"], default="all")
    parser.add_argument("--nodes", type=int, default=1200)
    parser.add_argument("--pods", type=int, default=8000, help="pods in each generated trace")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=21,
        help="21-25 are held out; 0-3 and 11-15 were looked at while designing the FGD variants",
    )
    parser.add_argument("--inflate", type=float, default=1.3)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--scenarios",
        default="constrained,unconstrained,constrained-sorted",
        help="constrained, unconstrained, constrained-sorted (node list sorted by GPU model)",
    )
    parser.add_argument("--plot", type=Path, help="write the allocation chart (PNG) here")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=BASE:KEY=VALUE,...",
        help="an FGD-style policy with BASE's settings and these replaced (repeatable)",
    )
    args = parser.parse_args()
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    VARIANTS.update(parse_variant(v) for v in args.variant)
    args.policies += [v for v in VARIANTS if v not in args.policies]
    unknown = [p for p in args.policies if p not in POLICIES and p not in VARIANTS]
    if unknown:
        parser.error(f"unknown policies {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
    started = time.perf_counter()
    if args.section in ("quality", "all"):
        shares = {"constrained": 1 / 3, "unconstrained": 0.0, "constrained-sorted": 1 / 3}
        for scenario in args.scenarios.split(","):
            quality(args, scenario, shares[scenario], sort_nodes=scenario.endswith("-sorted"))
    if args.section in ("speed", "all"):
        speed(args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
