"""Every built-in rule fires and resolves on samples from the agent's collector; the life cycle
(for, resolve hold, flapping, silences, inhibition, grouping, acknowledgement)."""

from __future__ import annotations

import pytest

from gpufleet.agent.fakenvml import FakeNvml
from gpufleet.alerts.engine import AlertEngine, HostSeen
from gpufleet.alerts.notify import Silence, Timing
from gpufleet.alerts.rules import RuleError, assemble_rules, builtin_rules, parse_rule
from gpufleet.wire import Disk
from tests.alerts.conftest import GIB, T0, Driver, FakeHost

LOST = FakeNvml.NVML_ERROR_GPU_IS_LOST if hasattr(FakeNvml, "NVML_ERROR_GPU_IS_LOST") else 15


def run(d: Driver, h: FakeHost, start: float, seconds: float, step: float = 15.0,
        skew: float = 0.0) -> float:  # fmt: skip
    t = start
    while t < start + seconds:
        t += step
        d.feed(h.sample(t), t, skew)
        d.tick(t)
    return t


def _hot(h, on):
    h.nvml.gpus[3].temperature_celsius = 95 if on else 60


def _cap(h, on):
    h.nvml.gpus[3].power_milliwatts = 400_000 if on else 200_000


def _ecc(h, on):
    if on:
        h.nvml.gpus[3].ecc_uncorrected_volatile += 2


def _xid(h, on):
    if on:
        for _ in range(6):  # a burst of XID 13 (graphics engine exception)
            h.nvml.push_xid(3, 13)


def _lost(h, on):
    if on:
        h.nvml.push_xid(3, 79)
        h.nvml.fail(3, "*", LOST)
    else:
        h.nvml.clear_errors()


def _disk(h, on):
    used = 95 if on else 50
    h.host_edits["disks"] = [Disk(mount="/data", total_bytes=100 * GIB, used_bytes=used * GIB)]


def _mem(h, on):
    h.host_edits.update(memory_total_bytes=100 * GIB,
                        memory_available_bytes=(2 if on else 60) * GIB)  # fmt: skip


def _swap(h, on):
    h.host_edits.update(swap_total_bytes=10 * GIB, swap_used_bytes=(8 if on else 0) * GIB)


def _held_idle(h, on):
    if on:
        h.nvml.add_process(3, 1111, 4 * GIB)  # root's process in the fixture /proc
        h.nvml.gpus[3].utilization_gpu_percent = 0
    else:
        h.nvml.remove_process(3, 1111)


def _ghost(h, on):
    if on:
        h.nvml.add_process(3, 9999, 3 * GIB)  # no such PID in /proc
    else:
        h.nvml.remove_process(3, 9999)


# rule -> (change, seconds to fire, seconds to resolve, labels the alert must carry)
SCENARIOS = {
    "gpu_too_hot": (_hot, 300, 600, {"gpu": "3"}),
    "power_at_cap": (_cap, 2400, 600, {"gpu": "3"}),
    "ecc_uncorrectable": (_ecc, 60, 4200, {"gpu": "3"}),
    "xid_storm": (_xid, 60, 1200, {"gpu": "3"}),
    "gpu_lost": (_lost, 60, 600, {"gpu": "3"}),
    "disk_almost_full": (_disk, 600, 600, {"mount": "/data"}),
    "memory_pressure": (_mem, 600, 600, {}),
    "swapping": (_swap, 600, 600, {}),
    "gpu_held_idle": (_held_idle, 4 * 3600 + 600, 600, {"gpu": "3", "user": "root"}),
    "ghost_memory": (_ghost, 600, 600, {"gpu": "3"}),
}


@pytest.mark.parametrize("rule", sorted(SCENARIOS))
def test_builtin_rule_fires_and_resolves(rule, make_host, make_driver):
    change, fire_s, resolve_s, labels = SCENARIOS[rule]
    h, d = make_host(), make_driver()
    t = run(d, h, T0, 120)
    assert not d.firing(), "a healthy host raises nothing"
    change(h, True)
    step = 300.0 if fire_s > 3600 else 15.0
    t = run(d, h, t, fire_s, step=step)
    fired = d.firing(rule)
    assert len(fired) == 1, [a.rule for a in d.firing()]
    assert fired[0].labels["host"] == "node-01"
    for k, v in labels.items():
        assert fired[0].labels[k] == v
    assert [a.rule for a in d.firing()] == [rule], "only the right rule fires"
    assert any(m.firing and m.firing[0].rule == rule for m in d.messages)
    change(h, False)
    t = run(d, h, t, resolve_s + 400)
    assert not d.firing(rule) and rule not in {a.rule for a in d.engine.alerts.values()}
    assert any(a.rule == rule for m in d.messages for a in m.resolved), "resolved notice sent"


