"""``gpufleet agent``: collect on a fixed interval, spool, push; optionally serve /metrics."""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from gpufleet import __version__
from gpufleet.errors import GpufleetError
from gpufleet.i18n import _

if TYPE_CHECKING:  # annotations only: the CLI imports these when a command runs
    from gpufleet.agent.collect import Collector
    from gpufleet.agent.fakenvml import FakeNvml
    from gpufleet.wire import Sample

log = logging.getLogger("gpufleet.agent")

SIZE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*", text.lower())
    if not m:
        raise click.BadParameter(_("{text!r} is not a size; use e.g. 256M or 1G", text=text))
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2)])


def parse_age(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if not m:
        raise click.BadParameter(
            _("{text!r} is not a duration; use e.g. 90s, 12h or 7d", text=text)
        )
    return float(m.group(1)) * AGE_UNITS[m.group(2) or "s"]


def default_spool_dir() -> Path:
    system = Path("/var/lib/gpufleet/spool")
    if os.geteuid() == 0:
        return system
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "gpufleet" / "spool"


@click.command()
@click.option(
    "--server",
    envvar="GPUFLEET_SERVER",
    metavar="URL",
    help="gpufleet server to push to, e.g. http://gpu-master:8000 [$GPUFLEET_SERVER].",
)
@click.option(
    "--token",
    envvar="GPUFLEET_TOKEN",
    metavar="TOKEN",
    help="Agent token from `gpufleet token create` [$GPUFLEET_TOKEN].",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True),
    help="Read the token from this file instead (keeps it out of `ps`).",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.5, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between collection rounds.",
)
@click.option("--host-name", help="Name this host reports as.  [default: the hostname]")
@click.option(
    "--spool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where batches wait until the server acknowledges them.  "
    "[default: /var/lib/gpufleet/spool as root, else ~/.local/state/gpufleet/spool]",
)
@click.option(
    "--spool-max",
    "spool_max",
    default="256M",
    show_default=True,
    help="Largest spool on disk; past it the oldest batches are dropped (with a warning).",
)
@click.option(
    "--spool-max-age",
    default="7d",
    show_default=True,
    help="Oldest batch kept while the server is unreachable.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Also serve the latest sample for Prometheus on this port (/metrics).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address for --metrics-port (0.0.0.0 to let a remote Prometheus scrape).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the server per request.",
)
@click.option(
    "--once", is_flag=True, help="Collect one sample, print it and exit (no server needed)."
)
@click.option("--json", "as_json", is_flag=True, help="With --once: print the sample as JSON.")
@click.option(
    "--fake-gpus",
    metavar="MODEL:N[,MODEL:N]",
    hidden=True,
    help="Simulate GPUs with the fake NVML (demos and tests on machines without GPUs).",
)
def agent(
    server: str | None, token: str | None, token_file: str | None, interval: float,
    host_name: str | None, spool_dir: Path | None, spool_max: str, spool_max_age: str,
    metrics_port: int | None, metrics_host: str, timeout: float, once: bool, as_json: bool,
    fake_gpus: str | None,
) -> None:  # fmt: skip
    """Collect this machine's host and GPU metrics (NVML) and GPU processes every INTERVAL
    seconds and push them to a gpufleet server.

    Every batch is written to the spool before it is sent and removed only once the server
    has acknowledged it, so a server restart or a network cut loses nothing.

    Check a node by hand: gpufleet agent --once --json
    """
    from gpufleet.agent.collect import Collector

    nvml = _fake_nvml(fake_gpus) if fake_gpus else None
    try:
        collector = Collector(host_name=host_name, interval_seconds=interval, nvml=nvml)
    except ValueError as exc:
        raise GpufleetError(str(exc), hint=_("pass --host-name NAME")) from None
    if once:
        collector.collect()  # rates (CPU %, network) need two readings
        time.sleep(0.5)
        sample = collector.collect()
        collector.close()
        if as_json:
            click.echo(sample.model_dump_json(indent=2))
        else:
            _print_summary(sample)
        return
    if token_file:
        token = Path(token_file).read_text().strip()
    if not server:
        raise GpufleetError(
            _("no server given"), hint="gpufleet agent --server http://HOST:8000 --token TOKEN"
        )
    if not token:
        raise GpufleetError(
            _("no agent token given"),
            hint=_("create one on the server with `gpufleet token create NAME`, then pass --token"),
        )
    run_agent(
        collector, server, token, interval=interval,
        spool_dir=spool_dir or default_spool_dir(), spool_max_bytes=parse_size(spool_max),
        spool_max_age=parse_age(spool_max_age), metrics_port=metrics_port,
        metrics_host=metrics_host, timeout=timeout,
    )  # fmt: skip


