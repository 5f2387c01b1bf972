"""``gpufleet simulate`` and ``gpufleet predictor``: the edges (files, terminal) of the core."""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gpufleet.errors import GpufleetError

if TYPE_CHECKING:  # annotations only: rich is imported when a command runs
    from rich.progress import Progress

DEFAULT_POLICIES = "fifo,easy,tiresias,gavel,gpufleet,sjf"


def _no_jobs(trace_path: str, filtered: bool) -> GpufleetError:
    """The error for a trace with no job left: empty, or emptied by the filters (then the
    virtual clusters it does hold, biggest first, for the hint)."""
    from collections import Counter

    from gpufleet.sched.trace import read_philly

    if not filtered:
        return GpufleetError(
            f"{trace_path}: the trace holds no jobs (only a header?)",
            hint="give a trace with one job per row: timestamp,duration,num_gpus,cluster",
        )
    sizes = Counter(job.vc for job in read_philly(trace_path))
    held = ", ".join(f"{vc} ({n} jobs)" for vc, n in sizes.most_common(8)) or "none"
    example = sizes.most_common(1)[0][0] if sizes else "6214e9"
    return GpufleetError(
        f"no jobs left after filtering by --vc/--start/--end; the trace's virtual clusters: {held}",
        hint=f"gpufleet simulate --trace {trace_path} --vc {example}",
    )


def _gavel_path(explicit: str | None, trace: str | None) -> Path:
    """--gavel; else a gavel_throughputs.json beside the trace; else the copy gpufleet ships."""
    from gpufleet.sched.gavel import PACKAGED_GAVEL

    if explicit:
        return Path(explicit)
    guess = Path(trace).with_name("gavel_throughputs.json") if trace else None
    if guess and guess.exists():
        return guess
    return PACKAGED_GAVEL


