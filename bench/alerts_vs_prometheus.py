"""gpufleet's alerts beside Prometheus + Alertmanager on the same replay and faults, in one run.

    nice -n 10 .venv/bin/python bench/alerts_vs_prometheus.py            # 100 hosts, 20 min
    .venv/bin/python bench/alerts_vs_prometheus.py --hosts 20 --minutes 8 --per-kind 1

Prometheus cannot run on a simulated clock, so this runs in **real time**, compressed:

- **The fleet**: ``--hosts`` replayed hosts (``gpufleet.demo``: the Philly trace's jobs, read
  by the agent's own collector over a fake NVML), a sample every ``--interval`` s (5), host
  ``i`` at ``i/n`` of each interval. The fault schedule is ``demo.faults.default_schedule``
  (every kind ``--per-kind`` times on distinct hosts, ``--spacing`` s apart, from the first
  minute; a rack of 10 hosts powered off at once; one host's 8 GPUs overheating at once),
  each fault lasting 2 minutes (a network cut 90 s: longer than the offline limit, so
  ``host_down`` is right; held-but-idle 4 minutes), then no faults until ``--minutes``.
- **Prometheus's side**, the standard pull model of a lab: every simulated host serves the
  agent's own ``/metrics`` (``gpufleet.agent.prom.serve_metrics``, the exposition a lab gets
  from dcgm-exporter + node-exporter, on its own loopback port), and the Debian
  ``/usr/bin/prometheus`` scrapes each one every interval (``scrape_timeout`` 4 s), with the
  target labels ``host`` and ``group`` (the rack), evaluating :data:`PROM_RULES` (the nearest
  rules a lab admin would write: ``up == 0``, an ``absent``-style ``unless``, thresholds on
  temperature / ECC / XID counters / power / disk / memory / clock, with gpufleet's ``for``
  durations) every interval. A powered-off host, a killed agent and a cut network all stop
  the host's exporter (a refused connection; a timeout in a real network: the same ``up ==
  0``). The real ``/usr/bin/prometheus-alertmanager`` groups them (``group_by`` alertname +
  host; ``TargetDown`` by alertname + group, i.e. a rack is one message, as gpufleet's
  ``host_down``), with gpufleet's default group wait / interval / repeat (30 s, 5 min, 4 h),
  a ``TargetDown`` inhibiting the host's other alerts, and delivers to a webhook receiver on
  loopback that records each message.
- **gpufleet's side**, in the same process and the same seconds: each sample goes to the
  alert engine as the server hands it over (``alerts.engine.AlertEngine.observe``, the
  dispatcher and ``tick`` every 5 s, the path bench/alerts.py uses, here on the real clock),
  with the built-in rules and their ``for`` scaled exactly as Prometheus's; the probe of a
  silent host answers as the simulated network would (power off or cut: no; agent killed:
  yes). Its pages are what the dispatcher hands to the channels (Apprise's delivery is tested
  elsewhere, not timed here).
- **The replay's own incidents** (GPUs running hot under load, notebooks holding GPUs): the
  same replay runs alongside without faults (a shadow fleet, same seeds, fed to a second
  gpufleet engine). A firing of either system on a host/GPU where the shadow fired the same
  condition (gpufleet's rule, or the one a Prometheus alert stands for) at that time is
  *natural*; precision is printed strict and without those.

``for`` durations: gpufleet's built-in ones divided by 4 (``gpu_too_hot`` 30 s,
``disk_almost_full`` 75 s, ``nvml_hung`` 7.5 s, ...), except ``gpu_held_idle`` (4 h -> 2
min); windows (ECC 1 h, XID 10 min) unchanged; a silent host is down after 60 s in both
(``--offline``). Scoring is bench/alerts.py's :func:`score` for both systems; a Prometheus
alert counts for a fault by :data:`PROM_RULES`'s mapping, strict (its text names the fault)
and lenient (an admin who reads it can get to the fault); both are printed.

Measured: recall per fault kind, detection delay p50/p95 (firing time - fault start: the
engine's firing time for gpufleet, Prometheus's own evaluation timestamps of ``ALERTS`` for
Prometheus), precision, messages per incident (gpufleet: the dispatcher's first pages;
Prometheus: the receiver's Alertmanager messages), and the CPU each side used.
Not measured: the server's HTTP ingest and store (bench/ingest.py), Apprise's delivery, a
24 h quiet stretch (the quiet stretch here is minutes; bench/alerts.py runs 24 h simulated),
a blackbox TCP probe beside Prometheus (not installed here: with one, ``up == 0 and
probe_success == 1`` would tell a dead agent from a dead host, as gpufleet's probe does).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alerts import _matches, offline_limit, score
from gpufleet.agent.prom import XidTotals, serve_metrics
from gpufleet.alerts.engine import Alert, AlertEngine, EngineConfig, HostSeen
from gpufleet.alerts.notify import Dispatcher, Message, Timing
from gpufleet.alerts.rules import Rule, builtin_rules
from gpufleet.demo.faults import KINDS, Fault, FaultInjector, default_schedule
from gpufleet.demo.fleet import HostSpec, build_fleet
from gpufleet.demo.replay import Replay
from gpufleet.demo.simhost import SimHost
from gpufleet.demo.trace import load_trace
from gpufleet.wire import Sample

SIM_T0 = 1_800_000_000.0  # the replay's own clock (the same for the fleet and its shadow)
FOR_SCALE = 4.0
HELD_IDLE_FOR = 120.0
DURATIONS = {"held_idle": 240.0, "network_cut": 90.0}  # the rest: --fault-seconds
GIB = 2**30
JOB = "gpufleet-agent"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scaled_rules(scale: float = FOR_SCALE, held_idle_for: float = HELD_IDLE_FOR) -> list[Rule]:
    """gpufleet's built-in rules with their ``for`` divided by ``scale``."""
    out = []
    for r in builtin_rules():
        fs = held_idle_for if r.name == "gpu_held_idle" else r.for_seconds / scale
        out.append(r.model_copy(update={"for_seconds": fs}))
    return out


