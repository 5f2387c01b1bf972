"""``gpufleet demo``: a server, a real agent for this machine, and a replayed fleet."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from gpufleet.errors import GpufleetError
from gpufleet.i18n import _

if TYPE_CHECKING:  # annotations only: a command imports these when it runs
    import uvicorn

    from gpufleet.config import Settings
    from gpufleet.demo.engine import FleetEngine
    from gpufleet.demo.faults import FaultInjector
    from gpufleet.demo.fleet import HostSpec
    from gpufleet.philly import TraceJob
    from gpufleet.store import Store

log = logging.getLogger("gpufleet.demo")


@click.command()
@click.option(
    "--hosts",
    "n_hosts",
    type=click.IntRange(1, 5000),
    default=24,
    show_default=True,
    help="Simulated GPU servers in the replayed fleet.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Port the server listens on.",
)
@click.option(
    "--host", "bind", default="127.0.0.1", show_default=True, help="Address the server listens on."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the store and state (default: ./gpufleet-data or $GPUFLEET_DATA_DIR).",
)
@click.option(
    "--speed",
    type=click.FloatRange(0.01, 1e6),
    default=60.0,
    show_default=True,
    help="Trace seconds replayed per second (60: an hour of the trace per minute).",
)
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Job trace CSV, plain or .gz (default: $GPUFLEET_TRACE, else the Philly trace "
    "shipped with gpufleet).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Same seed, same fleet, users and placement.",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.5, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between two samples of one simulated host.",
)
@click.option(
    "--load",
    type=click.FloatRange(0.05, 1.0),
    default=0.6,
    show_default=True,
    help="Share of the fleet's GPUs the replayed trace keeps busy on average.",
)
@click.option(
    "--history-days",
    type=click.FloatRange(0, 400),
    default=90.0,
    show_default=True,
    help="On first start (an empty data dir), write this many days of the fleet's history "
    "before going live, so reports and charts have a past (0: none).",
)
@click.option(
    "--history-step",
    type=click.FloatRange(60, 3600),
    default=300.0,
    show_default=True,
    help="Seconds between two history samples of one simulated host.",
)
@click.option(
    "--local-agent/--no-local-agent",
    default=True,
    show_default=True,
    help="Also run a real agent for this machine.",
)
@click.option(
    "--server",
    "server_url",
    metavar="URL",
    help="Only run the fleet, pushing to this running server (with --token).",
)
@click.option(
    "--token",
    envvar="GPUFLEET_TOKEN",
    metavar="TOKEN",
    help="With --server: an agent token of that server [$GPUFLEET_TOKEN].",
)
@click.option(
    "--faults",
    "faults_path",
    metavar="FILE|default",
    help="Inject faults into the replayed hosts (docs/alerts.md): a schedule file (YAML or "
    "JSON), or 'default' (every kind 5 times, 2 minutes apart, then a rack power-off). What "
    "was injected, where and when is written to faults-truth.jsonl in the data dir.",
)
def demo(
    n_hosts: int, port: int, bind: str, data_dir: Path | None, speed: float,
    trace_path: Path | None, seed: int, interval: float, load: float, history_days: float,
    history_step: float, local_agent: bool, server_url: str | None, token: str | None,
    faults_path: str | None,
) -> None:  # fmt: skip
    """Start a server, a real agent for this machine and a replayed fleet of GPU servers.

    The fleet's GPU processes are real jobs from the Philly trace (arrivals, durations, GPU
    counts), placed onto simulated servers of mixed GPU models and time-compressed by
    --speed; each simulated server pushes through the agent's own collector, spool and sender
    and is labelled "replay". Ctrl-C stops everything.

    On first start (nothing in the data dir's store yet) it first writes --history-days of
    the fleet's past (the same trace placement at real speed, a sample every --history-step
    seconds) through the store's bulk path and rolls it up, so reports, usage pages, week
    charts and the recommender's history have content from the start; it prints how long
    that took.

    For load tests, --server URL --token TOKEN runs only the fleet (e.g. --hosts 500).
    """
    from gpufleet.demo.fleet import build_fleet
    from gpufleet.demo.trace import load_trace

    started = time.monotonic()
    # One "not supported" line per simulated host is noise here.
    logging.getLogger("gpufleet.agent.nvml").setLevel(logging.WARNING)
    trace = load_trace(trace_path)
    specs = build_fleet(n_hosts, seed)
    faults = _faults(faults_path, specs, seed)
    if server_url:
        if not token:
            raise GpufleetError(_("--server needs an agent token"),
                                hint=_("gpufleet token create replay, then pass --token"))  # fmt: skip
        _fleet_only(specs, trace, server_url, token, speed=speed, seed=seed,
                    interval=interval, load=load, faults=faults)  # fmt: skip
        return
    _demo(specs, trace, port=port, bind=bind, data_dir=data_dir, speed=speed, seed=seed,
          interval=interval, load=load, local_agent=local_agent, t0=started,
          history=(history_days, history_step), faults=faults)  # fmt: skip


def _faults(path: str | None, specs: list[HostSpec], seed: int) -> FaultInjector | None:
    """The fault injector for --faults (None without it)."""
    if path is None:
        return None
    from gpufleet.demo.faults import FaultInjector, default_schedule, load_faults

    if path == "default":
        hosts = [(s.name, s.group, s.gpu_count) for s in specs]
        schedule = default_schedule(hosts, start_seconds=60, spacing_seconds=120, seed=seed)
    else:
        schedule = load_faults(path, {s.name: s.gpu_count for s in specs})
    log.info("fault injection: %d faults over %.0f min", len(schedule),
             max(f.end_seconds for f in schedule) / 60 if schedule else 0)  # fmt: skip
    return FaultInjector(schedule)


def _write_truth(data: Path, engine: FleetEngine | None) -> None:
    import json

    if engine is None or engine.faults is None:
        return
    with open(data / "faults-truth.jsonl", "w") as out:
        for row in engine.faults.truth:
            out.write(json.dumps(row) + "\n")


def _fleet_only(
    specs: list[HostSpec], trace: list[TraceJob], url: str, token: str, **kw: Any
) -> None:
    from gpufleet.demo.engine import FleetEngine

    spool = Path(tempfile.mkdtemp(prefix="gpufleet-replay-"))
    try:
        engine = FleetEngine(specs, trace, url, token, spool_root=spool, **kw)
    except ValueError as exc:
        raise GpufleetError(str(exc), hint="e.g. --server http://127.0.0.1:8000") from None
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    engine.start()
    log.info("replay fleet pushing to %s; Ctrl-C stops it", url)
    try:
        stop.wait()
    finally:
        log.info("stopping the replay fleet")
        engine.stop()
        shutil.rmtree(spool, ignore_errors=True)


def _demo(specs: list[HostSpec], trace: list[TraceJob], *, port: int, bind: str,
          data_dir: Path | None, speed: float, seed: int, interval: float, load: float,
          local_agent: bool, t0: float, history: tuple[float, float] = (0.0, 300.0),
          faults: FaultInjector | None = None) -> None:  # fmt: skip
    import uvicorn

    from gpufleet.config import load_settings
    from gpufleet.demo import queued
    from gpufleet.demo.engine import FleetEngine
    from gpufleet.http.local import (
        fresh_token,
        open_store_or_explain,
        server_file,
        spawn_agent,
        stop_process,
    )
    from gpufleet.server.app import create_app
    from gpufleet.server.workers.pool import protocol_class

    settings = load_settings(None, overrides={"server": {"data_dir": data_dir, "host": bind,
                                                         "port": port},
                                              "queue": {"dispatcher": "replay"}})  # fmt: skip
    data = settings.server.data_dir
    data.mkdir(parents=True, exist_ok=True)
    _check_port(settings.server.host, settings.server.port)
    store = open_store_or_explain(settings)
    url = f"http://{_client_host(settings.server.host)}:{settings.server.port}"
    agent_proc: subprocess.Popen | None = None
    engine: FleetEngine | None = None
    try:
        _write_history(store, settings, specs, trace, days=history[0], step=history[1],
                       seed=seed, load=load)  # fmt: skip
        replay_token = fresh_token(store, "replay")
        agent_token = fresh_token(store, "local") if local_agent else None
        spool = data / "replay-spool"  # simulated data: nothing in it is worth keeping
        shutil.rmtree(spool, ignore_errors=True)
        engine = FleetEngine(specs, trace, url, replay_token, spool_root=spool, speed=speed,
                             seed=seed, interval=interval, load=load, faults=faults)  # fmt: skip
        workers = settings.ingest.worker_count()  # as `gpufleet server` runs: ingest workers
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        app = create_app(settings, store=store, ingest_workers=workers, log_level=level)
        config = uvicorn.Config(
            app, host=settings.server.host, port=settings.server.port, log_level="warning",
            access_log=False, backlog=4096, timeout_keep_alive=30,
            http=protocol_class(app) if workers else "auto",
        )  # fmt: skip
        lock = threading.Lock()
        stoppers: list = []

        def stop_others() -> None:
            nonlocal agent_proc
            with lock:
                log.info("stopping: replay fleet, local agent, server")
                for stop in stoppers:
                    stop()
                if engine is not None:
                    engine.stop()
                if agent_proc is not None:
                    stop_process(agent_proc)
                    agent_proc = None

        server = _make_server(config, stop_others)

        def when_up() -> None:
            nonlocal agent_proc
            while not server.started:
                if server.should_exit:
                    return
                time.sleep(0.05)
            with lock:
                if server.should_exit:
                    return
                assert engine is not None
                engine.start()
                if queued.connect(app, engine):  # the live queue runs on the replayed fleet
                    users = sorted({u.name for us in engine.replay.users.values() for u in us})
                    trickle = queued.Trickle(url, app.state.ctx.admin_key, users, seed=seed)
                    trickle.start()
                    stoppers.append(trickle.stop.set)
                if agent_token is not None:
                    agent_proc = spawn_agent(url, agent_token, data / "agent-spool")
            log.info("gpufleet demo is up in %.1f s: open %s/ (hosts: %s/api/v1/hosts, API "
                     "docs: %s/docs); Ctrl-C stops it", time.monotonic() - t0, url, url,
                     url)  # fmt: skip

        threading.Thread(target=when_up, name="demo-start", daemon=True).start()
        log.info("gpufleet server on %s (data dir %s)", url, data)
        with server_file(data, url):
            server.run()
    finally:
        if engine is not None:
            engine.stop()
            _write_truth(data, engine)
        if agent_proc is not None:
            stop_process(agent_proc)
        store.close()


def _write_history(store: Store, settings: Settings, specs: list[HostSpec],
                   trace: list[TraceJob], *, days: float, step: float, seed: int,
                   load: float) -> None:  # fmt: skip
    """The fleet's past, on first start only (a store with no hosts and no samples)."""
    from gpufleet.demo.history import write_history
    from gpufleet.store.base import StoreError

    if days <= 0:
        return
    if store.hosts() or store.count("host_samples"):
        log.info("history: the store already has data; no history written")
        return
    log.info("history: writing %g days of the fleet's past (first start; --history-days 0 "
             "skips it)", days)  # fmt: skip
    try:
        report = write_history(
            store, specs, trace, days=days, end=time.time(), step_seconds=step, seed=seed,
            load=load, tz=settings.warehouse.timezone,
            busy_util_percent=settings.warehouse.busy_util_percent, progress=log.info,
        )  # fmt: skip
    except StoreError as exc:
        log.warning("history: not written (%s)", exc)
        return
    log.info("history: %s", report.line())


def _make_server(config: uvicorn.Config, before_shutdown: Callable[[], None]) -> uvicorn.Server:
    import asyncio

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server that stops the fleet and the agent before it stops serving (their
        last batches are delivered), and does not re-raise the signal after a graceful
        shutdown: Ctrl-C stops the demo cleanly, with exit status 0."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await asyncio.to_thread(before_shutdown)
            await super().shutdown(sockets)

    return Server(config)


def _check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise GpufleetError(_("cannot listen on {host}:{port}: {error}", host=host, port=port,
                                  error=exc.strerror),
                                hint=_("pass --port with a free port")) from None  # fmt: skip


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
