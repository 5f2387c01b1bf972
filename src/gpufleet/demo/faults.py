"""Fault injection into replayed hosts, at known times, with the truth recorded.

A schedule is a list of faults (YAML or JSON)::

    - {kind: gpu_lost, host: vision-A100-03, gpu: 2, at_seconds: 600, duration_seconds: 900}
    - {kind: power_off, host: nlp-V100-01, at_seconds: 1200, duration_seconds: 600}

``at_seconds`` counts from the fleet's start. Kinds, what they do to the simulated host, and
the rule that should catch them (``EXPECTED``):

- ``power_off``: no samples, and the host does not answer a probe -> ``host_down``
- ``agent_killed``: no samples, but the host answers a probe -> ``agent_down``
- ``nvml_hung``: an NVML call on one GPU blocks (the fake NVML's hang) -> ``nvml_hung``
- ``gpu_lost``: XID 79 (read in the fault's first round), then every NVML call on the GPU fails
  with GPU_IS_LOST -> ``gpu_lost``
- ``ecc``: the GPU's uncorrected ECC counter rises -> ``ecc_uncorrectable``
- ``overheat``: the GPU reads 93 C -> ``gpu_too_hot``
- ``disk_fill``: ``/scratch`` is 97% full -> ``disk_almost_full``
- ``clock_skew``: the agent's clock runs 300 s ahead -> ``clock_skew``
- ``held_idle``: a user's process holds 6 GiB on the GPU and computes nothing -> ``gpu_held_idle``
- ``ghost_memory``: 3 GiB held by a PID that no longer exists -> ``ghost_memory``
- ``network_cut``: samples are collected and spooled but not delivered until the cut heals
  (then the spool delivers them); the host does not answer a probe meanwhile -> ``host_down``
  while the cut lasts, and nothing after it.

The injector changes only the simulated hardware (the fake NVML, the simulated /proc and
disks, the agent's clock) and whether a host sends; the agent's collector reads it as it
reads a real host.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gpufleet.agent.procs import ProcInfo
from gpufleet.demo.simhost import _Disk
from gpufleet.errors import GpufleetError

Kind = Literal[
    "power_off", "agent_killed", "nvml_hung", "gpu_lost", "ecc", "overheat", "disk_fill",
    "clock_skew", "held_idle", "ghost_memory", "network_cut",
]  # fmt: skip
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
EXPECTED = {
    "power_off": "host_down", "agent_killed": "agent_down", "nvml_hung": "nvml_hung",
    "gpu_lost": "gpu_lost", "ecc": "ecc_uncorrectable", "overheat": "gpu_too_hot",
    "disk_fill": "disk_almost_full", "clock_skew": "clock_skew", "held_idle": "gpu_held_idle",
    "ghost_memory": "ghost_memory", "network_cut": "host_down",
}  # fmt: skip
GPU_KINDS = {"nvml_hung", "gpu_lost", "ecc", "overheat", "held_idle", "ghost_memory"}
SILENT_KINDS = {"power_off", "agent_killed", "network_cut"}
GIB = 2**30
GHOST_PID = 4_000_000  # above any PID the replay hands out
IDLE_PID = 4_100_000


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    host: Annotated[str, Field(min_length=1, max_length=253)]
    gpu: Annotated[int, Field(ge=0, lt=64)] | None = None
    at_seconds: Annotated[float, Field(ge=0)]
    duration_seconds: Annotated[float, Field(gt=0)]

    @property
    def end_seconds(self) -> float:
        return self.at_seconds + self.duration_seconds


def load_faults(path: str | Path, host_gpus: dict[str, int]) -> list[Fault]:
    """A schedule file; errors name the entry and the field (``faults.yaml: [3].gpu: ...``)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) if p.suffix != ".json" else json.loads(p.read_text())
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise GpufleetError(f"{p}: cannot read the fault schedule: {exc}") from None
    if not isinstance(data, list):
        raise GpufleetError(f"{p}: a fault schedule is a list of faults",
                            hint="see gpufleet/demo/faults.py for the form")  # fmt: skip
    try:
        faults = TypeAdapter(list[Fault]).validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])
        raise GpufleetError(f"{p}: {loc.lstrip('.')}: {err['msg']}") from None
    for i, f in enumerate(faults):
        if f.host not in host_gpus:
            raise GpufleetError(f"{p}: [{i}].host: no replayed host named {f.host!r}",
                                hint="gpufleet demo --hosts N names hosts like "
                                     f"{next(iter(host_gpus), '?')}")  # fmt: skip
        if f.kind in GPU_KINDS and (f.gpu is None or f.gpu >= host_gpus[f.host]):
            raise GpufleetError(f"{p}: [{i}].gpu: {f.kind} needs a GPU index below "
                                f"{host_gpus[f.host]} on {f.host}")  # fmt: skip
    return faults


