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
    assert (
        f'gpufleet_gpu_memory_total_bytes{{host="node-01",gpu="0",uuid="{uuid0}",'
        f'name="NVIDIA A100-SXM4-80GB"}} {80 * 2**30}'
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