def test_clock_skew_fires_and_resolves(make_host, make_driver):
    h, d = make_host(), make_driver()
    t = run(d, h, T0, 300, skew=-95.0)
    assert [a.rule for a in d.firing()] == ["clock_skew"]
    assert d.firing()[0].value == pytest.approx(95.0)
    run(d, h, t, 600, skew=0.4)
    assert not d.firing()


def test_nvml_hung_fires_and_resolves(make_host, make_driver):
    h, d = make_host(gpus=2), make_driver()
    t = run(d, h, T0, 60)
    h.nvml.hang("nvmlDeviceGetUtilizationRates")
    try:
        t = run(d, h, t, 90)
        assert [a.rule for a in d.firing()] == ["nvml_hung"]
    finally:
        h.nvml.release()
    run(d, h, t, 600)
    assert not d.firing()


def test_silence_tells_host_down_from_agent_down(make_driver):
    d = make_driver()
    d.hosts["a"] = HostSeen("a", T0, 5.0, reachable=None)  # no probe: counts as down
    d.hosts["b"] = HostSeen("b", T0, 5.0, reachable=False)
    d.hosts["c"] = HostSeen("c", T0, 5.0, reachable=True)  # answers: its agent is down
    d.hosts["d"] = HostSeen("d", T0 + 100, 5.0, reachable=False)  # still talking
    d.tick(T0 + 30)
    assert not d.firing(), "30 s of silence is not down yet"
    d.tick(T0 + 120)
    assert sorted((a.rule, a.labels["host"]) for a in d.firing()) == [
        ("agent_down", "c"), ("host_down", "a"), ("host_down", "b"),
    ]  # fmt: skip
    for t in (T0 + 200, T0 + 250, T0 + 300):  # b talks again (and d goes on talking)
        d.hosts["b"].last_received = d.hosts["d"].last_received = t
        d.tick(t)
    assert ("host_down", "b") not in {(a.rule, a.labels["host"]) for a in d.firing()}


def test_a_host_back_from_power_off_is_not_agent_down_before_its_first_sample(make_driver):
    d = make_driver()
    d.hosts["a"] = HostSeen("a", T0, 5.0, reachable=False)  # powered off
    d.tick(T0 + 120)
    assert [a.rule for a in d.firing()] == ["host_down"]
    d.hosts["a"].reachable = True  # power back: the probe answers, no sample yet
    for t in (T0 + 125, T0 + 130):  # within the stale time (3 intervals = 15 s)
        d.tick(t)
        assert "agent_down" not in {a.rule for a in d.firing()}
    d.tick(T0 + 145)  # still silent past it: its agent does not start
    assert "agent_down" in {a.rule for a in d.firing()}
    d.hosts["b"] = HostSeen("b", T0 + 145, 5.0, reachable=True)  # answered all along
    d.tick(T0 + 145 + 61)
    assert ("agent_down", "b") in {(a.rule, a.labels["host"]) for a in d.firing()}


def test_ssh_failure_names_the_reason(make_driver):
    d = make_driver()
    for t in range(0, 120, 5):
        d.engine.observe_poll("gpu-07", {"ok": False, "kind": "auth", "last_poll": T0 + t},
                              now=T0 + t)  # fmt: skip
    (a,) = d.firing("ssh_unreachable")
    assert a.labels["failure"] == "auth" and "(auth)" in a.summary
    d.engine.observe_poll("gpu-07", {"ok": True, "kind": None, "last_poll": T0 + 200},
                          now=T0 + 200)  # fmt: skip
    d.tick(T0 + 300)
    assert not d.firing()


def test_pending_until_for_then_firing(make_host, make_driver):
    h, d = make_host(), make_driver()
    _hot(h, True)
    d.feed(h.sample(T0), T0)
    (a,) = d.engine.alerts.values()
    assert a.state == "pending"
    d.feed(h.sample(T0 + 119), T0 + 119)
    assert a.state == "pending"
    d.feed(h.sample(T0 + 121), T0 + 121)
    assert a.state == "firing" and a.fired_at == T0 + 121
    _hot(h, False)
    d.feed(h.sample(T0 + 130), T0 + 130)
    assert a.state == "firing" and a.clear_since == T0 + 130, "held before resolving"


def test_pending_that_clears_is_never_told(make_host, make_driver):
    h, d = make_host(), make_driver()
    _hot(h, True)
    t = run(d, h, T0, 60)
    _hot(h, False)
    run(d, h, t, 900)
    assert d.messages == []
    events = [e["event"] for e in d.engine.take_events()]
    assert "firing" not in events


