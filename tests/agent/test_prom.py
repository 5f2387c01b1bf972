"""Prometheus exposition of the latest sample, checked by the real promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request

import pytest

from gpufleet.agent.prom import CONTENT_TYPE, render, serve_metrics


def _promtool() -> str:
    path = shutil.which("promtool") or (
        "/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None
    )
    if path is None:
        if os.environ.get("GPUFLEET_REQUIRE_SERVICES"):
            pytest.fail("promtool is required (GPUFLEET_REQUIRE_SERVICES is set) but not installed")
        pytest.skip("promtool is not installed")
    return path


def _check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def sample(fake, make_collector):
    fake.fail(2, "*", fake.NVML_ERROR_GPU_IS_LOST)
    fake.fail(1, "nvmlDeviceGetFanSpeed", fake.NVML_ERROR_NOT_SUPPORTED)
    collector = make_collector(fake)
    collector.collect()
    fake.push_xid(3, 79)
    return collector.collect()


@pytest.mark.service
def test_promtool_accepts_the_exposition(sample):
    text = render(sample)
    result = _check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""  # no lint warnings either


def test_exposition_content(sample):
    text = render(sample)
    lines = text.splitlines()
    assert all(
        line.startswith(("# HELP gpufleet_", "# TYPE gpufleet_", "gpufleet_")) for line in lines
    )
    uuid0 = sample.gpus[0].uuid
    assert f'gpufleet_gpu_memory_total_bytes{{host="node-01",gpu="0"}} {80 * 2**30}' in lines
    assert (
        f'gpufleet_gpu_info{{host="node-01",gpu="0",uuid="{uuid0}",'
        f'name="NVIDIA A100-SXM4-80GB"}} 1'
    ) in lines
    assert any(
        line.startswith('gpufleet_gpu_up{host="node-01",gpu="2"') and line.endswith(" 0")
        for line in lines
    )
    # not available -> no series, never a made-up 0
    fans = [line for line in lines if line.startswith("gpufleet_gpu_fan_percent{")]
    assert len(fans) == 2 and not any('gpu="1"' in f or 'gpu="2"' in f for f in fans)
    assert any(
        line.startswith('gpufleet_gpu_last_xid{host="node-01",gpu="3"') and line.endswith(" 79")
        for line in lines
    )
    assert 'user="uid:4000123"' in text and 'container="bob-trainer"' in text
    # each family declared once, before its samples
    types = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(types) == len(set(types))


@pytest.mark.service
def test_label_values_are_escaped(sample):
    sample.facts.cpu_model = 'Weird "CPU" \\ model\nline two'
    sample.gpus[0].name = 'GPU "quoted"'
    text = render(sample)
    assert 'cpu_model="Weird \\"CPU\\" \\\\ model\\nline two"' in text
    assert 'name="GPU \\"quoted\\""' in text
    result = _check(text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_collected_yet_renders_empty():
    assert render(None) == ""


def test_serve_metrics_over_http(sample):
    server = serve_metrics(0, "127.0.0.1", lambda: sample)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE
            assert resp.read().decode() == render(sample)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_no_pid_label_processes_summed_per_user_and_container(sample):
    from gpufleet.wire import GpuProcess

    gpu = sample.gpus[0].index
    base = [p for p in sample.processes if p.gpu_index == gpu]
    extra = [
        GpuProcess(pid=900_001 + k, gpu_index=gpu, user="carol", gpu_memory_bytes=2**30)
        for k in range(3)
    ]
    sample.processes = [p for p in sample.processes if p.gpu_index != gpu] + base + extra
    text = render(sample)
    assert 'pid="' not in text
    carol = [line for line in text.splitlines() if 'user="carol"' in line]
    assert any(
        line.startswith("gpufleet_gpu_user_memory_bytes{") and line.endswith(f" {3 * 2**30}")
        for line in carol
    ), carol
    assert any(
        line.startswith("gpufleet_gpu_user_processes{") and line.endswith(" 3") for line in carol
    ), carol


def test_xid_and_ecc_errors_are_counters(fake, make_collector):
    from gpufleet.agent.prom import XidTotals

    collector = make_collector(fake)
    xids = XidTotals()
    for _ in range(3):
        fake.push_xid(1, 79)
        smp = collector.collect()
        xids.observe(smp)
        xids.observe(smp)  # the same sample twice counts once
    text = render(smp, xids)
    assert "# TYPE gpufleet_gpu_xid_events_total counter" in text
    assert "# TYPE gpufleet_gpu_ecc_uncorrected_volatile_errors_total counter" in text
    line = next(x for x in text.splitlines()
                if x.startswith('gpufleet_gpu_xid_events_total{host="node-01",gpu="1"'))  # fmt: skip
    assert line.endswith(" 3")


def test_head_metrics_answers_headers_only(sample):
    server = serve_metrics(0, "127.0.0.1", lambda: sample)
    try:
        port = server.server_address[1]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) == len(render(sample).encode())
            assert resp.read() == b""
    finally:
        server.shutdown()
        server.server_close()
