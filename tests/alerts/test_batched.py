"""Samples are evaluated in batches (per tick, with numpy across hosts): the batch must say
exactly what the samples say one at a time (values, events, their order)."""

from __future__ import annotations

import random

import pytest

from gpufleet.alerts.columns import SeriesIndex, layer_rows
from gpufleet.alerts.engine import AlertEngine, EngineConfig, HostSeen
from gpufleet.alerts.metrics import Thresholds, sample_series
from gpufleet.alerts.rules import METRICS, builtin_rules, parse_rule
from gpufleet.wire import Disk, Gpu, GpuProcess, HostMetrics, Sample, XidEvent

T0 = 1_800_000_000.0
GIB = 2**30


def _sample(rng: random.Random, host: str, ts: float, n_gpus: int) -> Sample:
    """A sample with the odd cases: missing readings, GPU errors, XIDs, processes with and
    without users, several users on a GPU, a mount listed twice, a mount of size 0."""
    gpus = []
    for i in range(n_gpus):
        missing = rng.random() < 0.1
        err = rng.choice([None] * 8 + ["GPU is lost", "Unknown Error"])
        xids = [XidEvent(xid=rng.choice([13, 31, 79]), ts=ts)] if rng.random() < 0.1 else []
        gpus.append(Gpu(
            index=i, utilization_gpu_percent=None if missing else rng.choice([0.0, 3.0, 97.0]),
            memory_used_bytes=None if rng.random() < 0.1 else rng.choice([0, 2 * GIB, 70 * GIB]),
            memory_total_bytes=rng.choice([80 * GIB, 80 * GIB, 0]),
            temperature_celsius=None if missing else rng.uniform(30, 95),
            power_watts=rng.uniform(50, 400), power_limit_watts=rng.choice([400.0, 0.0]),
            ecc_uncorrected_volatile=None if missing else rng.randint(0, 3),
            xid_events=xids, error=err,
        ))  # fmt: skip
    procs = []
    for pid in range(rng.randint(0, 2 * n_gpus)):
        procs.append(GpuProcess(
            pid=1000 + pid, gpu_index=rng.randrange(n_gpus) if n_gpus else 0,
            user=rng.choice([None, "alice", "bob", ""]), uid=rng.choice([None, 1000]),
            gpu_memory_bytes=rng.choice([None, GIB, 3 * GIB]),
        ))  # fmt: skip
    if not n_gpus:
        procs = []
    disks = [Disk(mount="/", total_bytes=100 * GIB, used_bytes=rng.randint(0, 100) * GIB),
             Disk(mount="/scratch", total_bytes=0, used_bytes=0),
             Disk(mount="/data", total_bytes=10 * GIB, used_bytes=9 * GIB)]  # fmt: skip
    if rng.random() < 0.3:
        disks.append(Disk(mount="/", total_bytes=100 * GIB, used_bytes=99 * GIB))
    hm = HostMetrics(
        cpu_percent=None if rng.random() < 0.2 else rng.uniform(0, 100),
        cpu_count=rng.choice([None, 32]), load1=rng.uniform(0, 64),
        memory_total_bytes=rng.choice([None, 0, 512 * GIB]),
        memory_available_bytes=rng.randint(1, 500) * GIB,
        swap_total_bytes=rng.choice([0, 8 * GIB]), swap_used_bytes=rng.randint(0, 8) * GIB,
        disks=disks,
    )  # fmt: skip
    errors = rng.choice([[], [], ["NVML is hung: nvmlDeviceGetPowerUsage"], ["nvidia-smi: x"]])
    return Sample(host=host, ts=ts, host_metrics=hm, gpus=gpus, processes=procs, errors=errors)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layer_rows_are_sample_series(seed):
    rng = random.Random(seed)
    th = Thresholds()
    wanted = frozenset(METRICS)
    layer = []
    for i in range(40):
        s = _sample(rng, f"h{i:02d}", T0, rng.choice([0, 1, 2, 8]))
        layer.append((i + 1, s, T0 + i, rng.choice([None, -40.0, 3.5]), rng.choice([None, "r1"])))
    index = SeriesIndex()
    rows, _present = layer_rows(layer, index, wanted, th)
    got: dict = {}
    for metric, (sids, vals, _t, _order) in rows.items():
        for sid, v in zip(sids.tolist(), vals.tolist(), strict=True):
            got.setdefault(index.keys[sid], {})[metric.split("@")[0]] = v
    want: dict = {}
    for _seq, s, _now, skew, group in layer:
        for key, values in sample_series(s, skew_seconds=skew, group=group, th=th).items():
            want.setdefault(key, {}).update(values)
    assert got == want


