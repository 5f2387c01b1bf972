"""``gpufleet simulate`` on Alibaba-format GPU-sharing traces: the edge (files, terminal) of the
share placement core. ``sched/cli.py`` hands over here when ``--nodes`` or ``--synthetic`` is given.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from gpufleet.errors import GpufleetError
from gpufleet.sched.share import POLICIES


def parse_synthetic(text: str) -> tuple[int, int]:
    try:
        nodes, pods = (int(x) for x in text.split(":"))
    except ValueError:
        raise GpufleetError(
            f"--synthetic: cannot read {text!r}; expected NODES:PODS", hint="--synthetic 1000:8000"
        ) from None
    if nodes <= 0 or pods <= 0:
        raise GpufleetError("--synthetic: counts must be positive", hint="--synthetic 1000:8000")
    return nodes, pods


def share_policies(text: str | None) -> list[str]:
    names = [p.strip() for p in (text or ",".join(POLICIES)).split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise GpufleetError(
            f"--policies: unknown share policy {', '.join(unknown) or '(none)'}",
            hint=f"--policies {','.join(POLICIES)}",
        )
    return names


def simulate_shares(
    *,
    pods_path: str | None,
    nodes_path: str | None,
    synthetic: str | None,
    write_trace: str | None,
    policies: str | None,
    inflate_ratio: float,
    replay: bool,
    seed: int,
    unknown_gpu: str | None,
    plots_dir: str | None,
    as_json: bool,
    progress: Callable[[bool], Any],
) -> None:
    from gpufleet.sched.alibaba import (
        TraceFormatError,
        generate_trace,
        node_specs,
        read_nodes,
        read_pods,
        write_nodes,
        write_pods,
    )
    from gpufleet.sched.gpumodels import UnknownGpuModelError
    from gpufleet.sched.share import ShareCluster, make_policy
    from gpufleet.sched.sharesim import (
        inflate,
        plot_allocation,
        plot_allocation_over_time,
        run_inflation,
        run_replay,
    )

    names = share_policies(policies)
    if inflate_ratio <= 0:
        raise GpufleetError("--inflate: must be positive", hint="--inflate 1.3")
    if synthetic:
        num_nodes, num_pods = parse_synthetic(synthetic)
        nodes, pods = generate_trace(num_nodes, num_pods, seed)
        source = f"synthetic {num_nodes} nodes, {num_pods} pods, seed {seed}"
    else:
        if not (pods_path and nodes_path):
            raise GpufleetError(
                "an Alibaba-format simulation needs the pod list and the node list",
                hint="gpufleet simulate --trace pods.csv --nodes nodes.csv "
                "(or --synthetic 1000:8000)",
            )
        try:
            nodes, pods = read_nodes(nodes_path), read_pods(pods_path)
        except TraceFormatError as exc:
            raise GpufleetError(
                str(exc), hint="the columns are described in docs/scheduler.md"
            ) from None
        source = f"{pods_path} on {nodes_path}"
    if write_trace:
        out = Path(write_trace)
        out.mkdir(parents=True, exist_ok=True)
        write_nodes(nodes, out / "nodes.csv")
        write_pods(pods, out / "pods.csv")
        click.echo(f"wrote {out / 'nodes.csv'} and {out / 'pods.csv'}", err=True)
    if not pods or not nodes:
        raise GpufleetError("the trace has no pods or no nodes", hint="check the trace files")
    try:
        specs = node_specs(nodes, fallback=unknown_gpu)
    except UnknownGpuModelError as exc:
        raise GpufleetError(
            str(exc), hint="--unknown-gpu v100 treats every unknown GPU model as a V100"
        ) from None
    capacity = ShareCluster(specs).gpu_capacity_milli
    if capacity == 0:
        raise GpufleetError("the node list has no GPU", hint="check the node list's gpu column")
    summary: dict[str, Any] = {
        "trace": source,
        "nodes": len(specs),
        "gpus": capacity // 1000,
        "pods": len(pods),
        "seed": seed,
        "mode": "replay" if replay else "inflation",
        "policies": {},
    }
    show = sys.stderr.isatty()
    if replay:
        timed = [(p.creation_seconds, p.deletion_seconds, p.request) for p in pods]
        replays = []
        with progress(show) as bar:
            task = bar.add_task("replay", total=len(names))
            for name in names:
                replayed = run_replay(specs, timed, make_policy(name, seed))
                replays.append(replayed)
                summary["policies"][name] = {
                    "placed_pods": replayed.placed_pods,
                    "failed_pods": replayed.failed_pods,
                    "mean_allocation_rate": replayed.mean_allocation_rate,
                    "wall_s": replayed.wall_seconds,
                }
                bar.update(task, advance=1, description=name)
        if plots_dir:
            directory = _curves_csv(
                plots_dir,
                "allocation_over_time",
                "time_s",
                [(rr.policy, rr.allocation) for rr in replays],
                x_format="{}",
            )
            summary["plots"] = [
                str(directory / "allocation_over_time.csv"),
                plot_allocation_over_time(replays, directory / "allocation_over_time.png"),
            ]
    else:
        try:
            requests = inflate([p.request for p in pods], capacity, inflate_ratio, seed)
        except ValueError as exc:
            raise GpufleetError(str(exc), hint="use a pod list with GPU pods") from None
        summary["arrivals"] = len(requests)
        summary["inflate"] = inflate_ratio
        results = []
        with progress(show) as bar:
            tasks = {n: bar.add_task(n, total=len(requests)) for n in names}
            for name in names:
                task = tasks[name]

                def advance(done: int, _total: int, task: Any = task) -> None:
                    bar.update(task, completed=done)

                r = run_inflation(specs, requests, make_policy(name, seed), on_progress=advance)
                bar.update(tasks[name], completed=len(requests))
                results.append(r)
                summary["policies"][name] = {
                    k: v for k, v in r.as_dict().items() if k not in ("curve", "policy")
                }
        if plots_dir:
            directory = _curves_csv(
                plots_dir, "allocation", "arrived_share", [(r.policy, r.curve) for r in results]
            )
            summary["plots"] = [
                str(directory / "allocation.csv"),
                plot_allocation(results, directory / "allocation.png"),
            ]
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_share_table(summary)


def _curves_csv(
    plots_dir: str,
    stem: str,
    x_name: str,
    curves: list[tuple[str, list[tuple[float, float]]]],
    x_format: str = "{:.5f}",
) -> Path:
    """Write ``<stem>.csv`` (policy, x, allocated share) under ``plots_dir``; return the dir."""
    directory = Path(plots_dir)
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"policy,{x_name},allocated_share"]
    for policy, points in curves:
        lines += [f"{policy},{x_format.format(x)},{y:.5f}" for x, y in points]
    (directory / f"{stem}.csv").write_text("\n".join(lines) + "\n")
    return directory


def _pct(value: object) -> str:
    return "-" if value is None else f"{float(value) * 100:.2f}"  # type: ignore[arg-type]


def print_share_table(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from gpufleet.termtable import print_table

    title = f"{summary['trace']}: {summary['nodes']} nodes, {summary['gpus']} GPUs"
    table = Table(title=title)
    table.add_column("policy", no_wrap=True, min_width=14)
    columns: Sequence[tuple[str, str, Callable[[object], str]]]
    if summary["mode"] == "replay":
        columns = [
            ("placed", "placed_pods", str),
            ("failed", "failed_pods", str),
            ("mean GPU alloc %", "mean_allocation_rate", _pct),
            ("wall s", "wall_s", lambda v: f"{float(v):.2f}"),  # type: ignore[arg-type]
        ]
    else:
        columns = [
            ("1st fail at %", "first_failure_arrived_ratio", _pct),
            ("unalloc there %", "unallocated_share_at_first_failure", _pct),
            ("unalloc 100% %", "unallocated_share_at_full", _pct),
            ("frag 100% %", "fragmented_share_at_full", _pct),
            ("frag rate %", "fragmentation_rate_at_full", _pct),
            ("failed", "failed_pods", str),
            ("wall s", "wall_seconds", lambda v: f"{float(v):.2f}"),  # type: ignore[arg-type]
        ]
    for title_, _, _ in columns:
        table.add_column(title_, justify="right")
    for name, m in summary["policies"].items():
        table.add_row(name, *[fmt(m[key]) for _, key, fmt in columns])
    print_table(table)
    if summary["mode"] != "replay":
        click.echo(
            f"{summary['arrivals']} pods drawn (seed {summary['seed']}) until the GPUs they ask "
            f"for reach {summary['inflate'] * 100:.0f}% of capacity; none leaves. % of the GPU "
            "capacity: 1st fail at = arrived workload when a pod that fits the empty cluster first "
            "fails, unalloc there = GPU left unallocated then; at 100% arrived: unallocated, "
            "fragmented (FGD's measure), frag rate = fragmented / unallocated."
        )
