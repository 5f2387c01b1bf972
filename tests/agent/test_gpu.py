"""Fake-NVML scenarios through Collector.collect(): errors, unsupported metrics, hangs, XID."""

from __future__ import annotations

import logging
import threading
import time

from gpufleet.agent.collect import Collector
from gpufleet.agent.fakenvml import FakeNvml
from gpufleet.agent.nvml import Nvml


def test_handles_are_opened_once_not_per_round(fake, make_collector):
    collector = make_collector(fake)
    for _ in range(3):
        collector.collect()
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetCount"] == 1
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 4
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 12


def test_an_erroring_gpu_is_reported_and_the_round_goes_on(fake, make_collector):
    collector = make_collector(fake)
    collector.collect()
    fake.fail(2, "*", FakeNvml.NVML_ERROR_GPU_IS_LOST)
    sample = collector.collect()
    lost = sample.gpus[2]
    assert lost.error is not None and "GPU is lost" in lost.error
    assert lost.uuid and lost.name == "Tesla V100-SXM2-32GB"  # known from when it was opened
    assert lost.utilization_gpu_percent is None and lost.memory_used_bytes is None
    # the others are complete, and their processes still attributed
    assert [g.error for g in sample.gpus] == [None, None, lost.error, None]
    assert sample.gpus[3].utilization_gpu_percent == 0
    assert {p.pid for p in sample.processes} == {1111, 2222, 4444, 5555}
    # it comes back when NVML answers again
    fake.clear_errors()
    assert collector.collect().gpus[2].error is None


def test_a_gpu_lost_before_its_handle_opened_is_reported(make_collector):
    fake = FakeNvml.with_models(["Tesla K80"] * 3)
    fake.fail(1, "*", FakeNvml.NVML_ERROR_GPU_IS_LOST)
    collector = make_collector(fake)
    sample = collector.collect()
    assert [g.index for g in sample.gpus] == [0, 1, 2]
    assert "GPU is lost" in (sample.gpus[1].error or "")
    fake.clear_errors()
    sample = collector.collect()  # reopened on a later round
    assert sample.gpus[1].error is None and sample.gpus[1].name == "Tesla K80"


def test_unsupported_metrics_are_none_and_logged_once(fake, make_collector, caplog):
    fake.fail(1, "nvmlDeviceGetFanSpeed", FakeNvml.NVML_ERROR_NOT_SUPPORTED)
    fake.fail(None, "nvmlDeviceGetTotalEccErrors", FakeNvml.NVML_ERROR_NOT_SUPPORTED)
    fake.fail(None, "nvmlDeviceGetGraphicsRunningProcesses", FakeNvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    collector = make_collector(fake)
    with caplog.at_level(logging.INFO, logger="gpufleet.agent.nvml"):
        for _ in range(3):
            sample = collector.collect()
    assert sample.gpus[1].fan_percent is None and sample.gpus[0].fan_percent == 30
    assert all(g.ecc_uncorrected_volatile is None for g in sample.gpus)
    assert all(g.error is None for g in sample.gpus)  # not supported is not an error
    assert len(sample.processes) == 5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("nvmlDeviceGetFanSpeed" in m for m in messages) == 1
    assert sum("nvmlDeviceGetTotalEccErrors" in m for m in messages) == 1


def test_a_hung_call_does_not_block_the_round(fake, make_collector):
    collector = make_collector(fake, nvml_timeout_seconds=0.3)
    collector.collect()
    fake.hang("nvmlDeviceGetPowerUsage", index=1)
    try:
        sample = collector.collect()  # returns although the call is still hung:
        assert fake.hung.is_set()
        assert sample.gpus[0].error is None
        assert "hung" in (sample.gpus[1].error or "")
        assert "nvmlDeviceGetPowerUsage" in (sample.gpus[1].error or "")
        # the GPUs after it are not read while NVML is stuck: marked at once
        assert all("hung" in (g.error or "") for g in sample.gpus[2:])
        assert any("NVML is hung" in e for e in sample.errors)
        # the next round does not wait another timeout per GPU
        calls = sum(fake.calls.values())
        sample = collector.collect()
        assert sum(fake.calls.values()) == calls  # no NVML call made (none to wait for)
        assert all("hung" in (g.error or "") for g in sample.gpus)
    finally:
        fake.release()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        sample = collector.collect()
        if all(g.error is None for g in sample.gpus):
            break
        time.sleep(0.02)
    assert all(g.error is None for g in sample.gpus)
    assert sample.errors == []


def test_xid_events_since_the_last_sample(fake, make_collector):
    collector = make_collector(fake, clock=lambda: 1_800_000_000.0)
    fake.push_xid(1, 79)
    fake.push_xid(1, 48)
    fake.push_xid(3, 13)
    sample = collector.collect()
    assert [e.xid for e in sample.gpus[1].xid_events] == [79, 48]
    assert [e.xid for e in sample.gpus[3].xid_events] == [13]
    assert sample.gpus[1].xid_events[0].ts == 1_800_000_000.0
    assert sample.gpus[0].xid_events == []
    assert all(g.xid_events == [] for g in collector.collect().gpus)


def test_xid_not_supported_leaves_the_rest_working(fake, make_collector):
    fake.fail(None, "nvmlDeviceRegisterEvents", FakeNvml.NVML_ERROR_NOT_SUPPORTED)
    fake.push_xid(0, 31)
    sample = make_collector(fake).collect()
    assert all(g.xid_events == [] and g.error is None for g in sample.gpus)


def test_no_gpu_gives_host_metrics_and_a_host_level_error(make_collector):
    sample = make_collector(FakeNvml()).collect()
    assert sample.gpus == [] and sample.processes == []
    assert sample.errors == ["NVML: no GPU found"]
    assert sample.host_metrics.memory_total_bytes


def test_no_driver_gives_host_metrics_and_a_host_level_error(make_collector):
    fake = FakeNvml.with_models(["Tesla K80"], init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)
    collector = make_collector(fake)
    sample = collector.collect()
    assert sample.gpus == []
    assert len(sample.errors) == 1 and "Driver Not Loaded" in sample.errors[0]
    assert sample.host_metrics.memory_total_bytes
    collector.collect()
    assert fake.calls["nvmlInit"] == 1  # not retried every round


def test_real_pynvml_on_this_machine_never_raises():
    # No GPU here: the real library reports a host-level error; on a GPU host it reports GPUs.
    with Collector(host_name="node-01") as collector:
        sample = collector.collect()
    assert sample.gpus or any(e.startswith("NVML") for e in sample.errors)


def test_gate_queries_decode_and_default():
    fake = FakeNvml.with_models(["Tesla K80"], return_bytes=True)
    fake.fail(0, "nvmlDeviceGetFanSpeed", FakeNvml.NVML_ERROR_NOT_SUPPORTED)
    nvml = Nvml(module=fake)
    handle = nvml.query("nvmlDeviceGetHandleByIndex", 0)
    assert nvml.query(fake.nvmlDeviceGetName, handle) == "Tesla K80"
    assert nvml.query("nvmlDeviceGetFanSpeed", handle, default="N/A") == "N/A"
    assert threading.current_thread() is threading.main_thread()
    nvml.shutdown()
    assert fake.calls["nvmlShutdown"] == 1
