"""Browser fixtures: the system's Chromium (Debian package) driven by Playwright.

Playwright never downloads a browser here: it launches /usr/bin/chromium. Without it the
browser tests skip, or fail when GPUFLEET_REQUIRE_SERVICES=1 (CI)."""

from __future__ import annotations

import time

import pytest

from gpufleet.wire import GpuProcess, Sample


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors  # type: ignore[attr-defined]
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def fleet_sample(
    host: str,
    k: int,
    *,
    ts: float | None = None,
    model: str = "NVIDIA A100-SXM4-80GB",
    gpus: int = 8,
    busy: int = 5,
) -> Sample:
    """A plausible host: the first ``busy`` GPUs held by users, the rest free."""
    from tests.conftest import make_sample

    s = make_sample(host, ts=ts if ts is not None else time.time(), gpus=gpus, procs=0)
    users = ["alice", "bob", "chen", "dmitri", "eva"]
    procs = []
    for g in s.gpus:
        g.name = model
        if g.index < busy:
            g.utilization_gpu_percent = float((k * 17 + g.index * 23) % 90 + 10)
            g.memory_used_bytes = (20 + g.index * 5) * 2**30
            procs.append(
                GpuProcess(
                    pid=2000 + g.index, gpu_index=g.index, user=users[(k + g.index) % 5],
                    command="python train.py --config resnet50.yaml", started_at=s.ts - 3600,
                    gpu_memory_bytes=g.memory_used_bytes - 2**29,
                )
            )  # fmt: skip
        else:
            g.utilization_gpu_percent = 0.0
            g.memory_used_bytes = 4 * 2**20
        g.temperature_celsius = 35 + g.utilization_gpu_percent * 0.4
        g.power_watts = 60 + g.utilization_gpu_percent * 3
    s.processes = procs
    hm = s.host_metrics
    hm.cpu_percent = float((k * 37) % 90 + 5)
    hm.cpu_count, hm.load1 = 64, round(hm.cpu_percent * 0.64, 1)
    hm.memory_used_bytes = (60 + (k * 23) % 400) * 2**30
    hm.disks[0].used_bytes = int(2**40 * ((k * 13) % 80 + 10) / 100)
    s.facts.driver_version, s.facts.cuda_version = "550.54.15", "12.4"
    s.facts.os, s.facts.cpu_model = "Ubuntu 22.04.4 LTS", "AMD EPYC 7763 64-Core Processor"
    s.facts.agent_version = "0.1.0"
    return s
