"""Fixtures for the agent tests: a committed fake /proc tree, container metadata and fake NVML."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpufleet.agent.collect import Collector
from gpufleet.agent.fakenvml import FakeNvml

FIXTURES = Path(__file__).parent / "fixtures"
PROC_ROOT = FIXTURES / "proc"
HOST_ROOT = FIXTURES / "root"

DOCKER_ID = "3f4e" + "a1" * 30
K8S_ID = "9c0d" + "b2" * 30
PODMAN_ID = "77aa" + "c3" * 30
BTIME = 1_700_000_000


@pytest.fixture
def fake() -> FakeNvml:
    """Four GPUs of two models; processes matching the fixture /proc tree."""
    nvml = FakeNvml.with_models(["NVIDIA A100-SXM4-80GB"] * 2 + ["Tesla V100-SXM2-32GB"] * 2)
    nvml.add_process(0, 1111, 4 * 2**30)  # on the host, root
    nvml.add_process(1, 2222, 8 * 2**30)  # Docker container, nobody
    nvml.add_process(2, 3333, None)  # Kubernetes pod (containerd); memory not available
    nvml.add_process(3, 4444, 2**30)  # uid not in passwd, very long command line
    nvml.add_process(3, 5555, 2**29)  # Podman container
    return nvml


@pytest.fixture
def make_collector() -> Iterator[Callable[..., Collector]]:
    made: list[Collector] = []

    def make(nvml: object = None, **kwargs: object) -> Collector:
        kwargs.setdefault("host_name", "node-01")
        kwargs.setdefault("proc_root", PROC_ROOT)
        kwargs.setdefault("host_root", HOST_ROOT)
        collector = Collector(nvml=nvml, **kwargs)  # type: ignore[arg-type]
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()