def _date(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        raise GpufleetError(
            f"{option}: not a date: {value!r}", hint=f"{option} 2017-10-01"
        ) from None


def _progress(enabled: bool) -> Progress:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


@click.command("simulate")
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Job trace CSV (timestamp,duration,num_gpus,gpu_time,cluster; plain or .gz; default: "
    "$GPUFLEET_TRACE, else the Philly trace shipped with gpufleet); with --nodes, the "
    "Alibaba pod list (name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,...).",
)
@click.option(
    "--nodes",
    "nodes_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Alibaba GPU-sharing node list (sn,cpu_milli,memory_mib,gpu,model): simulate GPU "
    "shares and constraints on it (policies: first-fit,best-fit,gpu-packing,gpu-clustering,"
    "random-fit,fgd,fgd-usable,fgd-pool,fgd-barrier).",
)
@click.option(
    "--synthetic",
    metavar="NODES:PODS",
    help="Instead of trace files, a synthetic Alibaba-format trace of this size (seeded by --seed).",
)
@click.option(
    "--write-trace",
    type=click.Path(file_okay=False),
    help="With --synthetic: also write nodes.csv and pods.csv here.",
)
@click.option(
    "--inflate",
    "inflate_ratio",
    type=float,
    default=1.3,
    show_default=True,
    help="Alibaba traces: draw pods until the GPUs they ask for reach this share of capacity.",
)
@click.option(
    "--replay",
    is_flag=True,
    help="Alibaba traces: replay creation/deletion times instead of inflating the workload.",
)
@click.option(
    "--unknown-gpu",
    metavar="MODEL",
    help="Treat GPU models missing from sched/gpu_models.csv as this model (e.g. v100).",
)
@click.option("--vc", "vcs", multiple=True, help="Virtual cluster(s) to keep (repeatable).")
@click.option(
    "--cluster",
    "cluster_text",
    default="v100:32,p100:32,k80:32",
    show_default=True,
    help="GPU models and counts; MODEL:COUNT[xPER_HOST][@MEMg].",
)
@click.option(
    "--policies",
    help=f"Comma-separated policies [default: {DEFAULT_POLICIES}; Alibaba traces: all of "
    "first-fit,best-fit,gpu-packing,gpu-clustering,random-fit,fgd,fgd-usable,fgd-pool,"
    "fgd-barrier].",
)
@click.option(
    "--load",
    type=float,
    default=1.0,
    show_default=True,
    help="Offered load: arrivals are time-scaled so work / capacity equals this.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of every random draw (synthetic job attributes; Alibaba: the synthetic trace, "
    "the pods drawn by --inflate, random-fit).",
)
@click.option("--start", help="Keep jobs submitted at or after this date (UTC).")
@click.option("--end", help="Keep jobs submitted before this date (UTC).")
@click.option(
    "--runtime-error",
    type=float,
    default=0.5,
    show_default=True,
    help="Sigma of the log-normal noise of the sjf-noisy oracle study (no other policy is told "
    "runtimes: they learn them from finished jobs).",
)
@click.option(
    "--cost-model",
    type=click.Choice(["realistic", "reference"]),
    default="realistic",
    show_default=True,
    help="realistic: whole hosts, restart cost, data copied once per host, OOM; reference: GPUs "
    "counted per GPU model, free preemption, no transfer (as published simulators). The same "
    "model for every policy of the run.",
)
@click.option(
    "--bandwidth-gbps",
    type=float,
    default=1.0,
    show_default=True,
    help="Network bandwidth between a job's data and a host, Gbit/s.",
)
@click.option(
    "--gavel",
    "gavel_path",
    type=click.Path(exists=True, dir_okay=False),
    help="gavel_throughputs.json (default: one beside the trace, else the copy shipped with "
    "gpufleet).",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False),
    help="Write JCT CDF and queue length per policy here (CSV and SVG); Alibaba traces: "
    "allocated GPUs vs arrived workload, or over time with --replay (CSV and PNG).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def simulate(
    trace_path: str | None,
    nodes_path: str | None,
    synthetic: str | None,
    write_trace: str | None,
    inflate_ratio: float,
    replay: bool,
    unknown_gpu: str | None,
    vcs: tuple[str, ...],
    cluster_text: str,
    policies: str | None,
    load: float,
    seed: int,
    start: str | None,
    end: str | None,
    runtime_error: float,
    bandwidth_gbps: float,
    gavel_path: str | None,
    cost_model: str,
    plots_dir: str | None,
    as_json: bool,
) -> None:
    """Replay a job trace through scheduling policies on a described cluster.

    Policies see only what a scheduler knows (spec, attained service, cluster state); runtimes
    are learnt online from finished jobs. sjf and sjf-noisy are oracle studies (they are handed
    the true runtimes), never baselines. Jobs that can never fit are refused and counted apart.
    With --nodes (or --synthetic), the trace is an Alibaba GPU-sharing pod list: pods ask for
    shares of a GPU, GPU models and node CPU/memory, and the table compares placement policies by
    the unallocated and fragmented GPU capacity (see docs/gpu-sharing.md).
    """
    if nodes_path or synthetic:
        from gpufleet.sched.sharecli import simulate_shares

        simulate_shares(
            pods_path=trace_path,
            nodes_path=nodes_path,
            synthetic=synthetic,
            write_trace=write_trace,
            policies=policies,
            inflate_ratio=inflate_ratio,
            replay=replay,
            seed=seed,
            unknown_gpu=unknown_gpu,
            plots_dir=plots_dir,
            as_json=as_json,
            progress=_progress,
        )
        return
    if not trace_path:
        from gpufleet.philly import default_trace_path

        if not vcs:  # the whole shipped trace is 62,637 jobs: hours for the default policies
            raise GpufleetError(
                "--trace or --vc is required",
                hint="gpufleet simulate --vc 2869ce (a virtual cluster of the Philly trace shipped "
                "with gpufleet), or --trace FILE",
            )
        trace_path = str(default_trace_path())  # $GPUFLEET_TRACE, else the shipped Philly trace
    policies = policies or DEFAULT_POLICIES
    from gpufleet.sched.cluster import parse_cluster
    from gpufleet.sched.gavel import bench_rows, load_gavel
    from gpufleet.sched.predictor import Predictor
    from gpufleet.sched.runner import POLICY_NAMES, Experiment
    from gpufleet.sched.sim import SimConfig
    from gpufleet.sched.trace import read_philly

    names = [p.strip() for p in policies.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICY_NAMES]
    if unknown or not names:
        raise GpufleetError(
            f"--policies: unknown policy {', '.join(unknown) or '(none)'}",
            hint=f"--policies {','.join(POLICY_NAMES)}",
        )
    if load <= 0:
        raise GpufleetError("--load: must be positive", hint="--load 1.0")
    try:
        spec = parse_cluster(cluster_text, bandwidth_gbps * 1e9 / 8)
    except ValueError as exc:
        raise GpufleetError(f"--cluster: {exc}", hint="--cluster v100:32,p100:32,k80:32") from None
    gavel = load_gavel(_gavel_path(gavel_path, trace_path))
    spec = _route_through_model_table(spec, gavel.gpu_models(), unknown_gpu)
    try:
        trace = read_philly(trace_path, vcs or None, _date(start, "--start"), _date(end, "--end"))
    except ValueError as exc:
        raise GpufleetError(str(exc), hint="check the trace file") from None
    if not trace:
        raise _no_jobs(trace_path, bool(vcs or start or end))
    rows = bench_rows(gavel)
    predictor = Predictor(rows)
    config = SimConfig(cost_model=cost_model)
    experiment = Experiment(
        trace, spec, gavel, load=load, seed=seed, runtime_error=runtime_error, config=config
    )
    show = sys.stderr.isatty()
    with _progress(show) as bar:
        tasks = {n: bar.add_task(n, total=len(trace)) for n in names}
        results = experiment.run(
            names, predictor, lambda n, done, total: bar.update(tasks[n], completed=done)
        )
    summary = {
        "trace": trace_path,
        "vcs": list(vcs),
        "cluster": spec.describe(),
        "cost_model": config.describe(),
        "load": load,
        "seed": seed,
        "jobs": len(trace),
        "synthetic": ["job_type", "gpu_memory", "data"],
        "policies": {n: m for n, (m, _) in results.items()},
    }
    if plots_dir:
        from gpufleet.sched.plots import write_plots

        summary["plots"] = write_plots(Path(plots_dir), {n: r for n, (_, r) in results.items()})
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_table(summary)


