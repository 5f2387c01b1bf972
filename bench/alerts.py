"""Alert quality by fault injection, and the cost of rule evaluation (docs/alerts.md).

    nice -n 10 .venv/bin/python bench/alerts.py                   # the full table (~10 min)
    .venv/bin/python bench/alerts.py --hosts 30 --quiet-hours 2   # a quick look
    .venv/bin/python bench/alerts.py --cost-only                  # evaluation cost only

**Quality.** A replayed fleet (``gpufleet.demo``: the Philly trace's jobs on simulated hosts,
read by the agent's own collector over a fake NVML) runs on a simulated clock with the default
fault schedule (``gpufleet.demo.faults.default_schedule``: every kind 5 times on distinct
hosts, a rack of 10 hosts losing power at once, a host whose 8 GPUs overheat at once), then a
stretch with no faults. Samples go to the alert engine as the server hands them over (newest
per host, in arrival order, spooled ones late after a network cut); the engine and the
dispatcher run with the built-in rules and default timing. A probe of silent hosts answers as
the simulated network would (off or cut: no answer; agent killed: answers).

Scored against the injector's truth:
- recall: faults whose expected rule fired on the right host (and GPU) during the fault;
- precision: firing alerts explained by an injected fault (same host, expected rule, during
  the fault or its clearing); the rest are listed by rule: the replay's own load also makes
  real conditions (a host whose jobs use all its memory), which are reported separately;
- detection delay: firing time - fault start, p50/p95 per rule, against the rule's ``for``
  (plus the offline limit for silence) + 2 collection intervals;
- messages per incident: first pages that mention the incident's alerts.

This is the alert logic closed-loop on the replay, not the transport: no HTTP and no store
(those are measured by bench/ingest.py). Prometheus + Alertmanager side by side, in real time,
is bench/alerts_vs_prometheus.py (scored by :func:`score` here).

**Cost.** 50 rules (the 15 built-in + 35 more on the same metrics) on 1,000 hosts' samples:
alert CPU per batch (observe + the tick's share at a 5 s interval) against the ingest CPU per
batch of the same batches (JSON validation + the embedded store's writer, in process; HTTP is
not counted, which makes the ingest side cheaper and the ratio stricter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from gpufleet.alerts.engine import Alert, AlertEngine, EngineConfig, HostSeen
from gpufleet.alerts.notify import Dispatcher, Timing
from gpufleet.alerts.rules import builtin_rules, parse_rule
from gpufleet.demo.faults import EXPECTED, GPU_KINDS, Fault, FaultInjector, default_schedule
from gpufleet.demo.fleet import build_fleet
from gpufleet.demo.replay import Replay
from gpufleet.demo.simhost import SimHost
from gpufleet.demo.trace import load_trace
from gpufleet.wire import Sample

T0 = 1_800_000_000.0  # the simulated clock's start (2027-01-15)
OFFLINE_SECONDS = 60.0


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def replay_rounds(sims: list[SimHost], replay: Replay, inj: FaultInjector, interval: float,
                  rounds: int) -> Iterator[tuple[int, float, list[tuple[SimHost, float, float, list[Sample]]]]]:  # fmt: skip
    """The replayed fleet with its faults, one collection round at a time: yields (round,
    seconds since the start, the hosts whose samples arrived in it, in order, each with its
    arrival time, clock skew and the samples its spool delivered, the late ones first)."""
    spool: dict[str, list[Sample]] = {sim.spec.name: [] for sim in sims}
    for k in range(1, rounds + 1):
        rel = k * interval
        replay.advance(replay.start + rel)
        arrived = []
        for i, sim in enumerate(sims):
            t_rel = rel + interval * i / len(sims)
            now = T0 + t_rel
            name = sim.spec.name
            inj.begin(sim, t_rel)
            # the simulated host runs on and is read even when nothing is sent (its sample is
            # dropped): its random draws stay the same as in the fault-free run, so the trace's
            # own incidents on it happen at the same times in both (see "natural" below)
            sim.apply(replay, replay.jobs_on(sim.spec.index), replay.start + t_rel, now,
                      lambda tt: T0 + (tt - replay.start))  # fmt: skip
            inj.hold(sim, t_rel)
            sample = sim.collect()
            if not inj.sends(name, t_rel):
                continue
            skew = inj.clock_offset(name, t_rel)
            spool[name].append(sample.model_copy(update={"ts": now + skew}))
            if not inj.delivers(name, t_rel):
                continue
            arrived.append((sim, now, skew, spool[name]))
            spool[name] = []
        yield k, rel, arrived


def run_quality(n_hosts: int, interval: float, quiet_hours: float, seed: int,
                spacing: float, natural: Callable[[], list[dict[str, Any]]] | None = None,
                ) -> dict[str, Any]:  # fmt: skip
    """One closed-loop run. ``natural``: gives the firings of the same replay without faults
    (the trace's own incidents; asked for at the end, so that run can go on meanwhile in
    another process); None: this *is* that fault-free baseline run."""
    specs = [replace(s, flaky_gpu=None, goes_offline=False) for s in build_fleet(n_hosts, seed)]
    trace = load_trace()
    replay = Replay(specs, trace, seed=seed, load=0.6)
    sims = [SimHost(s, seed=seed, interval=interval, now=T0) for s in specs]
    faults = default_schedule([(s.name, s.group, s.gpu_count) for s in specs], seed=seed,
                              spacing_seconds=spacing)  # fmt: skip
    eight = [s for s in specs if s.gpu_count == 8 and not any(f.host == s.name for f in faults)]
    eight = eight or [s for s in specs if s.gpu_count == 8]
    room = faults[-1].at_seconds + 1800
    faults += [Fault(kind="overheat", host=eight[0].name, gpu=g, at_seconds=room,
                     duration_seconds=900) for g in range(8)]  # fmt: skip
    baseline = natural is None
    inj = FaultInjector([] if baseline else faults)
    last_fault = max(f.end_seconds for f in faults)
    total = last_fault + 1800 + quiet_hours * 3600
    rules = builtin_rules()
    engine = AlertEngine(rules, EngineConfig(offline_after_seconds=OFFLINE_SECONDS))
    engine.config.stale_after_intervals = 3.0
    disp = Dispatcher(Timing())
    disp.group_by = {r.name: r.group_by for r in rules}
    seen = {s.name: HostSeen(s.name, T0, interval, group=s.group) for s in specs}
    fired: list[Alert] = []
    resolved_at: dict[str, list[float]] = {}  # fingerprint -> resolve times
    messages = []
    rounds = int(total // interval)
    cpu0 = time.process_time()
    eval_cpu = 0.0
    for k, rel, arrived in replay_rounds(sims, replay, inj, interval, rounds):
        for sim, now, skew, samples in arrived:
            c = time.process_time()
            for s in samples:
                engine.observe(s, now=now, skew_seconds=skew, group=sim.spec.group)
            eval_cpu += time.process_time() - c
            seen[sim.spec.name].last_received = now
        now = T0 + rel
        for h in seen.values():
            h.reachable = inj.reachable(h.name, rel)
        c = time.process_time()
        engine.tick(now, seen.values())
        for e in engine.take_events():
            a = Alert.from_dict(e["alert"])
            if e["event"] == "firing":
                fired.append(a)
            elif e["event"] == "resolved":
                disp.resolved(a)
                resolved_at.setdefault(a.fingerprint, []).append(now)
        messages += disp.flush(list(engine.alerts.values()), [], now)
        eval_cpu += time.process_time() - c
        if k % max(1, rounds // 20) == 0:
            print(f"  {100 * k / rounds:3.0f}% simulated {rel / 3600:5.1f} h, "
                  f"{len(fired)} fired, {len(messages)} messages", file=sys.stderr)  # fmt: skip
    cpu = time.process_time() - cpu0
    if baseline:
        return {"natural": [{"fingerprint": a.fingerprint, "rule": a.rule,
                             "fired_at": a.fired_at or 0.0, "until": _until(a, resolved_at, now)}
                            for a in fired], "cpu_seconds": cpu}  # fmt: skip
    slack = 2 * interval + engine.config.resolve_hold_seconds
    spans: dict[str, list[tuple[float, float]]] = {}
    for n in natural():
        spans.setdefault(n["fingerprint"], []).append((n["fired_at"] - slack, n["until"] + slack))
    known = [
        i
        for i, a in enumerate(fired)
        if any(lo <= (a.fired_at or 0) <= hi for lo, hi in spans.get(a.fingerprint, ()))
    ]
    return score(faults, inj, fired, messages, rules, interval, set(known)) | {
        "hosts": n_hosts, "interval_seconds": interval, "simulated_hours": total / 3600,
        "quiet_hours": quiet_hours, "faults": len(faults), "seed": seed,
        "cpu_seconds": cpu, "eval_cpu_seconds": eval_cpu,
    }  # fmt: skip


# faults whose effect is the whole host's, whatever GPU the schedule names (a hung NVML call
# blocks every GPU's readings): an alert on any GPU of the host matches
HOST_WIDE = {"nvml_hung"}


def _matches(f: Fault, a: Any, expected: dict[str, tuple[str, ...]] | None = None) -> bool:
    """``a`` (anything with ``rule`` and ``labels``) names the fault: one of the rules that
    count for its kind (``expected``; default: gpufleet's ``EXPECTED``), its host, its GPU."""
    rules = expected[f.kind] if expected is not None else (EXPECTED[f.kind],)
    if a.rule not in rules or a.labels.get("host") != f.host:
        return False
    if f.kind in HOST_WIDE:
        return True
    return not (f.kind in GPU_KINDS and "gpu" in a.labels and a.labels["gpu"] != str(f.gpu))


def offline_limit(interval: float, offline: float = OFFLINE_SECONDS) -> float:
    """When a silent host counts as offline (the server's status rule, live/state.py)."""
    stale = max(3 * interval, 10.0)
    return max(offline, 2 * stale)


def bound(kind: str, fors: dict[str, float], interval: float,
          offline: float = OFFLINE_SECONDS) -> float:  # fmt: skip
    """The target: the rule's for + 2 collection intervals; a silence rule's hold is the
    offline limit (there is no sample to wait for)."""
    silent = kind in ("power_off", "agent_killed", "network_cut")
    hold = offline_limit(interval, offline) if silent else 0
    return fors[EXPECTED[kind]] + 2 * interval + hold


def _until(a: Alert, resolved_at: dict[str, list[float]], end: float) -> float:
    """When the firing that began at ``a.fired_at`` resolved (the run's end if it did not)."""
    return min((t for t in resolved_at.get(a.fingerprint, []) if t >= (a.fired_at or 0)),
               default=end)  # fmt: skip


def score(faults: list[Fault], inj: FaultInjector, fired: list[Any], messages: list,
          rules: list, interval: float, natural: set[int], *, t0: float = T0,
          expected: dict[str, tuple[str, ...]] | None = None,
          offline: float = OFFLINE_SECONDS, message_slack: float = 0.0,
          ) -> dict[str, Any]:  # fmt: skip
    """Recall, precision, delay and messages per incident of one run against the injector's
    truth. ``fired``: firings (``rule``, ``labels``, ``fired_at``, ``fingerprint``);
    ``messages``: pages (``at``, ``firing``, ``new``: fingerprints announced first there);
    ``rules``: gpufleet's rules (their ``for`` and windows make the bounds); ``natural``:
    indices into ``fired`` of the replay's own incidents; ``t0``: the clock of fault time 0;
    ``expected``: the rules that count for each kind (default: gpufleet's ``EXPECTED``; the
    Prometheus side passes its own alert names); ``message_slack``: how much longer than the
    delay bound an incident's first message may come (a group announced less than a group
    interval ago is told again only after it). bench/alerts_vs_prometheus.py scores both
    systems with this."""
    fors = {r.name: r.for_seconds for r in rules}
    windows = {r.name: r.window_seconds for r in rules}
    by_kind: dict[str, dict[str, Any]] = {}
    delays: dict[str, list[float]] = {}
    explained: set[int] = set()
    for f in faults:
        start, end = t0 + f.at_seconds, t0 + f.end_seconds
        rule = EXPECTED[f.kind]
        grace = bound(f.kind, fors, interval, offline)
        hits = [a for a in fired
                if _matches(f, a, expected) and start <= (a.fired_at or 0) <= end + grace]  # fmt: skip
        k = by_kind.setdefault(f.kind, {"faults": 0, "caught": 0})
        k["faults"] += 1
        if f.kind == "network_cut" and f.duration_seconds <= offline_limit(interval, offline):
            # shorter than the offline limit: right is no "down" at all (the spool catches up)
            late = [a for a in fired if _matches(f, a, expected)
                    and start <= (a.fired_at or 0) <= end + grace]  # fmt: skip
            k["caught"] += not late
            k["expect_silence"] = True
            continue
        if hits:
            k["caught"] += 1
            delays.setdefault(f.kind, []).append(min(a.fired_at or 0 for a in hits) - start)
        clear = end + grace + windows[rule] + 600  # increase/sum windows keep firing a while
        for i, a in enumerate(fired):
            if _matches(f, a, expected) and start <= (a.fired_at or 0) <= clear:
                explained.add(i)
    unexplained: dict[str, int] = {}
    true_natural: dict[str, int] = {}
    for i, a in enumerate(fired):
        if i in explained:
            continue
        if i in natural:
            true_natural[a.rule] = true_natural.get(a.rule, 0) + 1
        else:
            unexplained[a.rule] = unexplained.get(a.rule, 0) + 1
    # incidents: faults of one kind starting at the same time form one incident
    incidents: dict[tuple[str, float], list[Fault]] = {}
    for f in faults:
        incidents.setdefault((f.kind, f.at_seconds), []).append(f)
    per_incident = []
    for (kind, at), fs in incidents.items():
        # first pages: messages in which one of the incident's alerts is announced firing
        lo = t0 + at
        hi = (
            t0
            + max(f.end_seconds for f in fs)
            + bound(kind, fors, interval, offline)
            + message_slack
        )
        n = sum(1 for m in messages if lo <= m.at <= hi and any(
            _matches(f, a, expected) and a.fingerprint in m.new for f in fs for a in m.firing))  # fmt: skip
        per_incident.append({"kind": kind, "faults": len(fs), "at_h": at / 3600, "messages": n,
                             "hosts": sorted({f.host for f in fs})[:3]})  # fmt: skip
    return {
        "by_kind": {
            kind: v | {
                "rule": EXPECTED[kind] if expected is None else " / ".join(expected[kind]) or "-",
                "bound_seconds": bound(kind, fors, interval, offline),
                "delay_p50": _pct(delays.get(kind, []), 0.5),
                "delay_p95": _pct(delays.get(kind, []), 0.95),
            } for kind, v in sorted(by_kind.items())
        },
        "recall": sum(v["caught"] for v in by_kind.values()) / max(1, len(faults)),
        "fired": len(fired),
        "explained": len(explained),
        "precision": len(explained) / max(1, len(fired)),
        "unexplained_by_rule": unexplained,
        "natural_by_rule": true_natural,
        "precision_not_natural": len(explained)
        / max(1, len(fired) - sum(true_natural.values())),
        "distinct_alerts": len({a.fingerprint for a in fired}),
        "incidents": per_incident,
        "messages": len(messages),
        "truth_events": len(inj.truth),
    }  # fmt: skip


# -- same events -----------------------------------------------------------------------------


def dump_events(path: str, n_hosts: int, interval: float, quiet_hours: float, seed: int,
                spacing: float) -> int:  # fmt: skip
    """Every event of the engine on the replay with the fault schedule and the 50 cost rules
    (the 35 extra ones given thresholds that fire), and the alerts after each tick, to a JSON
    file: run it with two versions of gpufleet (``PYTHONPATH``) and ``--compare-events``. Uses
    the engine's public calls only (observe, tick, take_events, alerts)."""
    low = {"temperature_celsius": 0.01, "power_cap_ratio": 1e-4, "utilization_gpu_percent": 50,
           "gpu_memory_used_ratio": 0.5, "memory_used_bytes": 2**33, "cpu_percent": 50,
           "load1_per_cpu": 0.5, "memory_used_ratio": 0.5, "swap_used_ratio": 0.01}  # fmt: skip
    rules = [r.model_copy(update={"threshold": low[r.metric]}) if r.name.startswith("extra_")
             else r for r in fifty_rules()]  # fmt: skip
    specs = [replace(s, flaky_gpu=None, goes_offline=False) for s in build_fleet(n_hosts, seed)]
    replay = Replay(specs, load_trace(), seed=seed, load=0.6)
    sims = [SimHost(s, seed=seed, interval=interval, now=T0) for s in specs]
    faults = default_schedule([(s.name, s.group, s.gpu_count) for s in specs], seed=seed,
                              spacing_seconds=spacing)  # fmt: skip
    inj = FaultInjector(faults)
    total = max(f.end_seconds for f in faults) + 1800 + quiet_hours * 3600
    engine = AlertEngine(rules, EngineConfig(offline_after_seconds=OFFLINE_SECONDS))
    seen = {s.name: HostSeen(s.name, T0, interval, group=s.group) for s in specs}
    out: list[Any] = []
    for _k, rel, arrived in replay_rounds(sims, replay, inj, interval, int(total // interval)):
        for sim, now, skew, samples in arrived:
            for s in samples:
                engine.observe(s, now=now, skew_seconds=skew, group=sim.spec.group)
            seen[sim.spec.name].last_received = now
        for h in seen.values():
            h.reachable = inj.reachable(h.name, rel)
        engine.tick(T0 + rel, seen.values())
        for e in engine.take_events():
            a = e["alert"]
            out.append([e["at"], e["event"], a["fingerprint"], a["rule"], a["state"], a["value"],
                        a["fired_at"], a["clear_since"], a["flaps"],
                        sorted(a["labels"].items()), a["summary"]])  # fmt: skip
        out.append(["tick", sorted((a.fingerprint, a.state, a.value, a.active_since)
                                   for a in engine.alerts.values())])  # fmt: skip
    Path(path).write_text(json.dumps(out))
    return len(out)


def compare_events(a_path: str, b_path: str) -> dict[str, Any]:
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))

    def ticks(rows: list[Any]) -> list[tuple[list[str], str]]:
        out, cur = [], []
        for r in rows:
            if r[0] == "tick":
                out.append((sorted(map(json.dumps, cur)), json.dumps(r)))
                cur = []
            else:
                cur.append(r)
        return out

    ta, tb = ticks(a), ticks(b)
    return {"events": [sum(r[0] != "tick" for r in x) for x in (a, b)],
            "ticks": [len(ta), len(tb)],
            "same_in_order": a == b,
            "records_out_of_order_or_different": sum(x != y for x, y in zip(a, b, strict=False)),
            "ticks_with_the_same_events_and_alerts": sum(x == y for x, y in zip(ta, tb,
                                                                                 strict=False))}  # fmt: skip


# -- cost ----------------------------------------------------------------------------------------


def fifty_rules() -> list:
    rules = builtin_rules()
    extra = []
    gpu = ["temperature_celsius", "power_cap_ratio", "utilization_gpu_percent",
           "gpu_memory_used_ratio", "memory_used_bytes"]  # fmt: skip
    host = ["cpu_percent", "load1_per_cpu", "memory_used_ratio", "swap_used_ratio"]
    i = 0
    while len(rules) + len(extra) < 50:
        metric = gpu[i % len(gpu)] if i % 3 else host[i % len(host)]
        scope = "host" if metric in host else "gpu"
        kind = ["threshold", "rate", "threshold", "sum"][i % 4]
        extra.append(parse_rule({"name": f"extra_{i:02d}", "scope": scope, "metric": metric,
                                 "kind": kind, "op": ">", "threshold": 1e12,
                                 "for_seconds": 60}))  # fmt: skip
        i += 1
    return rules + extra


def _base_samples(seed: int, t0: float = T0) -> list[Sample]:
    """50 replayed hosts' samples an hour into the trace (the cost runs reuse them); ``t0``:
    the clock they are read at (a server refuses timestamps from its future)."""
    specs = [replace(s, flaky_gpu=None, goes_offline=False) for s in build_fleet(50, seed)]
    replay = Replay(specs, load_trace(), seed=seed, load=0.6)
    sims = [SimHost(s, seed=seed, interval=5.0, now=t0) for s in specs]
    replay.advance(replay.start + 3600)
    base = []
    for sim in sims:
        sim.apply(replay, replay.jobs_on(sim.spec.index), replay.start + 3600, t0,
                  lambda tt: t0)  # fmt: skip
        base.append(sim.collect())
    return base


def run_cost(n_hosts: int, rounds: int, seed: int) -> dict[str, Any]:
    from gpufleet.store import IngestItem, open_store
    from gpufleet.wire import Batch

    base = _base_samples(seed)
    bodies = []
    for r in range(rounds):
        for i in range(n_hosts):
            s = base[i % len(base)].model_copy(update={"host": f"h{i:04d}", "ts": T0 + 5 * r})
            b = Batch(batch_id=f"cost-{r}-{i}-{seed}", source="replay", sent_at=T0 + 5 * r,
                      samples=[s])  # fmt: skip
            bodies.append(b.model_dump_json().encode())
    # ingest: validation + the store's writer (all threads of this process)
    with tempfile.TemporaryDirectory() as d:
        store = open_store(str(Path(d) / "cost.duckdb"))

        async def ingest_all() -> None:
            pending = []
            for body in bodies:
                batch = Batch.model_validate_json(body)
                pending.append(store.ingest(IngestItem(batch, "bench", batch.sent_at, 0.0, body)))
                if len(pending) >= 500:
                    await asyncio.gather(*pending)
                    pending = []
            await asyncio.gather(*pending)

        c0 = time.process_time()
        asyncio.run(ingest_all())
        ingest_cpu = time.process_time() - c0
        store.close()
    batches = [Batch.model_validate_json(b) for b in bodies]
    engine = AlertEngine(fifty_rules())
    seen = {f"h{i:04d}": HostSeen(f"h{i:04d}", T0, 5.0) for i in range(n_hosts)}
    c0 = time.process_time()
    first_cpu = observe_cpu = 0.0
    for r in range(rounds):
        c1 = time.process_time()
        for i in range(n_hosts):
            b = batches[r * n_hosts + i]
            engine.observe(b.samples[0], now=T0 + 5 * r + 0.1)
            seen[b.samples[0].host].last_received = T0 + 5 * r + 0.1
        observe_cpu += time.process_time() - c1  # the ingest path's share (the rest: the tick)
        engine.tick(T0 + 5 * r + 5, seen.values())
        if r == 0:  # every series, window and pending alert is new in the first round
            first_cpu = time.process_time() - c0
    alert_cpu = time.process_time() - c0
    n = len(bodies)
    warm = 1000 * (alert_cpu - first_cpu) / max(1, n - n_hosts)
    return {"hosts": n_hosts, "rounds": rounds, "rules": len(engine.rules), "batches": n,
            "ingest_ms_per_batch": 1000 * ingest_cpu / n,
            "alert_ms_per_batch": 1000 * alert_cpu / n,
            "observe_ms_per_batch": 1000 * observe_cpu / n,
            "ratio": alert_cpu / ingest_cpu, "evaluations_per_batch": engine.evaluations / n,
            "alert_ms_per_batch_after_first_round": warm,
            "ratio_after_first_round": warm / (1000 * ingest_cpu / n)}  # fmt: skip


def _server_cpu(bodies: list[bytes], alerts_cfg: dict[str, Any]) -> tuple[float, float]:
    """CPU seconds a real ``gpufleet server`` (and its ingest workers) spends on ``bodies``
    posted over HTTP, idle time subtracted; and the alert engine's own share of it (its thread
    time as the server counts it: observing samples, ticks, badges; 0 with alerts off)."""
    import os
    import socket
    import subprocess

    import httpx
    import psutil
    import yaml

    def cpu(p: psutil.Process) -> float:
        total = 0.0
        for q in [p, *p.children(recursive=True)]:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    busy = 0.0
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "gpufleet.yaml"
        cfg.write_text(yaml.safe_dump({"alerts": alerts_cfg}))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        tok = subprocess.run(
            [sys.executable, "-m", "gpufleet", "token", "create", "bench", "--data-dir", d],
            capture_output=True,
            text=True,
            check=True,
        )
        env = {**os.environ, "GPUFLEET_LOG_LEVEL": "warning"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpufleet",
                "server",
                "--data-dir",
                d,
                "--port",
                str(port),
                "--config",
                str(cfg),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            time.sleep(3)  # start-up work settles
            p = psutil.Process(proc.pid)
            c0, w0 = cpu(p), time.monotonic()
            time.sleep(5)
            idle_rate = (cpu(p) - c0) / (time.monotonic() - w0)
            headers = {
                "Authorization": f"Bearer {tok.stdout.strip()}",
                "Content-Type": "application/json",
            }
            c0, w0 = cpu(p), time.monotonic()

            async def post_all() -> None:  # 64 at a time, as many agents would
                limits = httpx.Limits(max_connections=64)
                async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60,
                                             limits=limits) as client:  # fmt: skip
                    sem = asyncio.Semaphore(64)

                    async def one(body: bytes) -> None:
                        async with sem:
                            r = await client.post("/api/v1/ingest", content=body)
                            r.raise_for_status()

                    await asyncio.gather(*(one(b) for b in bodies))

            asyncio.run(post_all())
            for _ in range(600):  # the store took every batch
                if httpx.get(url + "/healthz").json()["writer_queue"] == 0:
                    break
                time.sleep(0.1)
            time.sleep(6)  # an evaluation tick or two after the last batch
            used = cpu(p) - c0 - idle_rate * (time.monotonic() - w0)
            if alerts_cfg.get("enabled"):  # the engine's own thread time, as the server counts
                busy = httpx.get(url + "/api/v1/alerts/stats").json()["busy_seconds"]
        finally:
            proc.terminate()
            proc.wait(30)
    return used, busy


def run_cost_server(n_hosts: int, rounds: int, seed: int) -> dict[str, Any]:
    """The same batches through real servers: alerts off, then on with 50 rules."""
    from gpufleet.wire import Batch

    now = time.time() - rounds * 5 - 5
    base = _base_samples(seed, now - 60)
    bodies = []
    for r in range(rounds):
        for i in range(n_hosts):
            s = base[i % len(base)].model_copy(update={"host": f"h{i:04d}", "ts": now + 5 * r})
            b = Batch(batch_id=f"srv-{r}-{i}-{seed}-{int(now)}", source="replay",
                      sent_at=now + 5 * r, samples=[s])  # fmt: skip
            bodies.append(b.model_dump_json().encode())
    extra = [r.model_dump() for r in fifty_rules() if r.name.startswith("extra_")]
    off, _ = _server_cpu(bodies, {"enabled": False})
    on, busy = _server_cpu(bodies, {"enabled": True, "rules": extra})
    n = len(bodies)
    return {"batches": n, "server_ms_per_batch_alerts_off": 1000 * off / n,
            "server_ms_per_batch_alerts_on": 1000 * on / n,
            "alerts_share": (on - off) / off,
            "engine_ms_per_batch_in_server": 1000 * busy / n,
            "engine_share_in_server": busy / max(1e-9, on - busy)}  # fmt: skip


def _count(xs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--interval", type=float, default=30.0, help="collection interval (s)")
    ap.add_argument("--quiet-hours", type=float, default=24.0, help="fault-free stretch")
    ap.add_argument("--spacing", type=float, default=600.0, help="seconds between faults")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--cost-hosts", type=int, default=1000)
    ap.add_argument("--cost-rounds", type=int, default=10)
    ap.add_argument(
        "--server-cost",
        action="store_true",
        help="also: real servers' CPU per batch over HTTP, alerts off vs on",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dump-events", metavar="FILE",
                    help="write every engine event on the replay (--hosts, --interval, "
                    "--quiet-hours, --spacing, first seed) to FILE, and stop")  # fmt: skip
    ap.add_argument(
        "--compare-events",
        nargs=2,
        metavar="FILE",
        help="compare two --dump-events files (two versions of the engine)",
    )
    args = ap.parse_args()
    if args.dump_events:
        n = dump_events(args.dump_events, args.hosts, args.interval, args.quiet_hours,
                        args.seeds[0], args.spacing)  # fmt: skip
        print(f"{n} records written to {args.dump_events}")
        return
    if args.compare_events:
        print(json.dumps(compare_events(*args.compare_events)))
        return
    out: dict[str, Any] = {}
    if not args.cost_only:
        out["quality"] = []
        for seed in args.seeds:
            print(f"quality: seed {seed}, {args.hosts} hosts, {args.interval:g} s interval",
                  file=sys.stderr)  # fmt: skip
            with ProcessPoolExecutor(1) as pool:  # the fault-free run alongside, on a core
                job = pool.submit(run_quality, args.hosts, args.interval, args.quiet_hours,
                                  seed, args.spacing)  # fmt: skip
                q = run_quality(
                    args.hosts,
                    args.interval,
                    args.quiet_hours,
                    seed,
                    args.spacing,
                    natural=lambda job=job: job.result()["natural"],
                )
                base = job.result()
            q["baseline_by_rule"] = _count(n["rule"] for n in base["natural"])
            q["baseline_cpu_seconds"] = base["cpu_seconds"]
            out["quality"].append(q)
    if not args.quality_only:
        costs = []
        for seed in args.seeds:
            print(f"cost: seed {seed}", file=sys.stderr)
            costs.append(run_cost(args.cost_hosts, args.cost_rounds, seed))
        out["cost"] = costs
    if args.server_cost:
        out["server_cost"] = [run_cost_server(args.cost_hosts, args.cost_rounds, s)
                              for s in args.seeds]  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return
    print_tables(out)


def print_tables(out: dict[str, Any]) -> None:
    for q in out.get("quality", []):
        print(f"\n## Alert quality: {q['hosts']} hosts, {q['interval_seconds']:g} s interval, "
              f"{q['simulated_hours']:.1f} h simulated ({q['quiet_hours']:g} h without "
              f"faults), {q['faults']} faults, seed {q['seed']}\n")  # fmt: skip
        print("| fault | rule expected | faults | right | delay p50 s | delay p95 s | bound s |")
        print("|---|---|---|---|---|---|---|")
        for kind, v in q["by_kind"].items():
            rule = "none (cut < offline limit)" if v.get("expect_silence") else v["rule"]
            print(
                f"| {kind} | {rule} | {v['faults']} | {v['caught']} | "
                f"{v['delay_p50']:.0f} | {v['delay_p95']:.0f} | {v['bound_seconds']:.0f} |"
            )
        print(f"\nrecall {100 * q['recall']:.1f}%; precision {100 * q['precision']:.1f}% "
              f"({q['explained']} of {q['fired']} firings, {q['distinct_alerts']} distinct "
              f"alerts, explained by an injected fault)")  # fmt: skip
        print(
            f"the trace's own incidents (firings of the same replay without faults): "
            f"{q['baseline_by_rule'] or 'none'}"
        )
        print(f"of this run's firings, natural (also in the fault-free run): "
              f"{q['natural_by_rule'] or 'none'}; precision on the firings that are not "
              f"natural incidents {100 * q['precision_not_natural']:.1f}%; unexplained (false): "
              f"{q['unexplained_by_rule'] or 'none'}")  # fmt: skip
        multi = [i for i in q["incidents"] if i["faults"] > 1]
        single = [i["messages"] for i in q["incidents"] if i["faults"] == 1]
        for i in multi:
            print(f"incident: {i['kind']} x{i['faults']} at {i['at_h']:.1f} h -> "
                  f"{i['messages']} message(s)")  # fmt: skip
        if single:
            print(f"single-fault incidents: {len(single)}; messages min {min(single)}, max "
                  f"{max(single)}, mean {statistics.mean(single):.2f}")  # fmt: skip
            for i in q["incidents"]:
                if i["faults"] == 1 and i["messages"] != 1:
                    print(f"  {i['kind']} on {i['hosts'][0]} at {i['at_h']:.2f} h -> "
                          f"{i['messages']} message(s)")  # fmt: skip
        print(f"total messages {q['messages']}; bench CPU {q['cpu_seconds']:.0f} s "
              f"(alert engine {q['eval_cpu_seconds']:.1f} s)")  # fmt: skip
    for c in out.get("cost", []):
        print(f"\n## Evaluation cost: {c['rules']} rules, {c['hosts']} hosts x {c['rounds']} "
              f"rounds ({c['batches']} batches)\n")  # fmt: skip
        print(
            "| ingest ms/batch (validate + store) | alerts ms/batch (observe + tick) | ratio "
            "| alerts ms/batch after the first round | ratio | of which observe ms/batch |"
        )
        print("|---|---|---|---|---|---|")
        observe = c.get("observe_ms_per_batch")
        print(f"| {c['ingest_ms_per_batch']:.3f} | {c['alert_ms_per_batch']:.3f} | "
              f"{100 * c['ratio']:.1f}% | {c['alert_ms_per_batch_after_first_round']:.3f} | "
              f"{100 * c['ratio_after_first_round']:.1f}% | "
              f"{'-' if observe is None else f'{observe:.4f}'} |")  # fmt: skip
    costs = out.get("cost", [])
    if len(costs) > 1:
        for k in ("ingest_ms_per_batch", "alert_ms_per_batch", "ratio",
                  "alert_ms_per_batch_after_first_round", "ratio_after_first_round"):  # fmt: skip
            xs = [c[k] for c in costs]
            print(f"{k}: mean {statistics.mean(xs):.4f}, min {min(xs):.4f}, max {max(xs):.4f} "
                  f"over {len(xs)} seeds")  # fmt: skip
    for c in out.get("server_cost", []):
        print(f"\n## Server CPU per batch over HTTP ({c['batches']} batches; alerts on: 50 "
              "rules)\n")  # fmt: skip
        print(
            "| alerts off ms/batch | alerts on ms/batch | (on - off) / off | engine ms/batch "
            "(its own thread time, in the server) | engine / rest of the server |"
        )
        print("|---|---|---|---|---|")
        print(
            f"| {c['server_ms_per_batch_alerts_off']:.3f} | "
            f"{c['server_ms_per_batch_alerts_on']:.3f} | {100 * c['alerts_share']:.1f}% | "
            f"{c['engine_ms_per_batch_in_server']:.3f} | {100 * c['engine_share_in_server']:.1f}% |"
        )


if __name__ == "__main__":
    main()
