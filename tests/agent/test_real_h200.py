"""What the agent read on a real NVIDIA H200, replayed through the fake NVML.

``fixtures/h200/`` holds ``scripts/nvml_probe.py``'s recording on one H200 (driver 580.159.04):
every NVML answer idle and under a PyTorch load, the agent's own samples, and what nvidia-smi
printed at the same moment. A fake set to the recorded answers must lead the agent to the
sample the real agent produced, and that sample must agree with nvidia-smi. The recording also
pins the bug it found: NVML's v1 memory call counts the 615 MiB the driver reserves as used,
so an idle H200 looked held (over ``gpu_is_free``'s 512 MiB) where nvidia-smi said 0 MiB.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gpufleet.agent.fakenvml import FakeGpu, FakeNvml
from gpufleet.wire import Gpu, GpuProcess, Sample, gpu_is_free

H200 = Path(__file__).parent / "fixtures" / "h200"
RAW = json.loads((H200 / "nvml_raw.json").read_text())
SAMPLES = json.loads((H200 / "samples.json").read_text())
MIB = 2**20
# Fields that held still through a phase (the raw answers and the samples were read seconds
# apart), and the ones that moved, with how far they moved within the phase.
STEADY = (
    "name", "uuid", "memory_used_bytes", "memory_total_bytes", "power_limit_watts",
    "fan_percent", "pstate", "ecc_uncorrected_volatile",
)  # fmt: skip
MOVING = {
    "utilization_gpu_percent": 2.0,
    "utilization_memory_percent": 3.0,
    "temperature_celsius": 3.0,
    "power_watts": 5.0,
    "sm_clock_hertz": 100e6,
}


def _value(gpu: dict[str, Any], call: str) -> Any:
    return gpu[call]["value"]


def fake_from_recording(phase: str) -> tuple[FakeNvml, int | None]:
    """A fake H200 answering what the real one answered in ``phase`` ("idle" or "load")."""
    rec = RAW[phase]
    g = rec["gpus"][0]
    mem2 = _value(g, "nvmlDeviceGetMemoryInfo_v2")
    util = _value(g, "nvmlDeviceGetUtilizationRates")
    gpu = FakeGpu.of_model(_value(g, "nvmlDeviceGetName"))
    gpu.uuid = _value(g, "nvmlDeviceGetUUID")
    gpu.memory_reserved_bytes = mem2["reserved"]
    gpu.utilization_gpu_percent, gpu.utilization_memory_percent = util["gpu"], util["memory"]
    gpu.temperature_celsius = _value(g, "nvmlDeviceGetTemperature")
    gpu.power_milliwatts = _value(g, "nvmlDeviceGetPowerUsage")
    gpu.sm_clock_mhz = _value(g, "nvmlDeviceGetClockInfo")
    gpu.pstate = _value(g, "nvmlDeviceGetPerformanceState")
    gpu.ecc_uncorrected_volatile = _value(g, "nvmlDeviceGetTotalEccErrors")
    system = rec["system"]
    fake = FakeNvml(
        [gpu],
        driver_version=_value(system, "nvmlSystemGetDriverVersion"),
        cuda_driver_version=_value(system, "nvmlSystemGetCudaDriverVersion"),
        nvml_version=_value(system, "nvmlSystemGetNVMLVersion"),
    )
    assert g["nvmlDeviceGetFanSpeed"]["error"] == "NVMLError_NotSupported"  # no fan on an SXM
    fake.fail(None, "nvmlDeviceGetFanSpeed", FakeNvml.NVML_ERROR_NOT_SUPPORTED)
    pid = None
    for proc in _value(g, "nvmlDeviceGetComputeRunningProcesses"):
        pid = proc["pid"]
        fake.add_process(0, pid, proc["usedGpuMemory"])
    # The few MiB of context memory no process is charged with, as v2 reported them.
    held = sum(p["usedGpuMemory"] for p in _value(g, "nvmlDeviceGetComputeRunningProcesses"))
    if mem2["used"] > held:
        fake.add_process(0, 999_999, mem2["used"] - held)
    return fake, pid


def test_the_fake_h200_model_is_the_recorded_card():
    g = RAW["idle"]["gpus"][0]
    gpu = FakeGpu.of_model("NVIDIA H200")
    assert gpu.memory_total_bytes == _value(g, "nvmlDeviceGetMemoryInfo")["total"]
    assert gpu.power_limit_milliwatts == _value(g, "nvmlDeviceGetEnforcedPowerLimit")


@pytest.mark.parametrize("phase", ["idle", "load"])
def test_replayed_answers_give_the_sample_the_real_agent_collected(phase, make_collector):
    fake, _pid = fake_from_recording(phase)
    sample = make_collector(fake).collect()
    real = Gpu.model_validate(SAMPLES[phase]["sample"]["gpus"][0])
    (got,) = sample.gpus
    assert {f: getattr(got, f) for f in STEADY} == {f: getattr(real, f) for f in STEADY}
    for f, slack in MOVING.items():
        assert getattr(got, f) == pytest.approx(getattr(real, f), abs=slack), f
    assert got.error is None and got.fan_percent is None
    facts = SAMPLES[phase]["sample"]["facts"]
    assert (sample.facts.driver_version, sample.facts.cuda_version) == (
        facts["driver_version"],
        facts["cuda_version"],
    )


@pytest.mark.parametrize("phase", ["idle", "load"])
def test_the_real_agent_agreed_with_nvidia_smi(phase):
    """The recorded sample against nvidia-smi, read right after it, in nvidia-smi's units."""
    rec = SAMPLES[phase]
    gpu = rec["sample"]["gpus"][0]
    smi = rec["smi"]["gpus"][0]
    assert round(gpu["memory_used_bytes"] / MIB) == int(smi["memory.used"])
    assert gpu["memory_total_bytes"] // MIB == int(smi["memory.total"])
    assert gpu["utilization_gpu_percent"] == pytest.approx(float(smi["utilization.gpu"]), abs=2)
    assert gpu["temperature_celsius"] == pytest.approx(float(smi["temperature.gpu"]), abs=1)
    assert gpu["power_limit_watts"] == float(smi["enforced.power.limit"])
    assert gpu["power_watts"] == pytest.approx(float(smi["power.draw"]), abs=5.0)
    assert gpu["pstate"] == int(smi["pstate"].removeprefix("P"))
    assert smi["fan.speed"] == "[N/A]" and gpu["fan_percent"] is None
    procs = rec["sample"]["processes"]
    apps = [line.split(", ") for line in rec["smi"]["apps"]]
    assert [(p["pid"], p["gpu_memory_bytes"] // MIB) for p in procs] == [
        (int(a[0]), int(a[2])) for a in apps
    ]


def test_an_idle_h200_is_free_and_a_loaded_one_is_not():
    idle = Sample.model_validate(SAMPLES["idle"]["sample"])
    load = Sample.model_validate(SAMPLES["load"]["sample"])
    assert gpu_is_free(idle.gpus[0], idle.processes)
    assert not gpu_is_free(load.gpus[0], load.processes)
    assert load.processes[0].pid == SAMPLES["load_pid"]


def test_a_driver_without_the_v2_call_reports_reserved_memory_as_used(make_collector, caplog):
    """Before R510 only v1 exists: the agent falls back to it once, says so, and stops asking."""
    reserved = _value(RAW["idle"]["gpus"][0], "nvmlDeviceGetMemoryInfo_v2")["reserved"]
    fake = FakeNvml.with_models(["NVIDIA H200"], memory_v2=False)
    fake.gpus[0].memory_reserved_bytes = reserved
    collector = make_collector(fake)
    with caplog.at_level(logging.INFO, logger="gpufleet"):
        first = collector.collect().gpus[0]
        second = collector.collect().gpus[0]
    assert first.memory_used_bytes == second.memory_used_bytes == reserved
    assert first.error is None
    # v2 asked once, then v1 alone: 1 + 2 calls for two rounds
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 3
    assert sum("no v2 memory call" in r.getMessage() for r in caplog.records) == 1
    assert not gpu_is_free(first, [])  # 615 MiB over the 512 MiB a free GPU may hold


def test_a_v2_struct_version_the_driver_does_not_know_falls_back_to_v1(make_collector):
    class NewerPynvml(FakeNvml):
        nvmlMemory_v2 = 0x03000030  # a struct version this (fake) driver does not know

    fake = NewerPynvml([FakeGpu.of_model("NVIDIA H200")])
    fake.add_process(0, 4242, 10 * 2**30)
    gpu = make_collector(fake).collect().gpus[0]
    assert gpu.error is None
    assert gpu.memory_used_bytes == 10 * 2**30 + fake.gpus[0].memory_reserved_bytes


def test_a_lost_gpu_on_the_v2_call_is_an_error_not_a_v1_retry(make_collector):
    fake = FakeNvml.with_models(["NVIDIA H200"])
    collector = make_collector(fake)
    collector.collect()
    fake.fail(0, "nvmlDeviceGetMemoryInfo", FakeNvml.NVML_ERROR_GPU_IS_LOST)
    before = fake.calls["nvmlDeviceGetMemoryInfo"]
    gpu = collector.collect().gpus[0]
    assert "GPU is lost" in (gpu.error or "") and gpu.memory_used_bytes is None
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == before + 1


def test_processes_of_the_recording_are_attributed_where_proc_has_them(make_collector):
    """The recorded pid is not in the fixture /proc: it is kept, unattributed, not dropped."""
    fake, pid = fake_from_recording("load")
    procs = {p.pid: p for p in make_collector(fake).collect().processes}
    assert pid in procs
    assert isinstance(procs[pid], GpuProcess) and procs[pid].user is None
