"""GPU collector: per-GPU metrics, GPU processes and XID events through the NVML gate.

Handles are opened once (the first round NVML answers), not per round. Each GPU is read as one
job on the gate's worker with a deadline, so a GPU that errors or hangs is reported with
``Gpu.error`` and the rest of the round goes on. No driver or no GPU gives an empty list and a
host-level error string, never an exception.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gpufleet.agent.nvml import Nvml, NvmlCallError, NvmlHung, NvmlUnavailable
from gpufleet.wire import MAX_GPUS_PER_HOST, Gpu, XidEvent

log = logging.getLogger("gpufleet.agent.gpu")

MAX_XID_PER_ROUND = 1024
_NVML_VALUE_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF


class GpuProcessUse(NamedTuple):
    """A process holding a GPU, as NVML sees it (attribution to a user comes later)."""

    gpu_index: int
    gpu_uuid: str
    pid: int
    gpu_memory_bytes: int | None


@dataclass
class GpuRound:
    gpus: list[Gpu] = field(default_factory=list)
    processes: list[GpuProcessUse] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class _Device:
    index: int
    handle: Any = None
    uuid: str = ""
    name: str = ""
    open_error: str | None = None


@dataclass
class GpuFacts:
    driver_version: str | None = None
    cuda_version: str | None = None
    nvml_version: str | None = None


class GpuCollector:
    """Reads every GPU of the host through one :class:`Nvml` gate."""

    def __init__(self, nvml: Nvml, *, clock: Callable[[], float] = time.time) -> None:
        self.nvml = nvml
        self._clock = clock
        self._devices: list[_Device] | None = None
        self._by_uuid: dict[str, int] = {}
        self._event_set: Any = None
        self.facts = GpuFacts()
        # Whether the driver answers the v2 memory call (R510 and later); None: not tried yet.
        self._memory_v2: bool | None = None

    # -- opening --------------------------------------------------------------------------

    def _open(self) -> list[_Device]:
        """Initialise NVML, read static facts, open every handle and register XID events."""
        nvml = self.nvml
        nvml.init()

        def open_all() -> list[_Device]:
            mod = nvml.module
            self.facts = GpuFacts(
                driver_version=nvml.query("nvmlSystemGetDriverVersion"),
                cuda_version=_cuda_version(nvml.query("nvmlSystemGetCudaDriverVersion")),
                nvml_version=nvml.query("nvmlSystemGetNVMLVersion"),
            )
            count = min(int(nvml.query("nvmlDeviceGetCount")), MAX_GPUS_PER_HOST)
            devices = [self._open_device(i) for i in range(count)]
            if count:
                self._event_set = nvml.query("nvmlEventSetCreate")
            xid_mask = getattr(mod, "nvmlEventTypeXidCriticalError", 0x8)
            for dev in devices:
                if dev.handle is not None and self._event_set is not None:
                    try:
                        nvml.query(
                            "nvmlDeviceRegisterEvents", dev.handle, xid_mask, self._event_set
                        )
                    except NvmlCallError as exc:
                        log.info("GPU %d: XID events not available: %s", dev.index, exc)
            return devices

        devices = nvml.run(open_all, description="opening GPUs")
        self._devices = devices
        self._by_uuid = {d.uuid: d.index for d in devices if d.uuid}
        return devices

    def _open_device(self, index: int) -> _Device:
        nvml = self.nvml
        dev = _Device(index)
        try:
            dev.handle = nvml.query("nvmlDeviceGetHandleByIndex", index)
            dev.uuid = nvml.query("nvmlDeviceGetUUID", dev.handle, default="") or ""
            dev.name = nvml.query("nvmlDeviceGetName", dev.handle, default="") or ""
        except NvmlCallError as exc:
            dev.handle = None
            dev.open_error = str(exc)
        return dev

    # -- one round ------------------------------------------------------------------------

    def collect(self, now: float | None = None) -> GpuRound:
        now = self._clock() if now is None else now
        out = GpuRound()
        try:
            devices = self._devices if self._devices is not None else self._open()
        except NvmlUnavailable as exc:
            out.errors.append(str(exc))
            return out
        except (NvmlHung, NvmlCallError) as exc:
            out.errors.append(f"NVML: {exc}")
            return out
        if not devices:
            out.errors.append("NVML: no GPU found")
            return out

        xids: dict[int, list[XidEvent]] = {}
        hung: str | None = None
        try:
            xids = self.nvml.run(lambda: self._drain_xid(now), description="reading XID events")
        except NvmlHung as exc:
            hung = str(exc)
        except NvmlCallError as exc:
            out.errors.append(f"NVML XID events: {exc}")

        for dev in devices:
            try:
                gpu, procs = self.nvml.run(
                    functools.partial(self._read, dev), description=f"reading GPU {dev.index}"
                )
            except NvmlHung as exc:
                hung = hung or str(exc)
                gpu, procs = Gpu(index=dev.index, uuid=dev.uuid, name=dev.name, error=str(exc)), []
            gpu.xid_events = xids.get(dev.index, [])
            out.gpus.append(gpu)
            out.processes.extend(procs)
        if hung:
            out.errors.append(hung)
        return out

    def _drain_xid(self, now: float) -> dict[int, list[XidEvent]]:
        events: dict[int, list[XidEvent]] = {}
        if self._event_set is None:
            return events
        for _ in range(MAX_XID_PER_ROUND):
            try:
                data = self.nvml.query("nvmlEventSetWait", self._event_set, 0)
            except NvmlCallError as exc:
                if self.nvml.is_error(exc, "Timeout"):
                    break  # no more events queued
                raise
            if data is None:
                break
            try:
                uuid = self.nvml.query("nvmlDeviceGetUUID", data.device, default="")
            except NvmlCallError:
                uuid = ""
            index = self._by_uuid.get(uuid)
            if index is None:
                continue
            xid = int(data.eventData)
            if 0 <= xid <= 1_000_000:
                events.setdefault(index, []).append(XidEvent(xid=xid, ts=now))
        return events

    def _read(self, dev: _Device) -> tuple[Gpu, list[GpuProcessUse]]:
        nvml = self.nvml
        mod = nvml.module
        if dev.handle is None:
            reopened = self._open_device(dev.index)
            if reopened.handle is None:
                return Gpu(index=dev.index, error=reopened.open_error or "cannot open"), []
            dev.handle, dev.uuid, dev.name, dev.open_error = (
                reopened.handle,
                reopened.uuid,
                reopened.name,
                None,
            )
            self._by_uuid[dev.uuid] = dev.index

        errors: list[str] = []
        handle = dev.handle

        def q(fn: str, *args: Any) -> Any:
            if errors and any(f in e for e in errors for f in _FATAL_TEXT):
                return None  # the GPU is gone: do not wait for every other call to fail
            try:
                return nvml.query(fn, handle, *args)
            except NvmlCallError as exc:
                errors.append(str(exc))
                return None

        gpu: dict[str, Any] = {}
        util = q("nvmlDeviceGetUtilizationRates")
        if util is not None:
            gpu["utilization_gpu_percent"] = _clamp(util.gpu, 0, 100)
            gpu["utilization_memory_percent"] = _clamp(util.memory, 0, 100)
        mem = self._memory_info(handle, errors)
        if mem is None and not errors:
            mem = q("nvmlDeviceGetMemoryInfo")
        if mem is not None:
            gpu["memory_used_bytes"] = _bytes(mem.used)
            gpu["memory_total_bytes"] = _bytes(mem.total)
        gpu["temperature_celsius"] = _clamp(
            q("nvmlDeviceGetTemperature", getattr(mod, "NVML_TEMPERATURE_GPU", 0)), -50, 200
        )
        gpu["power_watts"] = _clamp(_milli(q("nvmlDeviceGetPowerUsage")), 0, 10_000)
        gpu["power_limit_watts"] = _clamp(_milli(q("nvmlDeviceGetEnforcedPowerLimit")), 0, 10_000)
        gpu["fan_percent"] = _clamp(q("nvmlDeviceGetFanSpeed"), 0, 100)
        clock_mhz = q("nvmlDeviceGetClockInfo", getattr(mod, "NVML_CLOCK_SM", 1))
        gpu["sm_clock_hertz"] = None if clock_mhz is None else _clamp(clock_mhz * 1e6, 0, 1e11)
        pstate = q("nvmlDeviceGetPerformanceState")
        gpu["pstate"] = pstate if isinstance(pstate, int) and 0 <= pstate <= 15 else None
        ecc = q(
            "nvmlDeviceGetTotalEccErrors",
            getattr(mod, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            getattr(mod, "NVML_VOLATILE_ECC", 0),
        )
        gpu["ecc_uncorrected_volatile"] = ecc if isinstance(ecc, int) and ecc >= 0 else None

        held: dict[int, int | None] = {}
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for info in q(fn) or []:
                used = getattr(info, "usedGpuMemory", None)
                if used is not None and (used < 0 or used >= _NVML_VALUE_NOT_AVAILABLE):
                    used = None
                prev = held.get(info.pid)
                held[info.pid] = used if prev is None else max(prev, used or 0)
        procs = [GpuProcessUse(dev.index, dev.uuid, pid, used) for pid, used in held.items()]

        error = "; ".join(dict.fromkeys(errors))[:1024] if errors else None
        return Gpu(index=dev.index, uuid=dev.uuid, name=dev.name, error=error, **gpu), procs

    def _memory_info(self, handle: Any, errors: list[str]) -> Any:
        """The v2 memory answer, whose ``used`` leaves out the memory the driver reserves (615
        MiB on an idle H200: with v1 an idle GPU looks held, and nvidia-smi, which reads v2,
        says 0 MiB). ``None`` where the driver has no v2 call; it is then not asked again."""
        version = getattr(self.nvml.module, "nvmlMemory_v2", None)
        if self._memory_v2 is False or version is None:
            return None
        try:
            mem = self.nvml.query("nvmlDeviceGetMemoryInfo", handle, version)
        except NvmlCallError as exc:
            if any(f in str(exc) for f in _FATAL_TEXT):
                errors.append(str(exc))
                return None
            if self.nvml.is_error(exc, "ArgumentVersionMismatch"):
                mem = None
            else:
                errors.append(str(exc))
                return None
        if mem is None:
            log.info("NVML has no v2 memory call (driver older than R510): used memory "
                     "includes what the driver reserves")  # fmt: skip
            self._memory_v2 = False
            return None
        self._memory_v2 = True
        return mem

    def close(self) -> None:
        if self._event_set is not None:
            try:
                self.nvml.query("nvmlEventSetFree", self._event_set)
            except Exception as exc:
                log.debug("nvmlEventSetFree failed: %s", exc)
            self._event_set = None
        self._devices = None
        self.nvml.shutdown()


_FATAL_TEXT = ("GPU is lost", "GpuIsLost", "requires restart", "ResetRequired")


def _cuda_version(value: Any) -> str | None:
    if not isinstance(value, int) or value <= 0:
        return None
    return f"{value // 1000}.{value % 1000 // 10}"


def _milli(value: Any) -> float | None:
    return None if value is None else value / 1000.0


def _bytes(value: Any) -> int | None:
    if value is None or value < 0 or value > 2**62:
        return None
    return int(value)


def _clamp(value: Any, low: float, high: float) -> Any:
    if value is None:
        return None
    return min(max(value, low), high)