def test_flapping_metric_pages_once_per_repeat_interval(make_host, make_driver):
    rules = [r.model_copy(update={"for_seconds": 0.0}) if r.name == "gpu_too_hot" else r
             for r in builtin_rules()]  # fmt: skip
    h = make_host()
    d = make_driver(rules, timing=Timing(30.0, 300.0, 3600.0), resolve_hold_seconds=120.0)
    t = T0
    for i in range(480):  # 4 hours; hot 30 s, cool 30 s
        _hot(h, i % 2 == 0)
        t = run(d, h, t, 30, step=30)
    pages = [m for m in d.messages if m.firing]
    # the first page after group_wait, then one an hour (the repeat interval)
    assert [m.at - T0 for m in pages] == [60.0, 3660.0, 7260.0, 10860.0]
    assert not [m for m in d.messages if m.resolved], "no resolved notice between flaps"
    (a,) = d.firing("gpu_too_hot")
    assert a.flaps > 100


def test_silence_suppresses_then_expires(make_host, make_driver):
    h, d = make_host(), make_driver()
    d.silences.append(Silence(matchers={"host": "node-*", "rule": "gpu_too_*"}, starts_at=T0,
                              ends_at=T0 + 1800, reason="fan being replaced"))  # fmt: skip
    _hot(h, True)
    t = run(d, h, T0, 1500)
    assert d.firing("gpu_too_hot") and d.messages == []
    run(d, h, t, 900)
    assert [m.firing[0].rule for m in d.messages] == ["gpu_too_hot"], "told once it expired"


def test_host_down_inhibits_its_gpu_alerts_and_a_rack_is_one_message(make_host, make_driver):
    d = make_driver()
    hosts = [make_host(f"rack1-{i:02d}", gpus=2) for i in range(10)]
    for fh in hosts:
        pass
        fh.nvml.gpus[0].temperature_celsius = 95
        fh.nvml.gpus[1].temperature_celsius = 95
    t = T0
    for _ in range(20):
        t += 15
        for fh in hosts:
            d.feed(fh.sample(t), t)
            d.hosts[fh.name].group = "rack1"
        d.tick(t)
    hot_pages = [m for m in d.messages if m.firing and m.firing[0].rule == "gpu_too_hot"]
    assert len(hot_pages) == 10, "one message per host for its GPUs"
    assert all(len(m.firing) == 2 for m in hot_pages)
    # the rack loses power
    n_before = len(d.messages)
    for _ in range(30):
        t += 15
        d.tick(t)
    down = d.firing("host_down")
    assert len(down) == 10
    new = d.messages[n_before:]
    assert len(new) == 1 and len(new[0].firing) == 10 and new[0].group["group"] == "rack1"
    firing = d.firing()
    muted = {d.dispatcher.muted(a, firing, [], t) for a in d.firing("gpu_too_hot")}
    assert muted == {"inhibited"}


def test_acknowledged_group_is_not_repeated(make_host, make_driver):
    h = make_host()
    d = make_driver(timing=Timing(30.0, 300.0, 1800.0))
    _hot(h, True)
    t = run(d, h, T0, 600)
    assert len([m for m in d.messages if m.firing]) == 1
    d.engine.acknowledge(d.firing()[0].fingerprint, "alice", t)
    run(d, h, t, 4 * 3600, step=60)
    assert len([m for m in d.messages if m.firing]) == 1


def test_series_that_disappears_clears_its_alert(make_host, make_driver):
    h, d = make_host(), make_driver()
    _ghost(h, True)
    t = run(d, h, T0, 600)
    assert d.firing("ghost_memory")
    _ghost(h, False)
    run(d, h, t, 600)
    assert not d.firing()


def test_bad_rules_name_the_rule_and_field_and_are_left_out():
    with pytest.raises(RuleError, match=r"rule 'hot2': threshold: "):
        parse_rule({"name": "hot2", "scope": "gpu", "metric": "temperature_celsius",
                    "threshold": "warm"})  # fmt: skip
    with pytest.raises(RuleError, match=r"rule 'x': metric: unknown metric 'tempp'"):
        parse_rule({"name": "x", "scope": "gpu", "metric": "tempp"})
    with pytest.raises(RuleError, match=r"summary: unknown placeholder \{hots\}"):
        parse_rule({"name": "x", "scope": "gpu", "metric": "xid_events", "summary": "{hots}"})
    with pytest.raises(RuleError, match="is a gpu metric, not a host one"):
        parse_rule({"name": "x", "scope": "host", "metric": "xid_events"})
    rules, errors = assemble_rules(
        {"gpu_too_hot": {"threshold": 80}, "power_at_cap": {"metric": "x"}, "nope": {}},
        [{"name": "hot2", "scope": "gpu", "metric": "temperature_celsius", "threshold": 70},
         {"name": "bad", "scope": "gpu", "metric": "temperature_celsius", "op": "=>"}],
    )  # fmt: skip
    by = {r.name: r for r in rules}
    assert by["gpu_too_hot"].threshold == 80 and by["hot2"].threshold == 70
    assert "bad" not in by and "power_at_cap" in by
    assert any("'power_at_cap': metric: cannot be changed" in e for e in errors)
    assert any("rules[1] 'bad': op:" in e for e in errors)
    assert any("'nope': there is no such built-in rule" in e for e in errors)


