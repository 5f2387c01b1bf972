"""One collection round of one host: host metrics, GPUs, GPU processes -> a wire ``Sample``.

    collector = Collector()                        # real NVML (lazy), real /proc
    collector = Collector(nvml=FakeNvml.with_models(["Tesla V100-SXM2-32GB"] * 8))
    sample = collector.collect()
    collector.close()

Kept light to import (no web framework, no database): the agent's RSS matters.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from gpufleet import __version__
from gpufleet.agent.gpu import GpuCollector
from gpufleet.agent.host import HostCollector
from gpufleet.agent.nvml import Nvml
from gpufleet.agent.procs import ProcessAttributor, passwd_user_name
from gpufleet.wire import MAX_PROCESSES_PER_HOST, GpuProcess, Sample, safe_host_name

log = logging.getLogger("gpufleet.agent.collect")

MAX_ERRORS = 64


def default_host_name() -> str:
    """This machine's name, made safe for the wire (``[A-Za-z0-9._-]``)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:253]
    return name if safe_host_name(name) else "localhost"


class Collector:
    """Collects one :class:`~gpufleet.wire.Sample` per call to :meth:`collect`.

    ``nvml`` is an :class:`~gpufleet.agent.nvml.Nvml` gate, or a pynvml-like module (such as
    :class:`~gpufleet.agent.fakenvml.FakeNvml`) that gets wrapped in one, or ``None`` for the
    real ``pynvml``. ``host_root`` is where container runtimes' metadata is read from.
    """

    def __init__(
        self,
        host_name: str | None = None,
        nvml: Any = None,
        proc_root: str | os.PathLike[str] = "/proc",
        clock: Callable[[], float] = time.time,
        interval_seconds: float = 5.0,
        *,
        host_root: str | os.PathLike[str] = "/",
        nvml_timeout_seconds: float = 2.0,
        user_name: Callable[[int], str | None] = passwd_user_name,
    ) -> None:
        self.host_name = host_name or default_host_name()
        if not safe_host_name(self.host_name):
            raise ValueError(
                f"host name {self.host_name!r} is not valid on the wire: use letters, digits, '.', '_' and '-'"
            )
        self.interval_seconds = interval_seconds
        self._clock = clock
        if not isinstance(nvml, Nvml):
            nvml = Nvml(module=nvml, timeout_seconds=nvml_timeout_seconds)
        self.nvml: Nvml = nvml
        self._host = HostCollector(clock=clock)
        self._gpus = GpuCollector(nvml, clock=clock)
        self._procs = ProcessAttributor(proc_root, host_root=host_root, user_name=user_name)

    def collect(self) -> Sample:
        ts = self._clock()
        errors: list[str] = []
        host_metrics, host_errors = self._host.collect(ts)
        errors.extend(host_errors)
        gpu_round = self._gpus.collect(ts)
        errors.extend(gpu_round.errors)

        processes: list[GpuProcess] = []
        for use in gpu_round.processes[:MAX_PROCESSES_PER_HOST]:
            info = self._procs.describe(use.pid)
            fields: dict[str, Any] = {
                "pid": use.pid,
                "gpu_index": use.gpu_index,
                "gpu_uuid": use.gpu_uuid,
                "gpu_memory_bytes": use.gpu_memory_bytes,
            }
            if info is not None:
                started = info.started_at
                fields.update(
                    uid=info.uid,
                    user=info.user,
                    command=info.command,
                    started_at=started if started and 946684800 < started < 4102444800 else None,
                    container_id=info.container_id,
                    container_name=info.container_name,
                    container_runtime=info.container_runtime,
                )
            processes.append(GpuProcess(**fields))
        self._procs.forget_except(p.pid for p in processes)

        facts = self._host.facts()
        facts.agent_version = __version__
        gpu_facts = self._gpus.facts
        facts.driver_version = gpu_facts.driver_version
        facts.cuda_version = gpu_facts.cuda_version
        facts.nvml_version = gpu_facts.nvml_version

        return Sample(
            host=self.host_name,
            ts=ts,
            interval_seconds=self.interval_seconds,
            host_metrics=host_metrics,
            gpus=gpu_round.gpus,
            processes=processes,
            facts=facts,
            errors=[e[:1024] for e in dict.fromkeys(errors)][:MAX_ERRORS],
        )

    def close(self) -> None:
        self._gpus.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