def run_agent(
    collector: Collector, server: str, token: str, *, interval: float, spool_dir: Path,
    spool_max_bytes: int, spool_max_age: float, metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1", timeout: float = 10.0,
) -> None:  # fmt: skip
    from gpufleet.agent.push import Sender
    from gpufleet.agent.spool import Spool
    from gpufleet.wire import Batch

    try:
        spool = Spool(spool_dir, max_bytes=spool_max_bytes, max_age_seconds=spool_max_age)
    except OSError as exc:
        raise GpufleetError(
            _("cannot use spool dir {dir}: {error}", dir=spool_dir, error=exc.strerror),
            hint=_("pass --spool-dir with a folder you can write"),
        ) from None
    try:
        sender = Sender(spool, server, token, timeout_seconds=timeout)
    except ValueError as exc:
        raise GpufleetError(str(exc), hint="e.g. --server http://gpu-master:8000") from None
    latest: dict[str, Sample | None] = {"sample": None}
    xids = None
    if metrics_port:
        from gpufleet.agent.prom import XidTotals, serve_metrics

        xids = XidTotals()  # every collected sample's XID events, for the counter
        serve_metrics(metrics_port, metrics_host, lambda: latest["sample"], xids)
        log.info("serving Prometheus metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("stopping (signal %d); %d batch(es) stay in the spool", signum, len(spool))
        stop.set()
        sender.stop_event.set()
        spool.changed.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if len(spool):
        log.info(
            "spool %s holds %d batch(es) from before; delivering them first", spool_dir, len(spool)
        )
    sending = threading.Thread(target=sender.run, name="sender", daemon=True)
    sending.start()
    log.info("agent %s: host %s -> %s every %.1f s (spool %s)",
             __version__, collector.host_name, server, interval, spool_dir)  # fmt: skip
    run_id = f"{_agent_id(spool_dir)}-{secrets.token_hex(4)}"
    seq = 0
    next_round = time.monotonic()
    while not stop.is_set():
        try:
            sample = collector.collect()
        except Exception:  # a collector bug must not stop the agent; the next round tries again
            log.exception("collection round failed")
        else:
            latest["sample"] = sample
            if xids is not None:
                xids.observe(sample)
            seq += 1
            batch = Batch(
                batch_id=f"{run_id}-{seq}", source="agent", agent_version=__version__,
                sent_at=time.time(), samples=[sample],
            )  # fmt: skip
            try:
                spool.put(batch.batch_id, batch.model_dump_json().encode())
            except OSError as exc:
                log.error("cannot write the spool %s: %s; this sample is lost", spool_dir, exc)
        next_round += interval
        delay = next_round - time.monotonic()
        if delay < 0:  # we fell behind (suspend, slow NVML): skip missed rounds, keep the grid
            next_round += -delay // interval * interval + interval
            delay = next_round - time.monotonic()
        stop.wait(delay)
    sending.join(timeout + 1)
    sender.close()
    collector.close()


def _fake_nvml(spec: str) -> FakeNvml:
    from gpufleet.agent.fakenvml import FakeNvml

    names: list[str] = []
    for part in spec.split(","):
        model, _, count = part.rpartition(":")
        if not model or not count.isdigit() or not 0 < int(count) <= 64:
            raise click.BadParameter(
                f"{part!r}: use MODEL:COUNT, e.g. A100-SXM4-80GB:8", param_hint="--fake-gpus"
            )
        names += [model] * int(count)
    return FakeNvml.with_models(names)


def _agent_id(spool_dir: Path) -> str:
    """A random id kept in the spool dir: batch ids never repeat across agent restarts."""
    path = spool_dir / "agent-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_hex(6)
        path.write_text(value + "\n")
        return value


def _print_summary(sample: Sample) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = sample.host_metrics
    gib = 2**30
    mem = f"{(m.memory_used_bytes or 0) / gib:.1f}/{(m.memory_total_bytes or 0) / gib:.1f}"
    console.print(
        f"[bold]{sample.host}[/]  "
        + _("cpu {cpu}%  load {load}  mem {mem} GiB", cpu=m.cpu_percent,
            load=f"{m.load1}/{m.load5}/{m.load15}", mem=mem)
    )  # fmt: skip
    table = Table(
        "GPU", _("name"), _("util %"), _("mem GiB"), _("temp °C"), _("power W"), _("error")
    )
    for g in sample.gpus:
        mem = f"{(g.memory_used_bytes or 0) / gib:.1f}/{(g.memory_total_bytes or 0) / gib:.1f}"
        table.add_row(
            str(g.index),
            g.name,
            str(g.utilization_gpu_percent),
            mem,
            str(g.temperature_celsius),
            str(g.power_watts),
            g.error or "",
        )
    console.print(table)
    for p in sample.processes:
        console.print(
            f"  gpu {p.gpu_index} pid {p.pid} {p.user} {p.command[:60]}"
            + (f" [{p.container_name or p.container_id[:12]}]" if p.container_id else "")
        )
    for e in sample.errors:
        console.print(f"[yellow]{_('note:')}[/] {e}")
    sys.stdout.flush()