# -- Prometheus's rules -------------------------------------------------------------------------


@dataclass(frozen=True)
class PromRule:
    """One alerting rule as a lab admin would write it on the agent's exporter, and how its
    alert is read: ``strict``: the fault kinds its text names (an admin who reads it knows
    which fault it is); ``lenient``: the kinds it is consistent with (it sends someone to the
    right host and GPU, who finds out which); ``natural``: the gpufleet rule with the same
    condition (to tell the replay's own incidents, see the shadow fleet)."""

    name: str
    expr: str
    gp_rule: str  # the gpufleet rule whose ``for`` it takes
    severity: str
    summary: str
    strict: tuple[str, ...] = ()
    lenient: tuple[str, ...] = ()
    for_seconds: float | None = None  # None: the gpufleet rule's (scaled); the silence: offline


PROM_RULES: tuple[PromRule, ...] = (
    PromRule("TargetDown", f'up{{job="{JOB}"}} == 0', "host_down", "critical",
             "{{ $labels.host }}: the exporter does not answer (host down, network cut or "
             "exporter dead)", (), ("power_off", "agent_killed", "network_cut")),
    PromRule("GPUReadingsMissing",
             f'up{{job="{JOB}"}} == 1 unless on (host) gpufleet_gpu_temperature_celsius',
             "nvml_hung", "critical",
             "{{ $labels.host }}: the exporter answers but no GPU gives readings (NVML or the "
             "driver is stuck)", ("nvml_hung",), ("nvml_hung",)),
    PromRule("CollectionErrors", "gpufleet_collection_errors > 0", "nvml_hung", "warning",
             "{{ $labels.host }}: the exporter reports {{ $value }} collection error(s)",
             (), ("nvml_hung",)),
    PromRule("GPUNotAnswering", "gpufleet_gpu_up == 0", "gpu_lost", "critical",
             "{{ $labels.host }} GPU {{ $labels.gpu }}: NVML returns an error for it (lost, "
             "hung or a driver problem)", (), ("gpu_lost", "nvml_hung")),
    PromRule("GPUFellOffBus", "gpufleet_gpu_last_xid == 79", "gpu_lost", "critical",
             "{{ $labels.host }} GPU {{ $labels.gpu }}: XID 79, fell off the bus",
             ("gpu_lost",), ("gpu_lost",)),
    PromRule("ECCUncorrectable",
             "increase(gpufleet_gpu_ecc_uncorrected_volatile_errors_total[1h]) > 0",
             "ecc_uncorrectable", "critical",
             "{{ $labels.host }} GPU {{ $labels.gpu }}: uncorrectable ECC errors in the last "
             "hour", ("ecc",), ("ecc",)),
    PromRule("XidStorm", "increase(gpufleet_gpu_xid_events_total[10m]) >= 5", "xid_storm",
             "warning", "{{ $labels.host }} GPU {{ $labels.gpu }}: {{ $value }} XIDs in 10 min"),
    PromRule("GPUTooHot", "gpufleet_gpu_temperature_celsius >= 88", "gpu_too_hot", "warning",
             "{{ $labels.host }} GPU {{ $labels.gpu }} at {{ $value }} C",
             ("overheat",), ("overheat",)),
    PromRule("PowerAtCap",
             "gpufleet_gpu_power_watts / gpufleet_gpu_power_limit_watts >= 0.98",
             "power_at_cap", "info", "{{ $labels.host }} GPU {{ $labels.gpu }} at its power cap"),
    PromRule("DiskAlmostFull",
             "gpufleet_host_disk_used_bytes / gpufleet_host_disk_total_bytes >= 0.92",
             "disk_almost_full", "warning",
             "{{ $labels.host }}: {{ $labels.mount }} is {{ $value }} full",
             ("disk_fill",), ("disk_fill",)),
    PromRule("MemoryPressure",
             "1 - gpufleet_host_memory_available_bytes / gpufleet_host_memory_total_bytes "
             ">= 0.95", "memory_pressure", "warning",
             "{{ $labels.host }}: {{ $value }} of memory in use"),
    PromRule("Swapping",
             "gpufleet_host_swap_used_bytes / gpufleet_host_swap_total_bytes >= 0.5",
             "swapping", "warning", "{{ $labels.host }}: {{ $value }} of swap in use"),
    PromRule("ClockSkew",
             "abs(gpufleet_sample_timestamp_seconds - timestamp(gpufleet_sample_timestamp_seconds))"
             " > 30", "clock_skew", "warning",
             "{{ $labels.host }}: the exporter's clock is off by {{ $value }} s",
             ("clock_skew",), ("clock_skew",)),
    PromRule("GPUHeldIdle",
             'sum by (host, gpu, user) (gpufleet_gpu_user_memory_bytes{user!=""}) >= 536870912 '
             "and on (host, gpu) gpufleet_gpu_utilization_percent < 5", "gpu_held_idle", "info",
             "{{ $labels.user }} holds GPU {{ $labels.gpu }} on {{ $labels.host }} without "
             "using it", ("held_idle",), ("held_idle",)),
    PromRule("GhostMemory",
             'sum by (host, gpu) (gpufleet_gpu_user_memory_bytes{user=""}) > 1073741824',
             "ghost_memory", "warning",
             "{{ $labels.host }} GPU {{ $labels.gpu }}: {{ $value }} bytes held by processes "
             "with no owner", ("ghost_memory",), ("ghost_memory",)),
)  # fmt: skip


