"""A fake of the lowest layer: an object with the function surface of ``pynvml``.

Only the NVML calls are replaced; the agent code above them runs for real. Used by the tests
and by the replay fleet (simulated servers), so its state is plain mutable data changed from
outside: utilisation, memory, processes, per-call errors, a hung call, queued XID events.

    fake = FakeNvml.with_models(["NVIDIA A100-SXM4-80GB"] * 4)
    fake.add_process(0, pid=4242, used_memory_bytes=10 * 2**30)
    fake.fail(2, "*", FakeNvml.NVML_ERROR_GPU_IS_LOST)      # every call on GPU 2
    fake.fail(1, "nvmlDeviceGetFanSpeed", FakeNvml.NVML_ERROR_NOT_SUPPORTED)
    fake.hang("nvmlDeviceGetPowerUsage", index=0)            # blocks until fake.release()
    fake.push_xid(3, 79)
    Collector(nvml=fake)
"""

from __future__ import annotations

import string
import threading
import uuid as uuidlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

# -- error codes and classes (same names and hierarchy as pynvml) ----------------------------

NVML_SUCCESS = 0
_ERROR_CODES = {
    "NVML_ERROR_UNINITIALIZED": 1,
    "NVML_ERROR_INVALID_ARGUMENT": 2,
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_ALREADY_INITIALIZED": 5,
    "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_INSUFFICIENT_SIZE": 7,
    "NVML_ERROR_INSUFFICIENT_POWER": 8,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_TIMEOUT": 10,
    "NVML_ERROR_IRQ_ISSUE": 11,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_CORRUPTED_INFOROM": 14,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_OPERATING_SYSTEM": 17,
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": 18,
    "NVML_ERROR_IN_USE": 19,
    "NVML_ERROR_MEMORY": 20,
    "NVML_ERROR_NO_DATA": 21,
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": 25,
    "NVML_ERROR_UNKNOWN": 999,
}
_ERROR_TEXT = {
    3: "Not Supported",
    4: "Insufficient Permissions",
    9: "Driver Not Loaded",
    10: "Timeout",
    12: "NVML Shared Library Not Found",
    13: "Function Not Found",
    15: "GPU is lost",
    16: "GPU requires restart",
    999: "Unknown Error",
}


class NVMLError(Exception):
    """Base class; ``NVMLError(code)`` returns the subclass for that code, as in pynvml."""

    _by_code: ClassVar[dict[int, type[NVMLError]]] = {}
    value: int

    def __new__(cls, value: int = 999, *args: Any) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._by_code.get(value, NVMLError)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int = 999, *args: Any) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        return _ERROR_TEXT.get(self.value, f"NVML Error with code {self.value}")


_ERROR_CLASSES: dict[str, type[NVMLError]] = {}
for _const, _code in _ERROR_CODES.items():
    _cls_name = "NVMLError_" + string.capwords(_const.removeprefix("NVML_ERROR_"), "_").replace(
        "_", ""
    )

    def _make_new(code: int) -> Any:
        def __new__(cls: type[NVMLError], *args: Any) -> NVMLError:
            return NVMLError.__new__(cls, code)

        return __new__

    _cls = type(_cls_name, (NVMLError,), {"__new__": _make_new(_code)})
    NVMLError._by_code[_code] = _cls
    _ERROR_CLASSES[_cls_name] = _cls
    globals()[_cls_name] = _cls


_MEMORY_V2 = 0x02000028  # the struct version pynvml passes: sizeof(nvmlMemory_v2_t) | 2 << 24

# -- data returned by the calls (attribute names as in pynvml's structures) -----------------


@dataclass
class Utilization:
    gpu: int
    memory: int


@dataclass
class Memory:
    total: int
    free: int
    used: int


@dataclass
class MemoryV2:
    """``nvmlDeviceGetMemoryInfo(handle, nvmlMemory_v2)``: ``used`` leaves out ``reserved``."""

    version: int
    total: int
    reserved: int
    free: int
    used: int


@dataclass
class ProcessInfo:
    pid: int
    usedGpuMemory: int | None  # pynvml's attribute names
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass
class EventData:
    device: Any
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass(frozen=True)
class Handle:
    index: int


@dataclass
class EventSet:
    devices: list[int] = field(default_factory=list)


# -- the simulated GPUs ----------------------------------------------------------------------