def default_schedule(
    hosts: list[tuple[str, str, int]],
    *,
    start_seconds: float = 600.0,
    per_kind: int = 5,
    spacing_seconds: float = 1800.0,
    seed: int = 0,
) -> list[Fault]:
    """``per_kind`` faults of every kind on distinct hosts (name, group, GPU count), one every
    ``spacing_seconds`` in a shuffled order. ``held_idle`` lasts 5 h (the rule waits 4 h) on
    the fleet's last hosts (the long tail, where no job lands meanwhile); one ``power_off``
    takes a whole group (a rack) down at once."""
    rng = random.Random(f"faults:{seed}")
    kinds = [k for k in KINDS for _ in range(per_kind)]
    rng.shuffle(kinds)
    durations = {"held_idle": 5 * 3600.0, "ecc": 600.0, "network_cut": 240.0,
                 "clock_skew": 900.0}  # fmt: skip
    tail = [h for h in hosts[len(hosts) * 3 // 4 :]]
    out: list[Fault] = []
    used: set[str] = set()
    t = start_seconds
    for kind in kinds:
        pool = tail if kind == "held_idle" else hosts
        free = [h for h in pool if h[0] not in used] or list(pool)
        name, _group, n_gpus = free[rng.randrange(len(free))]
        used.add(name)
        gpu = rng.randrange(n_gpus) if kind in GPU_KINDS else None
        out.append(Fault(kind=kind, host=name, gpu=gpu, at_seconds=t,  # type: ignore[arg-type]
                         duration_seconds=durations.get(kind, 900.0)))  # fmt: skip
        t += spacing_seconds
    groups: dict[str, list[str]] = {}
    for name, group, _ in hosts:
        groups.setdefault(group, []).append(name)
    rack = max(groups.values(), key=len)[:10]
    out += [Fault(kind="power_off", host=h, at_seconds=t, duration_seconds=900.0) for h in rack]
    return sorted(out, key=lambda f: f.at_seconds)


@dataclass
class _Active:
    fault: Fault
    started: bool = False
    ended: bool = False
    started_at: float | None = None


@dataclass
class FaultInjector:
    """Applies a schedule to simulated hosts. ``t`` everywhere is seconds since the start."""

    faults: list[Fault]
    truth: list[dict[str, Any]] = field(default_factory=list)  # what was done, where, when
    _by_host: dict[str, list[_Active]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in self.faults:
            self._by_host.setdefault(f.host, []).append(_Active(f))

    def active(self, host: str, t: float) -> list[Fault]:
        return [a.fault for a in self._by_host.get(host, ())
                if a.fault.at_seconds <= t < a.fault.end_seconds]  # fmt: skip

    def sends(self, host: str, t: float) -> bool:
        """False while the host is off or its agent is dead (nothing is collected)."""
        return not any(f.kind in ("power_off", "agent_killed") for f in self.active(host, t))

    def delivers(self, host: str, t: float) -> bool:
        """False while the network is cut (the agent spools)."""
        return not any(f.kind == "network_cut" for f in self.active(host, t))

    def reachable(self, host: str, t: float) -> bool:
        """What a probe of the host would see."""
        return not any(f.kind in ("power_off", "network_cut") for f in self.active(host, t))

    def clock_offset(self, host: str, t: float) -> float:
        return 300.0 if any(f.kind == "clock_skew" for f in self.active(host, t)) else 0.0

    def begin(self, sim: Any, t: float) -> None:
        """Before ``SimHost.apply``: faults that start or end now."""
        for a in self._by_host.get(sim.spec.name, ()):
            f = a.fault
            if not a.started and t >= f.at_seconds:
                a.started = True
                a.started_at = t
                self._start(sim, f)
                self.truth.append({"event": "start", "t": t, **f.model_dump()})
            if a.started and not a.ended and t >= f.end_seconds:
                a.ended = True
                self._stop(sim, f)
                self.truth.append({"event": "end", "t": t, **f.model_dump()})

    def hold(self, sim: Any, t: float) -> None:
        """After ``SimHost.apply`` (which sets the replay's own load), before collecting:
        what the replay would otherwise overwrite."""
        for a in self._by_host.get(sim.spec.name, ()):
            if a.started and not a.ended:
                self._hold(sim, a.fault, first=a.started_at == t)

    def _start(self, sim: Any, f: Fault) -> None:
        nvml, g = sim.nvml, f.gpu if f.gpu is not None else 0
        if f.kind == "nvml_hung":
            nvml.hang("nvmlDeviceGetUtilizationRates", g)
        elif f.kind == "gpu_lost":
            nvml.push_xid(g, 79)
        elif f.kind == "ecc":
            nvml.gpus[g].ecc_uncorrected_volatile += 2
            nvml.push_xid(g, 48)
        elif f.kind == "disk_fill":  # a scratch disk someone fills (not cleaned by the sim)
            sim.host.disks.append(_Disk("/scratch", "/dev/sdb1", "ext4", 1000 * GIB,
                                        970.0 * GIB, False))  # fmt: skip

    def _hold(self, sim: Any, f: Fault, first: bool = False) -> None:
        nvml, g = sim.nvml, f.gpu if f.gpu is not None else 0
        if f.kind == "gpu_lost" and not first:  # the first round reads the XID 79 (the driver
            nvml.fail(g, "*", 15)  # logs it as the GPU falls off), then: NVML_ERROR_GPU_IS_LOST
        elif f.kind == "overheat":
            nvml.gpus[g].temperature_celsius = 93
            sim.temps[g] = 93.0
        elif f.kind == "held_idle":
            sim.procs.table[IDLE_PID + g] = ProcInfo(
                pid=IDLE_PID + g, uid=1500, user="idler", command="python notebook.py",
                started_at=None,
            )  # fmt: skip
            nvml.add_process(g, IDLE_PID + g, 6 * GIB)
            nvml.gpus[g].utilization_gpu_percent = 0
        elif f.kind == "ghost_memory":
            nvml.add_process(g, GHOST_PID + g, 3 * GIB)  # no /proc entry: gone

    def _stop(self, sim: Any, f: Fault) -> None:
        nvml, g = sim.nvml, f.gpu if f.gpu is not None else 0
        if f.kind == "nvml_hung":
            nvml.release()
        elif f.kind == "gpu_lost":
            nvml.errors.pop((g, "*"), None)
        elif f.kind == "disk_fill":
            sim.host.disks = [d for d in sim.host.disks if d.mount != "/scratch"]
        elif f.kind == "held_idle":
            nvml.remove_process(g, IDLE_PID + g)
            sim.procs.table.pop(IDLE_PID + g, None)
        elif f.kind == "ghost_memory":
            nvml.remove_process(g, GHOST_PID + g)