def test_custom_rate_rule_and_user_scope(make_host, make_driver):
    rules = [
        parse_rule({"name": "heating_fast", "scope": "gpu", "metric": "temperature_celsius",
                    "kind": "rate", "op": ">", "threshold": 0.05, "window_seconds": 300,
                    "summary": "GPU {gpu} on {host} heats {value} C/s"}),
        parse_rule({"name": "hoarder", "scope": "user", "metric": "user_gpus_held_idle",
                    "op": ">=", "threshold": 2, "summary": "{user} holds {value} idle GPUs"}),
    ]  # fmt: skip
    h, d = make_host(), make_driver(rules)
    t = run(d, h, T0, 300)
    for g in range(60):
        h.nvml.gpus[2].temperature_celsius = 40 + g  # +1 C every 15 s
        h.nvml.add_process(g % 3, 1111, 2 * GIB)
        t = run(d, h, t, 15)
    assert {a.rule for a in d.firing()} == {"heating_fast", "hoarder"}
    (hoard,) = d.firing("hoarder")
    assert hoard.value == 3 and hoard.summary.startswith("root holds ")


def test_evaluation_is_incremental_per_host(make_host):
    engine = AlertEngine(builtin_rules())
    h = make_host()
    engine.observe(h.sample(T0), now=T0)
    per_sample = engine.evaluations
    engine.observe(h.sample(T0 + 5), now=T0 + 5)
    assert engine.evaluations == 2 * per_sample, "one sample's series only"


def test_quality_counts_flaps_acks_and_noise(make_host, make_driver):
    from gpufleet.alerts.quality import rule_quality

    rules = [r.model_copy(update={"for_seconds": 0.0}) if r.name == "gpu_too_hot" else r
             for r in builtin_rules()]  # fmt: skip
    h = make_host()
    d = make_driver(rules, resolve_hold_seconds=120.0)
    t = T0
    for i in range(40):  # flapping heat for 40 minutes
        _hot(h, i % 2 == 0)
        t = run(d, h, t, 60, step=30)
    _ghost(h, True)
    t = run(d, h, t, 600)
    d.engine.acknowledge(d.firing("ghost_memory")[0].fingerprint, "bob", t + 300)
    _hot(h, False)
    _ghost(h, False)
    run(d, h, t + 300, 900)
    events = d.events
    q = {r["rule"]: r for r in rule_quality(events, t + 2000, days=1)}
    assert q["gpu_too_hot"]["fired"] == 1 and q["gpu_too_hot"]["flapping"]
    assert q["gpu_too_hot"]["unacknowledged"] == 1
    assert q["ghost_memory"]["acknowledged"] == 1
    assert q["ghost_memory"]["median_minutes_to_ack"] == pytest.approx(
        (
            t
            + 300
            - next(
                e["at"]
                for e in events
                if e["event"] == "firing" and e["alert"]["rule"] == "ghost_memory"
            )
        )
        / 60,
        abs=0.1,
    )
    assert next(iter(q)) == "gpu_too_hot", "the noisy rule first"


def test_hysteresis_keeps_a_hovering_value_one_alert(make_host, make_driver):
    h, d = make_host(), make_driver()
    h.nvml.gpus[3].temperature_celsius = 95
    t = run(d, h, T0, 300)
    (a,) = d.firing("gpu_too_hot")
    for i in range(40):  # hovers between the clear limit (85) and the limit (88)
        h.nvml.gpus[3].temperature_celsius = 86 + (i % 3)
        t = run(d, h, t, 30)
    assert d.firing("gpu_too_hot") == [a] and a.clear_since is None
    h.nvml.gpus[3].temperature_celsius = 80
    run(d, h, t, 600)
    assert not d.firing()
    events = [e["event"] for e in d.events if e["alert"]["rule"] == "gpu_too_hot"]
    assert events == ["pending", "firing", "resolved"]
    with pytest.raises(RuleError, match="clear_threshold 90 must be on the clear side"):
        parse_rule({"name": "x", "scope": "gpu", "metric": "temperature_celsius", "op": ">=",
                    "threshold": 88, "clear_threshold": 90})  # fmt: skip
