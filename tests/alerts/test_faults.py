"""Fault injection into replayed hosts: the schedule file's errors, and each kind raising its
rule (and only that) through the agent's collector and the alert engine."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpufleet.alerts.engine import AlertEngine, EngineConfig, HostSeen
from gpufleet.alerts.rules import builtin_rules
from gpufleet.demo.faults import (
    EXPECTED,
    KINDS,
    Fault,
    FaultInjector,
    default_schedule,
    load_faults,
)
from gpufleet.demo.fleet import build_fleet
from gpufleet.demo.simhost import SimHost
from gpufleet.errors import GpufleetError

T0 = 1_800_000_000.0


def test_schedule_file_errors_name_the_entry_and_field(tmp_path):
    hosts = {"a": 8, "b": 2}
    p = tmp_path / "faults.yaml"
    p.write_text("- {kind: gpu_lost, host: a, gpu: 1, at_seconds: 10, duration_seconds: 60}\n"
                 "- {kind: melt, host: a, at_seconds: 10, duration_seconds: 60}\n")  # fmt: skip
    with pytest.raises(GpufleetError, match=r"\[1\]\.kind: Input should be 'power_off'"):
        load_faults(p, hosts)
    p.write_text("- {kind: overheat, host: b, gpu: 5, at_seconds: 0, duration_seconds: 60}\n")
    with pytest.raises(GpufleetError, match=r"\[0\]\.gpu: overheat needs a GPU index below 2"):
        load_faults(p, hosts)
    p.write_text("- {kind: power_off, host: zz, at_seconds: 0, duration_seconds: 60}\n")
    with pytest.raises(GpufleetError, match=r"\[0\]\.host: no replayed host named 'zz'"):
        load_faults(p, hosts)
    p.write_text("- {kind: power_off, host: a, at_seconds: 5, duration_seconds: 60}\n")
    assert load_faults(p, hosts) == [Fault(kind="power_off", host="a", at_seconds=5,
                                           duration_seconds=60)]  # fmt: skip


def test_default_schedule_has_every_kind_five_times_and_a_rack():
    specs = build_fleet(100, 0)
    faults = default_schedule([(s.name, s.group, s.gpu_count) for s in specs])
    for kind in KINDS:
        assert sum(f.kind == kind for f in faults) >= 5, kind
    starts = {}
    for f in faults:
        starts.setdefault((f.kind, f.at_seconds), []).append(f.host)
    assert max(len(h) for h in starts.values()) == 10  # the rack


@pytest.mark.parametrize("kind", ["gpu_lost", "ghost_memory", "disk_fill", "overheat", "ecc",
                                  "clock_skew", "power_off", "agent_killed", "network_cut"])  # fmt: skip
def test_each_fault_raises_its_rule_and_clears(kind):
    spec = replace(build_fleet(3, 0)[0], flaky_gpu=None, goes_offline=False)
    sim = SimHost(spec, seed=0, interval=15, now=T0)
    fault = Fault(kind=kind, host=spec.name, gpu=1 if kind in ("gpu_lost", "ghost_memory",
                  "overheat", "ecc") else None, at_seconds=300, duration_seconds=900)  # fmt: skip
    inj = FaultInjector([fault])
    engine = AlertEngine(builtin_rules(), EngineConfig(resolve_hold_seconds=60))
    seen = HostSeen(spec.name, T0, 15.0)
    fired, resolved = set(), set()
    from gpufleet.demo.replay import Replay
    from gpufleet.demo.trace import TraceJob

    replay = Replay([spec], [TraceJob(0, T0, 60.0, 1, "x")], seed=0, load=0.05)
    for k in range(1, 4800 // 15):
        rel = 15.0 * k
        now = T0 + rel
        inj.begin(sim, rel)
        if inj.sends(spec.name, rel):
            sim.apply(replay, [], 0.0, now, lambda t: T0)
            inj.hold(sim, rel)
            skew = inj.clock_offset(spec.name, rel)
            sample = sim.collect().model_copy(update={"ts": now + skew})
            if inj.delivers(spec.name, rel):
                engine.observe(sample, now=now, skew_seconds=skew)
                seen.last_received = now
        seen.reachable = inj.reachable(spec.name, rel)
        engine.tick(now, [seen])
        for e in engine.take_events():
            if e["event"] == "firing":
                fired.add(e["alert"]["rule"])
            elif e["event"] == "resolved":
                resolved.add(e["alert"]["rule"])
    assert fired == {EXPECTED[kind]}
    assert resolved == fired and not engine.alerts, "cleared after the fault"
    assert [t["event"] for t in inj.truth] == ["start", "end"]
