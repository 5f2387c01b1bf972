"""bench/alerts_vs_prometheus.py end to end, tiny: three replayed hosts, one powered off and one
whose NVML hangs, against the real Prometheus and Alertmanager (Debian) on loopback and
gpufleet's engine in the same seconds; the shared scoring must see what each system said."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from gpufleet.alerts.notify import Timing
from gpufleet.demo.faults import Fault
from gpufleet.demo.fleet import build_fleet
from gpufleet.demo.trace import default_trace_path
from tests.conftest import need_binary, need_file

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "bench" / "alerts_vs_prometheus.py"


def _bench():
    spec = importlib.util.spec_from_file_location("alerts_vs_prometheus", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_side_by_side_sees_a_dead_host_and_a_hung_nvml():
    need_binary("/usr/bin/prometheus", "Prometheus")
    need_binary("/usr/bin/promtool", "promtool")
    need_binary("/usr/bin/prometheus-alertmanager", "Alertmanager")
    need_file(default_trace_path(), "the Philly trace")
    bench = _bench()
    off, hung, calm = (s.name for s in build_fleet(3, 0))
    faults = [
        Fault(kind="power_off", host=off, at_seconds=4, duration_seconds=32),
        Fault(kind="nvml_hung", host=hung, gpu=0, at_seconds=4, duration_seconds=32),
    ]
    out = bench.run(hosts=3, minutes=70 / 60, interval=2.0, offline=15.0, faults=faults,
                    timing=Timing(2.0, 10.0, 3600.0))  # fmt: skip
    gp, strict, lenient = (out["gpufleet"], out["prometheus"]["strict"],
                           out["prometheus"]["lenient"])  # fmt: skip
    # gpufleet: host_down for the powered-off host, nvml_hung for the other, nothing on the third
    assert gp["by_kind"]["power_off"]["caught"] == 1
    assert gp["by_kind"]["nvml_hung"]["caught"] == 1
    fired = {(r, h) for r, h, _gpu, _t in out["gp_firings"]}
    assert ("host_down", off) in fired and ("nvml_hung", hung) in fired
    assert not {r for r, h in fired if h == calm} & {"host_down", "agent_down", "nvml_hung"}
    # Prometheus: up == 0 for the powered-off host, GPU readings missing on the hung one
    pfired = {(r, h) for r, h, _gpu, _t in out["prom_firings"]}
    assert ("TargetDown", off) in pfired and ("GPUReadingsMissing", hung) in pfired
    assert ("TargetDown", calm) not in pfired and ("TargetDown", hung) not in pfired
    # scored both ways: up == 0 cannot say "host down" (strict), but leads there (lenient)
    assert strict["by_kind"]["power_off"]["caught"] == 0
    assert lenient["by_kind"]["power_off"]["caught"] == 1
    assert strict["by_kind"]["nvml_hung"]["caught"] == 1
    # the delays run from the fault's start: no alert before the silence is past the limit
    for q in (gp, lenient):
        assert q["by_kind"]["power_off"]["delay_p50"] >= 15
    # Alertmanager grouped and delivered: the receiver got a message announcing the host down
    assert strict["incidents"] and any(
        i["kind"] == "power_off" and i["messages"] == 0 for i in strict["incidents"]
    )
    assert any(i["kind"] == "power_off" and i["messages"] >= 1 for i in lenient["incidents"])
    assert any(i["kind"] == "power_off" and i["messages"] == 1 for i in gp["incidents"])