# name -> (memory bytes, power limit milliwatts, max SM clock MHz). The H200's figures are as
# read through NVML on a real one (driver 580.159.04; docs/agent.md, "Checked on a real GPU").
MODELS: dict[str, tuple[int, int, int]] = {
    "NVIDIA H200": (150_754_820_096, 700_000, 1980),
    "NVIDIA A100-SXM4-80GB": (80 * 2**30, 400_000, 1410),
    "NVIDIA A100-PCIE-40GB": (40 * 2**30, 250_000, 1410),
    "NVIDIA H100 80GB HBM3": (80 * 2**30, 700_000, 1980),
    "Tesla V100-SXM2-32GB": (32 * 2**30, 300_000, 1530),
    "Tesla P100-PCIE-16GB": (16 * 2**30, 250_000, 1328),
    "Tesla K80": (12 * 2**30, 149_000, 875),
    "NVIDIA GeForce RTX 3090": (24 * 2**30, 350_000, 1695),
    "NVIDIA GeForce RTX 4090": (24 * 2**30, 450_000, 2520),
}


@dataclass
class FakeGpu:
    """State of one simulated GPU. Mutate it freely (the replay fleet does)."""

    name: str = "NVIDIA A100-SXM4-80GB"
    uuid: str = ""
    memory_total_bytes: int = 80 * 2**30
    # Memory the driver sets aside: counted as used by the v1 memory call only (as on a real
    # GPU, where nvidia-smi, reading v2, shows an idle GPU at 0 MiB).
    memory_reserved_bytes: int = 512 * 2**20
    utilization_gpu_percent: int = 0
    utilization_memory_percent: int = 0
    temperature_celsius: int = 35
    power_milliwatts: int = 60_000
    power_limit_milliwatts: int = 400_000
    fan_percent: int = 30
    sm_clock_mhz: int = 210
    pstate: int = 8
    ecc_uncorrected_volatile: int = 0
    compute_processes: dict[int, int | None] = field(default_factory=dict)  # pid -> bytes
    graphics_processes: dict[int, int | None] = field(default_factory=dict)
    xid_queue: deque[int] = field(default_factory=deque)

    @classmethod
    def of_model(cls, name: str, index: int = 0) -> FakeGpu:
        memory, power_limit, _clock = MODELS.get(name, (16 * 2**30, 250_000, 1500))
        return cls(
            name=name,
            uuid=f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_OID, f'{name}/{index}')}",
            memory_total_bytes=memory,
            power_limit_milliwatts=power_limit,
        )

    @property
    def memory_used_bytes(self) -> int:
        """Used memory as the v1 call reports it: the processes' and the reserved memory."""
        return min(self.memory_reserved_bytes + self.memory_held_bytes, self.memory_total_bytes)

    @property
    def memory_held_bytes(self) -> int:
        """Memory the processes hold (what the v2 call reports as used)."""
        held = sum(
            b or 0 for b in (*self.compute_processes.values(), *self.graphics_processes.values())
        )
        return min(held, self.memory_total_bytes)