def _route_through_model_table(spec: Any, measured: list[str], fallback: str | None) -> Any:
    """GPU models Gavel did not measure take their speed from sched/gpu_models.csv; a model not
    there either is an error naming that file, or becomes ``--unknown-gpu``'s model."""
    import dataclasses

    from gpufleet.sched.gpumodels import UnknownGpuModelError, default_table

    renamed = {}
    for model in spec.gpu_models:
        if model in measured:
            continue
        try:
            renamed[model] = default_table().lookup(model, fallback).name
        except UnknownGpuModelError as exc:
            raise GpufleetError(
                f"--cluster: {exc}", hint="--unknown-gpu v100 treats it as a V100"
            ) from None
    if all(old == new for old, new in renamed.items()):
        return spec
    hosts = tuple(
        dataclasses.replace(h, gpu_model=renamed.get(h.gpu_model, h.gpu_model)) for h in spec.hosts
    )
    return dataclasses.replace(spec, hosts=hosts)


def _print_table(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from gpufleet.termtable import print_table

    table = Table(
        title=f"{summary['jobs']} jobs, cluster {summary['cluster']}, load {summary['load']}\n"
        f"cost model: {summary['cost_model']}",
        caption="oracle*: a study that is handed the true runtimes, not a baseline",
    )
    columns = [
        ("avg JCT h", "avg_jct_s", 3600),
        ("p99 JCT h", "p99_jct_s", 3600),
        ("avg queue h", "avg_queue_s", 3600),
        ("p99 queue h", "p99_queue_s", 3600),
        ("makespan h", "makespan_s", 3600),
        ("util", "gpu_utilization", 1),
        ("FTF rho", "ftf_rho", 1),
        ("max wait 8+ GPU h", "max_wait_large_s", 3600),
        ("OOM", "oom_failures", 1),
        ("preempt", "preemptions", 1),
        ("unfinished", "unfinished_jobs", 1),
        ("refused", "refused_jobs", 1),
        ("wall s", "sim_wall_s", 1),
    ]
    table.add_column("policy", no_wrap=True)
    for title, _, _ in columns:
        table.add_column(title, justify="right")
    for name, m in summary["policies"].items():
        table.add_row(
            f"{name} (oracle*)" if m.get("oracle") else name,
            *[
                f"{m[key] / div:.2f}" if isinstance(m[key], float) else str(m[key])
                for _, key, div in columns
            ],
        )
    print_table(table)


@click.group("predictor")
def predictor() -> None:
    """Train and evaluate the job runtime/memory predictor."""


@predictor.command("evaluate")
@click.option(
    "--bench",
    "bench_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Benchmark CSV: gpu_model,model,colocated,step_time_s[,gpu_mem_mib].",
)
@click.option(
    "--holdout",
    type=click.Choice(["pair", "model", "gpu_model"]),
    default="pair",
    show_default=True,
)
@click.option("--methods", default="neighbors,additive,lowrank,forest", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def evaluate_cmd(bench_path: str, holdout: str, methods: str, as_json: bool) -> None:
    """Held-out error (MAPE) of step time and co-location slowdown, per method."""
    from gpufleet.sched.bench_table import BenchTableError, read_bench
    from gpufleet.sched.evaluate import METHODS, evaluate

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    bad = [m for m in chosen if m not in METHODS]
    if bad or not chosen:
        raise GpufleetError(
            f"--methods: unknown method {', '.join(bad) or '(none)'}",
            hint=f"--methods {','.join(METHODS)}",
        )
    try:
        rows = read_bench(bench_path)
    except BenchTableError as exc:
        raise GpufleetError(
            str(exc),
            hint="gpufleet predictor convert-gavel gavel_throughputs.json "
            "-o bench.csv writes a valid table",
        ) from None
    with _progress(sys.stderr.isatty()) as bar:
        task = bar.add_task("evaluating", total=len(chosen))
        result = evaluate(
            rows, holdout, chosen, on_step=lambda m: bar.update(task, advance=1, description=m)
        )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"holdout: {holdout}")
    for method, r in result["methods"].items():
        step = r["step_time"]
        missed = step["held_out"] - step["predicted"]
        mape = f"{step['mape_pct']:6.2f}%" if step["predicted"] else "   n/a "
        colo = r.get("colocation_slowdown")
        colo_text = (
            f"  co-location slowdown MAPE {colo['mape_pct']:6.2f}%" if colo else "  (baseline)"
        )
        click.echo(
            f"  {method:10s} step time MAPE {mape} on {step['predicted']}/{step['held_out']} "
            f"held-out rows ({missed} not predicted){colo_text}"
        )
    best = result["best_method"]
    click.echo(f"best: {best or 'none (no method predicted any held-out row)'}")
    beats = result["beats_baseline"]
    if beats is None:
        click.echo("vs the per-model mean: not comparable (it predicts nothing in this mode)")
    else:
        click.echo(f"beats the per-model mean: {'yes' if beats else 'NO'}")


@predictor.command("convert-gavel")
@click.argument("gavel_json", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write here (default stdout)."
)
@click.option(
    "--synthetic-memory",
    is_flag=True,
    help="Fill gpu_mem_mib from gpufleet's stated synthetic profile (Gavel has none).",
)
def convert_gavel(gavel_json: str, output: str | None, synthetic_memory: bool) -> None:
    """Convert gavel_throughputs.json into the benchmark table."""
    from gpufleet.sched.bench_table import write_bench
    from gpufleet.sched.gavel import load_gavel, to_bench_rows

    try:
        rows = to_bench_rows(load_gavel(gavel_json), with_synthetic_memory=synthetic_memory)
    except (ValueError, KeyError, SyntaxError) as exc:
        raise GpufleetError(
            f"{gavel_json}: not a Gavel throughput table: {exc}",
            hint="the table gpufleet ships: src/gpufleet/sched/gavel_throughputs.json.gz",
        ) from None
    buf = io.StringIO()
    write_bench(rows, buf)
    if output:
        Path(output).write_text(buf.getvalue())
        click.echo(f"wrote {len(rows)} rows to {output}", err=True)
    else:
        click.echo(buf.getvalue(), nl=False)