def prom_for(r: PromRule, fors: dict[str, float], offline: float) -> float:
    if r.for_seconds is not None:
        return r.for_seconds
    return offline if r.gp_rule == "host_down" else fors[r.gp_rule]


def prom_rule_file(fors: dict[str, float], offline: float) -> dict[str, Any]:
    rules = []
    for r in PROM_RULES:
        rules.append({"alert": r.name, "expr": r.expr,
                      "for": f"{round(1000 * prom_for(r, fors, offline))}ms",
                      "labels": {"severity": r.severity},
                      "annotations": {"summary": r.summary}})  # fmt: skip
    return {"groups": [{"name": "gpufleet-lab", "rules": rules}]}


def expected_map(which: str) -> dict[str, tuple[str, ...]]:
    return {k: tuple(r.name for r in PROM_RULES if k in getattr(r, which)) for k in KINDS}


# -- the services -------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback: records each POST (time, body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, dict[str, Any]]] = []
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recv.posts.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _ready(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (code {proc.returncode})")
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready within {timeout:g} s")


def binary(*names: str) -> str:
    for n in names:
        found = shutil.which(n) or (n if Path(n).exists() else None)
        if found:
            return found
    raise SystemExit(f"{names[0]} is not installed (scripts/setup.sh installs it)")


@dataclass
class Services:
    prom_url: str
    am_url: str
    procs: list[subprocess.Popen[bytes]]
    receiver: Receiver

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.receiver.close()


def start_services(d: Path, targets: dict[str, tuple[int, str]], interval: float,
                   fors: dict[str, float], offline: float, timing: Timing) -> Services:  # fmt: skip
    """Alertmanager (delivering to a receiver on loopback) and Prometheus (scraping
    ``targets``: host -> (port, group), evaluating :data:`PROM_RULES`)."""
    receiver = Receiver()
    am_port, prom_port = free_port(), free_port()

    def dur(s: float) -> str:
        return f"{round(1000 * s)}ms"

    am_cfg = {
        "route": {
            "receiver": "hook", "group_by": ["alertname", "host"],
            "group_wait": dur(timing.group_wait_seconds),
            "group_interval": dur(timing.group_interval_seconds),
            "repeat_interval": dur(timing.repeat_interval_seconds),
            "routes": [{"matchers": ["alertname=TargetDown"], "group_by": ["alertname", "group"]}],
        },
        "inhibit_rules": [{"source_matchers": ["alertname=TargetDown"],
                           "target_matchers": ["alertname!=TargetDown"], "equal": ["host"]}],
        "receivers": [{"name": "hook", "webhook_configs": [{
            "url": f"http://127.0.0.1:{receiver.port}/alertmanager", "send_resolved": True}]}],
    }  # fmt: skip
    (d / "am.yml").write_text(yaml.safe_dump(am_cfg))
    rules = prom_rule_file(fors, offline)
    (d / "rules.yml").write_text(yaml.safe_dump(rules, width=1000))
    prom_cfg = {
        "global": {"scrape_interval": dur(interval), "evaluation_interval": dur(interval),
                   "scrape_timeout": dur(min(interval - 1, 10))},
        "rule_files": [str(d / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{
            "job_name": JOB, "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                "labels": {"host": host, "group": group}}
                               for host, (port, group) in targets.items()],
        }],
    }  # fmt: skip
    (d / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg, width=1000))
    promtool = binary("/usr/bin/promtool", "promtool")
    subprocess.run([promtool, "check", "rules", str(d / "rules.yml")], check=True,
                   capture_output=True)  # fmt: skip
    with open(d / "am.log", "wb") as am_log, open(d / "prometheus.log", "wb") as prom_log:
        am = subprocess.Popen(
            [binary("/usr/bin/prometheus-alertmanager", "alertmanager"),
             f"--config.file={d / 'am.yml'}", f"--storage.path={d / 'am'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=am_log,
        )  # fmt: skip
        prom = subprocess.Popen(
            [binary("/usr/bin/prometheus", "prometheus"),
             f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'prom'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=prom_log,
        )  # fmt: skip
    services = Services(f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}",
                        [prom, am], receiver)  # fmt: skip
    try:
        _ready(services.am_url, am, "Alertmanager")
        _ready(services.prom_url, prom, "Prometheus")
    except Exception:
        services.stop()
        raise
    return services


# -- the simulated hosts and their exporters ----------------------------------------------------


class Exporter:
    """A simulated host's agent ``/metrics`` on its own loopback port (the agent's own
    ``serve_metrics``); stopped while the host is off, its agent dead or its network cut."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sample: Sample | None = None
        self.xids = XidTotals()
        self.server: ThreadingHTTPServer | None = None

    def set_up(self, up: bool) -> None:
        if up and self.server is None:
            self.xids = XidTotals()  # the agent (re)started: its counters start afresh
            try:
                self.server = serve_metrics(self.port, "127.0.0.1", lambda: self.sample,
                                            self.xids)  # fmt: skip
            except OSError:  # the old socket is still closing: the next round tries again
                self.server = None
        elif not up and self.server is not None:
            srv, self.server = self.server, None
            self.sample = None

            def stop() -> None:
                srv.shutdown()
                srv.server_close()

            threading.Thread(target=stop, daemon=True).start()

    def update(self, sample: Sample) -> None:
        self.xids.observe(sample)
        self.sample = sample


def schedule(specs: list[HostSpec], seed: int, per_kind: int, spacing: float, start: float,
             fault_seconds: float) -> list[Fault]:  # fmt: skip
    """The default schedule, compressed; then a rack powered off and one host's 8 GPUs
    overheating, together, once every other fault is over."""
    base = default_schedule(
        [(s.name, s.group, s.gpu_count) for s in specs],
        seed=seed,
        start_seconds=start,
        per_kind=per_kind,
        spacing_seconds=spacing,
    )
    last_at = max(f.at_seconds for f in base)  # the rack: the last 10, all at once
    single = [f for f in base if f.at_seconds < last_at or f.kind != "power_off"]
    rack = [f for f in base if f not in single]
    single = [f.model_copy(update={"duration_seconds": DURATIONS.get(f.kind, fault_seconds)})
              for f in single]  # fmt: skip
    t = max(f.end_seconds for f in single) + 30
    rack = [f.model_copy(update={"at_seconds": t, "duration_seconds": fault_seconds})
            for f in rack]  # fmt: skip
    busy = {f.host for f in single + rack}
    eight = [s for s in specs if s.gpu_count == 8 and s.name not in busy]
    hot = []
    if eight and len(specs) >= 20:
        hot = [Fault(kind="overheat", host=eight[0].name, gpu=g, at_seconds=t,
                     duration_seconds=fault_seconds) for g in range(8)]  # fmt: skip
    return sorted(single + rack + hot, key=lambda f: f.at_seconds)


@dataclass
class Page:
    """One message, either system's: when, the alerts it carries firing, the ones it
    announces for the first time."""

    at: float
    firing: list[Any]
    new: list[str] = field(default_factory=list)
    resolved: list[Any] = field(default_factory=list)


@dataclass
class Firing:
    rule: str
    labels: dict[str, str]
    fired_at: float
    fingerprint: str
    until: float = 0.0


# -- the run ------------------------------------------------------------------------------------


def run(*, hosts: int = 100, minutes: float = 20.0, interval: float = 5.0, seed: int = 0,
        per_kind: int = 5, spacing: float = 8.0, start: float = 60.0, fault_seconds: float = 120.0,
        offline: float = 60.0, timing: Timing | None = None, faults: list[Fault] | None = None,
        scale: float = FOR_SCALE, held_idle_for: float = HELD_IDLE_FOR,
        ) -> dict[str, Any]:  # fmt: skip
    """One side-by-side run; ``faults``: an explicit schedule instead of the default one."""
    import psutil

    timing = timing or Timing()
    specs = [replace(s, flaky_gpu=None, goes_offline=False) for s in build_fleet(hosts, seed)]
    if faults is None:
        faults = schedule(specs, seed, per_kind, spacing, start, fault_seconds)
    duration = minutes * 60
    if faults and max(f.end_seconds for f in faults) + 30 > duration:
        raise SystemExit(
            f"--minutes {minutes:g} is too short: the faults end at "
            f"{max(f.end_seconds for f in faults) / 60:.1f} min; give a minute more"
        )
    trace = load_trace()
    replay, shadow_replay = (Replay(specs, trace, seed=seed, load=0.6) for _ in range(2))
    sims = [SimHost(s, seed=seed, interval=interval, now=SIM_T0) for s in specs]
    shadows = [SimHost(s, seed=seed, interval=interval, now=SIM_T0) for s in specs]
    inj = FaultInjector(faults)
    rules = scaled_rules(scale, held_idle_for)
    fors = {r.name: r.for_seconds for r in rules}

    def engine() -> AlertEngine:
        e = AlertEngine(rules, EngineConfig(offline_after_seconds=offline))
        e.config.stale_after_intervals = 3.0
        return e

    eng, shadow = engine(), engine()
    disp = Dispatcher(timing)
    disp.group_by = {r.name: r.group_by for r in rules}
    exporters = {s.name: Exporter(free_port()) for s in specs}
    for ex in exporters.values():
        ex.set_up(True)
    workdir = Path(tempfile.mkdtemp(prefix="alerts-vs-prom-"))
    services = start_services(workdir, {s.name: (exporters[s.name].port, s.group) for s in specs},
                              interval, fors, offline_limit(interval, offline), timing)  # fmt: skip
    try:
        pp = [psutil.Process(p.pid) for p in services.procs]
        cpu0 = [p.cpu_times() for p in pp]
        me0 = time.process_time()
        t0 = time.time()
        seen = {s.name: HostSeen(s.name, t0, interval, group=s.group) for s in specs}
        shadow_seen = {s.name: HostSeen(s.name, t0, interval, group=s.group) for s in specs}
        spool: dict[str, list[Sample]] = {s.name: [] for s in specs}
        fired: list[Alert] = []
        natural: list[Firing] = []
        messages: list[Message] = []
        eng_cpu = 0.0
        rounds = int(duration // interval)
        late = 0.0
        log(
            f"running {rounds} rounds of {interval:g} s ({duration / 60:.1f} min), "
            f"{len(specs)} hosts, {len(faults)} faults; Prometheus {services.prom_url}"
        )
        for k in range(rounds):
            rel0 = k * interval
            _sleep_until(t0 + rel0)
            now = time.time()
            c = time.process_time()
            for h in seen.values():
                h.reachable = inj.reachable(h.name, rel0)
            for e, hs, out in ((eng, seen, None), (shadow, shadow_seen, natural)):
                e.tick(now, hs.values())
                for ev in e.take_events():
                    a = Alert.from_dict(ev["alert"])
                    if out is not None:  # the shadow: its firings and when they ended
                        _natural_event(out, ev["event"], a, now)
                    elif ev["event"] == "firing":
                        fired.append(a)
                    elif ev["event"] == "resolved":
                        disp.resolved(a)
            messages += disp.flush(list(eng.alerts.values()), [], now)
            eng_cpu += time.process_time() - c
            replay.advance(replay.start + rel0)
            shadow_replay.advance(shadow_replay.start + rel0)
            for i, (sim, sh) in enumerate(zip(sims, shadows, strict=True)):
                rel = rel0 + interval * i / len(sims)
                late = max(late, time.time() - (t0 + rel))
                _sleep_until(t0 + rel)
                name = sim.spec.name
                wall = SIM_T0 + rel

                def wall_of(tt: float, rp: Replay = replay) -> float:
                    return SIM_T0 + (tt - rp.start)

                inj.begin(sim, rel)
                sim.apply(replay, replay.jobs_on(sim.spec.index), replay.start + rel, wall,
                          wall_of)  # fmt: skip
                inj.hold(sim, rel)
                sample = sim.collect()
                sh.apply(shadow_replay, shadow_replay.jobs_on(sh.spec.index),
                         shadow_replay.start + rel, wall,
                         lambda tt: SIM_T0 + (tt - shadow_replay.start))  # fmt: skip
                quiet = sh.collect()
                now = time.time()
                c = time.process_time()
                shadow.observe(quiet.model_copy(update={"ts": now}), now=now, skew_seconds=0.0,
                               group=sh.spec.group)  # fmt: skip
                shadow_seen[name].last_received = now
                eng_cpu += time.process_time() - c
                sends, delivers = inj.sends(name, rel), inj.delivers(name, rel)
                exporters[name].set_up(sends and delivers)
                if not sends:
                    continue
                skew = inj.clock_offset(name, rel)
                sample = sample.model_copy(update={"ts": now + skew})
                if delivers:
                    exporters[name].update(sample)
                spool[name].append(sample)
                if not delivers:
                    continue
                c = time.process_time()
                for s in spool[name]:  # the spool delivers in order, the late ones first
                    eng.observe(s, now=now, skew_seconds=skew, group=sim.spec.group)
                eng_cpu += time.process_time() - c
                spool[name].clear()
                seen[name].last_received = now
            if k % max(1, rounds // 20) == 0:
                log(f"  {100 * k / rounds:3.0f}% {rel0 / 60:5.1f} min: gpufleet {len(fired)} "
                    f"fired, {len(messages)} messages; Alertmanager {len(services.receiver.posts)}"
                    f" messages; behind by up to {late:.1f} s")  # fmt: skip
                late = 0.0
        end = time.time()
        time.sleep(interval + 1)  # Prometheus's last evaluation is stored
        me_cpu = time.process_time() - me0
        cpu1 = [p.cpu_times() for p in pp]
        prom_cpu = sum(
            b.user + b.system - a.user - a.system for a, b in zip(cpu0, cpu1, strict=True)
        )
        prom_fired = prom_firings(services.prom_url, t0, end, interval)
        prom_pages = am_pages(services.receiver.posts)
        posts = list(services.receiver.posts)
    finally:
        services.stop()
        for ex in exporters.values():
            ex.set_up(False)
        shutil.rmtree(workdir, ignore_errors=True)
    for n in natural:
        n.until = n.until or end
    slack = 2 * interval + eng.config.resolve_hold_seconds
    nat_gp = _natural_indices(fired, natural, slack, {r.name: r.name for r in rules})
    nat_prom = _natural_indices(prom_fired, natural, slack, {r.name: r.gp_rule for r in PROM_RULES})
    common = {"t0": t0, "offline": offline, "message_slack": timing.group_interval_seconds}
    gp = score(faults, inj, fired, messages, rules, interval, nat_gp, **common)
    prom = {
        which: score(faults, inj, prom_fired, prom_pages, rules, interval, nat_prom,
                     expected=expected_map(which), **common)
        for which in ("strict", "lenient")
    }  # fmt: skip
    for q, pages, expected in (
        (gp, messages, None),
        *((prom[w], prom_pages, expected_map(w)) for w in ("strict", "lenient")),
    ):
        q["told_only_resolved"] = _told_only_resolved(
            q, faults, pages, t0, expected, timing.group_interval_seconds + 600
        )
    return {
        "am_posts": posts,
        "hosts": hosts, "interval_seconds": interval, "minutes": minutes, "seed": seed,
        "faults": len(faults), "fault_end_minutes": max((f.end_seconds for f in faults),
                                                        default=0) / 60,
        "offline_limit_seconds": offline_limit(interval, offline),
        "fors": fors, "gpufleet": gp, "prometheus": prom,
        "natural_shadow_by_rule": _count(n.rule for n in natural),
        "cpu": {"bench_process": me_cpu, "gpufleet_engines": eng_cpu,
                "prometheus_and_alertmanager": prom_cpu, "wall": end - t0},
        "gp_firings": [(a.rule, a.labels.get("host"), a.labels.get("gpu"), a.fired_at - t0)
                       for a in fired],
        "prom_firings": [(a.rule, a.labels.get("host"), a.labels.get("gpu"), a.fired_at - t0)
                         for a in prom_fired],
        "faults_list": [f.model_dump() for f in faults],
    }  # fmt: skip


def _told_only_resolved(
    q: dict[str, Any],
    faults: list[Fault],
    pages: list[Any],
    t0: float,
    expected: dict[str, tuple[str, ...]] | None,
    window: float,
) -> int:
    """Incidents no message announced firing, but one told as resolved (the alert fired and
    cleared between two messages of its group)."""
    n = 0
    for inc in q["incidents"]:
        if inc["messages"]:
            continue
        fs = [
            f
            for f in faults
            if f.kind == inc["kind"] and abs(f.at_seconds / 3600 - inc["at_h"]) < 1e-9
        ]
        lo, hi = t0 + fs[0].at_seconds, t0 + max(f.end_seconds for f in fs) + window
        n += any(
            lo <= m.at <= hi and any(_matches(f, a, expected) for f in fs for a in m.resolved)
            for m in pages
        )
    return n


def _sleep_until(t: float) -> None:
    d = t - time.time()
    if d > 0:
        time.sleep(d)


def _natural_event(out: list[Firing], event: str, a: Alert, now: float) -> None:
    if event == "firing":
        out.append(Firing(a.rule, dict(a.labels), a.fired_at or now, a.fingerprint))
    elif event == "resolved":
        for n in reversed(out):
            if n.fingerprint == a.fingerprint and not n.until:
                n.until = now
                break


def _natural_indices(fired: list[Any], natural: list[Firing], slack: float,
                     condition: dict[str, str]) -> set[int]:  # fmt: skip
    """Firings at a time and place where the fault-free shadow fired the same condition."""
    spans: dict[tuple[str, str | None], list[tuple[str | None, float, float]]] = {}
    for n in natural:
        spans.setdefault((n.rule, n.labels.get("host")), []).append(
            (n.labels.get("gpu"), n.fired_at - slack, n.until + slack)
        )
    out = set()
    for i, a in enumerate(fired):
        rule = condition.get(a.rule)
        for gpu, lo, hi in spans.get((rule, a.labels.get("host")), ()):  # type: ignore[arg-type]
            if (gpu is None or a.labels.get("gpu") in (None, gpu)) and lo <= a.fired_at <= hi:
                out.add(i)
                break
    return out


def prom_firings(url: str, t0: float, end: float, interval: float) -> list[Firing]:
    """Every firing episode Prometheus evaluated: the raw samples of ``ALERTS{alertstate=
    "firing"}`` (one per evaluation while an alert fires), split where they pause."""
    span = int(end - t0) + 120
    q = urllib.parse.quote(f'ALERTS{{alertstate="firing"}}[{span}s]')
    data = _get(f"{url}/api/v1/query?query={q}&time={end + 5}", timeout=60)
    out: list[Firing] = []
    for series in data["data"]["result"]:
        labels = {k: v for k, v in series["metric"].items() if k not in ("__name__", "alertstate")}
        rule = labels.pop("alertname")
        fp = rule + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        last = None
        for ts, _v in series["values"]:
            ts = float(ts)
            if last is None or ts - last > 2.5 * interval:
                out.append(Firing(rule, labels, ts, fp))
            out[-1].until = ts
            last = ts
    return sorted(out, key=lambda f: f.fired_at)


def am_pages(posts: list[tuple[float, dict[str, Any]]]) -> list[Page]:
    """Alertmanager's messages as the receiver got them; an alert is new in the first message
    that carries it firing (its fingerprint and start)."""
    pages, seen = [], set()
    for at, body in posts:
        firing, new, resolved = [], [], []
        for a in body.get("alerts", []):
            if a.get("status") != "firing":
                labels = {k: v for k, v in a["labels"].items() if k != "alertname"}
                resolved.append(Firing(a["labels"]["alertname"], labels, at, ""))
                continue
            labels = {k: v for k, v in a["labels"].items() if k != "alertname"}
            fp = (
                a["labels"]["alertname"]
                + "|"
                + ",".join(
                    f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("severity", "group")
                )
            )
            key = fp + "@" + a.get("startsAt", "")
            firing.append(Firing(a["labels"]["alertname"], labels, at, key))
            if key not in seen:
                seen.add(key)
                new.append(key)
        pages.append(Page(at, firing, new, resolved))
    return pages


def _count(xs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


# -- the table ----------------------------------------------------------------------------------


def _cell(v: dict[str, Any]) -> str:
    if v.get("expect_silence"):
        return f"{v['caught']}/{v['faults']} (silence)"
    return f"{v['caught']}/{v['faults']}"


def _d(x: float) -> str:
    return "-" if x != x else f"{x:.0f}"


def print_table(out: dict[str, Any]) -> None:
    gp, ps, pl = out["gpufleet"], out["prometheus"]["strict"], out["prometheus"]["lenient"]
    print(f"\n## Alerts side by side: {out['hosts']} hosts, {out['interval_seconds']:g} s "
          f"interval, {out['minutes']:g} min real time ({out['fault_end_minutes']:.1f} min of "
          f"faults, then none), {out['faults']} faults, seed {out['seed']}\n")  # fmt: skip
    print(
        "| fault | gpufleet rule | right | delay p50 / p95 s | Prometheus alert (strict) | "
        "right | delay p50 / p95 s | lenient: alerts | right | delay p50 / p95 s | bound s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, g in gp["by_kind"].items():
        s, le = ps["by_kind"][kind], pl["by_kind"][kind]
        print(f"| {kind} | {g['rule']} | {_cell(g)} | {_d(g['delay_p50'])} / "
              f"{_d(g['delay_p95'])} | {s['rule']} | {_cell(s)} | {_d(s['delay_p50'])} / "
              f"{_d(s['delay_p95'])} | {le['rule']} | {_cell(le)} | {_d(le['delay_p50'])} / "
              f"{_d(le['delay_p95'])} | {g['bound_seconds']:.0f} |")  # fmt: skip
    print()
    print("| | gpufleet | Prometheus strict | Prometheus lenient |")
    print("|---|---|---|---|")
    print(f"| recall | {100 * gp['recall']:.1f}% | {100 * ps['recall']:.1f}% | "
          f"{100 * pl['recall']:.1f}% |")  # fmt: skip
    print(
        f"| precision (firings explained by a fault) | {100 * gp['precision']:.1f}% "
        f"({gp['explained']}/{gp['fired']}) | {100 * ps['precision']:.1f}% ({ps['explained']}/"
        f"{ps['fired']}) | {100 * pl['precision']:.1f}% ({pl['explained']}/{pl['fired']}) |"
    )
    print(f"| precision without the replay's own incidents | "
          f"{100 * gp['precision_not_natural']:.1f}% | {100 * ps['precision_not_natural']:.1f}% "
          f"| {100 * pl['precision_not_natural']:.1f}% |")  # fmt: skip
    for label, key in (("natural firings", "natural_by_rule"),
                       ("unexplained firings", "unexplained_by_rule")):  # fmt: skip
        print(f"| {label} | {_short(gp[key])} | {_short(ps[key])} | {_short(pl[key])} |")
    for label, fn in (
        ("messages per single-fault incident (mean, min-max)", _single),
        ("messages: rack of 10 hosts down / 8 GPUs of a host hot", _multi),
    ):
        print(f"| {label} | {fn(gp)} | {fn(ps)} | {fn(pl)} |")  # fmt: skip
    print(
        f"| incidents told only as resolved (fired and cleared between two messages of its "
        f"group) | {gp['told_only_resolved']} | {ps['told_only_resolved']} | "
        f"{pl['told_only_resolved']} |"
    )
    print(f"| messages in all | {gp['messages']} | {ps['messages']} | |")
    cpu = out["cpu"]
    print(
        f"\nCPU over {cpu['wall'] / 60:.1f} min: Prometheus + Alertmanager "
        f"{cpu['prometheus_and_alertmanager']:.1f} s; gpufleet's engines (the run's and the "
        f"shadow's) {cpu['gpufleet_engines']:.1f} s; the bench process in all (simulated hosts "
        f"and their shadows, exporters, engines) {cpu['bench_process']:.1f} s"
    )
    print(f"the shadow fleet's own incidents (gpufleet rules): {out['natural_shadow_by_rule']}")
    print("for (s): " + ", ".join(f"{k} {v:g}" for k, v in out["fors"].items())
          + f"; offline limit {out['offline_limit_seconds']:g} s")  # fmt: skip


def _short(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def _single(q: dict[str, Any]) -> str:
    xs = [i["messages"] for i in q["incidents"] if i["faults"] == 1]
    return f"{statistics.mean(xs):.2f} ({min(xs)}-{max(xs)})" if xs else "-"


def _multi(q: dict[str, Any]) -> str:
    xs = [f"{i['messages']}" for i in q["incidents"] if i["faults"] > 1]
    return " / ".join(xs) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--minutes", type=float, default=20.0, help="real time of the whole run")
    ap.add_argument("--interval", type=float, default=5.0, help="collection = scrape interval")
    ap.add_argument("--per-kind", type=int, default=5, help="faults of each kind")
    ap.add_argument("--spacing", type=float, default=8.0, help="seconds between fault starts")
    ap.add_argument("--fault-seconds", type=float, default=120.0, help="how long a fault lasts")
    ap.add_argument("--offline", type=float, default=60.0, help="silence before a host is down")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="also write the results (with every firing)")
    args = ap.parse_args()
    out = run(hosts=args.hosts, minutes=args.minutes, interval=args.interval, seed=args.seed,
              per_kind=args.per_kind, spacing=args.spacing, fault_seconds=args.fault_seconds,
              offline=args.offline)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    print_table(out)


if __name__ == "__main__":
    main()