class FakeNvml:
    """Drop-in for the ``pynvml`` module: ``Nvml(module=FakeNvml(...))``."""

    NVML_SUCCESS = NVML_SUCCESS
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_GRAPHICS = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_PSTATE_UNKNOWN = 32
    NVML_VALUE_NOT_AVAILABLE = 0xFFFFFFFFFFFFFFFF
    nvmlMemory_v2 = _MEMORY_V2
    nvmlEventTypeXidCriticalError = 0x0000000000000008
    nvmlEventTypeNone = 0
    NVMLError = NVMLError

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        driver_version: str = "550.54.15",
        cuda_driver_version: int = 12040,
        nvml_version: str = "12.550.54.15",
        init_error: int | None = None,
        return_bytes: bool = False,
        memory_v2: bool = True,
    ) -> None:
        self.gpus: list[FakeGpu] = list(gpus or [])
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.nvml_version = nvml_version
        self.init_error = init_error  # e.g. NVML_ERROR_DRIVER_NOT_LOADED: nvmlInit fails
        self.return_bytes = return_bytes  # old pynvml returned bytes for strings
        self.memory_v2 = memory_v2  # False: a driver older than R510 (no _v2 memory call)
        self.initialized = False
        self.calls: Counter[str] = Counter()  # function name -> number of calls
        # (gpu index or None for any, function name or "*") -> error code
        self.errors: dict[tuple[int | None, str], int] = {}
        self._hang: tuple[int | None, str] | None = None
        self._released = threading.Event()
        self.hung = threading.Event()  # set while a call is blocked in a hang
        self._lock = threading.Lock()

    @classmethod
    def with_models(cls, names: list[str], **kwargs: Any) -> FakeNvml:
        return cls([FakeGpu.of_model(name, i) for i, name in enumerate(names)], **kwargs)

    # -- controls used from outside --------------------------------------------------------

    def set_utilization(self, index: int, gpu_percent: int, memory_percent: int = 0) -> None:
        self.gpus[index].utilization_gpu_percent = gpu_percent
        self.gpus[index].utilization_memory_percent = memory_percent

    def add_process(
        self, index: int, pid: int, used_memory_bytes: int | None, *, graphics: bool = False
    ) -> None:
        gpu = self.gpus[index]
        with self._lock:
            (gpu.graphics_processes if graphics else gpu.compute_processes)[pid] = used_memory_bytes

    def remove_process(self, index: int, pid: int) -> None:
        gpu = self.gpus[index]
        with self._lock:
            gpu.compute_processes.pop(pid, None)
            gpu.graphics_processes.pop(pid, None)

    def fail(self, index: int | None, function: str, code: int) -> None:
        """Make ``function`` (or every call, ``"*"``) on GPU ``index`` raise ``code``."""
        self.errors[(index, function)] = code

    def clear_errors(self) -> None:
        self.errors.clear()

    def hang(self, function: str, index: int | None = None) -> None:
        """Make ``function`` (on GPU ``index``, or any) block until :meth:`release`."""
        self._released.clear()
        self._hang = (index, function)

    def release(self) -> None:
        self._hang = None
        self._released.set()

    def push_xid(self, index: int, xid: int) -> None:
        self.gpus[index].xid_queue.append(xid)

    # -- helpers ---------------------------------------------------------------------------

    def _enter(self, function: str, handle: Handle | None = None) -> FakeGpu | None:
        self.calls[function] += 1
        index = handle.index if handle is not None else None
        if function != "nvmlInit" and not self.initialized:
            raise NVMLError(_ERROR_CODES["NVML_ERROR_UNINITIALIZED"])
        for key in ((index, function), (index, "*"), (None, function)):
            code = self.errors.get(key)
            if code is not None:
                raise NVMLError(code)
        hang = self._hang
        if hang is not None and hang[1] == function and hang[0] in (None, index):
            self.hung.set()
            self._released.wait()
            self.hung.clear()
        if handle is None:
            return None
        if not 0 <= handle.index < len(self.gpus):
            raise NVMLError(_ERROR_CODES["NVML_ERROR_INVALID_ARGUMENT"])
        return self.gpus[handle.index]

    def _str(self, text: str) -> str | bytes:
        return text.encode() if self.return_bytes else text

    # -- the pynvml surface ----------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._enter("nvmlSystemGetDriverVersion")
        return self._str(self.driver_version)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlSystemGetNVMLVersion(self) -> str | bytes:
        self._enter("nvmlSystemGetNVMLVersion")
        return self._str(self.nvml_version)

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        handle = Handle(index)
        self._enter("nvmlDeviceGetHandleByIndex", handle)
        return handle

    def nvmlDeviceGetIndex(self, handle: Handle) -> int:
        self._enter("nvmlDeviceGetIndex", handle)
        return handle.index

    def nvmlDeviceGetUUID(self, handle: Handle) -> str | bytes:
        gpu = self._enter("nvmlDeviceGetUUID", handle)
        assert gpu is not None
        return self._str(gpu.uuid)

    def nvmlDeviceGetName(self, handle: Handle) -> str | bytes:
        gpu = self._enter("nvmlDeviceGetName", handle)
        assert gpu is not None
        return self._str(gpu.name)

    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> Utilization:
        gpu = self._enter("nvmlDeviceGetUtilizationRates", handle)
        assert gpu is not None
        return Utilization(gpu.utilization_gpu_percent, gpu.utilization_memory_percent)

    def nvmlDeviceGetMemoryInfo(self, handle: Handle, version: int | None = None) -> Any:
        """v1 (``version`` None): ``used`` counts the driver's reserved memory, as NVML does;
        v2: ``used`` leaves it out and ``reserved`` tells it apart, as nvidia-smi shows it."""
        gpu = self._enter("nvmlDeviceGetMemoryInfo", handle)
        assert gpu is not None
        total = gpu.memory_total_bytes
        if not version:
            used = gpu.memory_used_bytes
            return Memory(total, total - used, used)
        if not self.memory_v2:
            raise NVMLError(_ERROR_CODES["NVML_ERROR_FUNCTION_NOT_FOUND"])
        if version != _MEMORY_V2:
            raise NVMLError(_ERROR_CODES["NVML_ERROR_ARGUMENT_VERSION_MISMATCH"])
        reserved = min(gpu.memory_reserved_bytes, total)
        used = min(gpu.memory_held_bytes, total - reserved)
        return MemoryV2(version, total, reserved, total - reserved - used, used)

    def nvmlDeviceGetTemperature(self, handle: Handle, sensor: int) -> int:
        gpu = self._enter("nvmlDeviceGetTemperature", handle)
        assert gpu is not None
        return gpu.temperature_celsius

    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int:
        gpu = self._enter("nvmlDeviceGetPowerUsage", handle)
        assert gpu is not None
        return gpu.power_milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Handle) -> int:
        gpu = self._enter("nvmlDeviceGetEnforcedPowerLimit", handle)
        assert gpu is not None
        return gpu.power_limit_milliwatts

    def nvmlDeviceGetFanSpeed(self, handle: Handle) -> int:
        gpu = self._enter("nvmlDeviceGetFanSpeed", handle)
        assert gpu is not None
        return gpu.fan_percent

    def nvmlDeviceGetClockInfo(self, handle: Handle, clock_type: int) -> int:
        gpu = self._enter("nvmlDeviceGetClockInfo", handle)
        assert gpu is not None
        return gpu.sm_clock_mhz

    def nvmlDeviceGetPerformanceState(self, handle: Handle) -> int:
        gpu = self._enter("nvmlDeviceGetPerformanceState", handle)
        assert gpu is not None
        return gpu.pstate

    def nvmlDeviceGetTotalEccErrors(
        self, handle: Handle, error_type: int, counter_type: int
    ) -> int:
        gpu = self._enter("nvmlDeviceGetTotalEccErrors", handle)
        assert gpu is not None
        return gpu.ecc_uncorrected_volatile

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Handle) -> list[ProcessInfo]:
        gpu = self._enter("nvmlDeviceGetComputeRunningProcesses", handle)
        assert gpu is not None
        with self._lock:
            return [ProcessInfo(pid, used) for pid, used in gpu.compute_processes.items()]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Handle) -> list[ProcessInfo]:
        gpu = self._enter("nvmlDeviceGetGraphicsRunningProcesses", handle)
        assert gpu is not None
        with self._lock:
            return [ProcessInfo(pid, used) for pid, used in gpu.graphics_processes.items()]

    def nvmlDeviceGetSupportedEventTypes(self, handle: Handle) -> int:
        self._enter("nvmlDeviceGetSupportedEventTypes", handle)
        return self.nvmlEventTypeXidCriticalError

    def nvmlEventSetCreate(self) -> EventSet:
        self._enter("nvmlEventSetCreate")
        return EventSet()

    def nvmlDeviceRegisterEvents(
        self, handle: Handle, event_types: int, event_set: EventSet
    ) -> None:
        self._enter("nvmlDeviceRegisterEvents", handle)
        if (
            event_types & self.nvmlEventTypeXidCriticalError
            and handle.index not in event_set.devices
        ):
            event_set.devices.append(handle.index)

    def nvmlEventSetWait(self, event_set: EventSet, timeoutms: int) -> EventData:
        """Return the next queued XID event; raise ``NVMLError_Timeout`` when none is queued
        (the fake never waits: the agent polls with a zero timeout)."""
        self._enter("nvmlEventSetWait")
        for index in event_set.devices:
            queue_ = self.gpus[index].xid_queue
            if queue_:
                return EventData(
                    Handle(index), self.nvmlEventTypeXidCriticalError, queue_.popleft()
                )
        raise NVMLError(_ERROR_CODES["NVML_ERROR_TIMEOUT"])

    def nvmlEventSetFree(self, event_set: EventSet) -> None:
        self._enter("nvmlEventSetFree")
        event_set.devices.clear()

    def nvmlErrorString(self, code: int) -> str:
        return _ERROR_TEXT.get(code, f"NVML Error with code {code}")


# The NVML_ERROR_* constants and NVMLError_* classes, as attributes like pynvml's.
for _name, _value in (*_ERROR_CODES.items(), *_ERROR_CLASSES.items()):
    setattr(FakeNvml, _name, _value)