def _rules():
    return [
        *builtin_rules(),
        parse_rule({"name": "warm", "scope": "gpu", "metric": "temperature_celsius",
                    "op": ">", "threshold": 60, "clear_threshold": 50, "for_seconds": 20}),
        parse_rule({"name": "heating", "scope": "gpu", "metric": "temperature_celsius",
                    "kind": "rate", "op": ">", "threshold": 0.1, "window_seconds": 120}),
        parse_rule({"name": "busy_cpu", "scope": "host", "metric": "cpu_percent",
                    "kind": "sum", "op": ">", "threshold": 300, "window_seconds": 60}),
        parse_rule({"name": "idle_gpu", "scope": "gpu", "metric": "utilization_gpu_percent",
                    "op": "<", "threshold": 5}),
    ]  # fmt: skip


def test_a_batch_makes_the_events_of_one_sample_at_a_time():
    """Engine A evaluates each sample as it comes (its alerts are read after each); engine
    B only at the tick, with several samples of a host queued (a spool catching up)."""
    rng = random.Random(7)
    a = AlertEngine(_rules(), EngineConfig(resolve_hold_seconds=30.0))
    b = AlertEngine(_rules(), EngineConfig(resolve_hold_seconds=30.0))
    hosts = {f"h{i}": HostSeen(f"h{i}", T0, 5.0) for i in range(12)}
    events_a, events_b = [], []
    t = T0
    for _ in range(60):
        t += 5
        for name in rng.sample(sorted(hosts), 9):  # some hosts silent now and then
            queued = rng.choice([1, 1, 1, 3])
            for k in range(queued):  # in order, as a spool delivers
                s = _sample(rng, name, t - 0.1 * (queued - 1 - k), 4 if name < "h6" else 8)
                skew = rng.choice([None, 45.0])
                for e in (a, b):
                    e.observe(s, now=t, skew_seconds=skew, group="g")
                assert a.alerts is not None  # read: evaluates what a has queued
            hosts[name].last_received = t
        for e, out in ((a, events_a), (b, events_b)):
            e.tick(t, list(hosts.values()))
            out += e.take_events()
        assert [x.to_dict() for x in a.alerts.values()] == [x.to_dict() for x in b.alerts.values()]
    assert len(events_a) > 100, "the stream exercises the life cycle"
    assert {e["event"] for e in events_a} >= {"pending", "firing", "resolved", "dropped"}
    assert events_a == events_b


def test_an_alert_held_by_a_caller_is_up_to_date_after_observe():
    engine = AlertEngine(builtin_rules())
    rng = random.Random(3)
    hot = _sample(rng, "n1", T0, 2).model_copy(update={"errors": []})
    gpus = [g.model_copy(update={"temperature_celsius": 95.0, "error": None}) for g in hot.gpus]
    hot = hot.model_copy(update={"gpus": gpus})
    engine.observe(hot, now=T0)
    held = [x for x in engine.alerts.values() if x.rule == "gpu_too_hot"]
    assert held and all(x.state == "pending" for x in held)
    engine.observe(hot.model_copy(update={"ts": T0 + 200}), now=T0 + 200)
    assert all(x.state == "firing" and x.fired_at == T0 + 200 for x in held)
