"""A full round through Collector.collect(): the sample validates and attributes GPU processes."""

from __future__ import annotations

import shutil

from gpufleet.agent.fakenvml import FakeNvml
from gpufleet.wire import Batch, GpuProcess, Sample

from .conftest import BTIME, DOCKER_ID, K8S_ID, PODMAN_ID, PROC_ROOT


def _validated(sample: Sample) -> Sample:
    """Round-trip through JSON so every field is checked against the wire schema."""
    return Sample.model_validate_json(sample.model_dump_json())


def test_sample_validates_against_the_wire_schema(fake, make_collector):
    clock = iter(float(1_800_000_000 + 5 * i) for i in range(100))
    collector = make_collector(fake, clock=lambda: next(clock), interval_seconds=5.0)
    first = _validated(collector.collect())
    second = _validated(collector.collect())
    assert first.host == "node-01" and first.interval_seconds == 5.0
    assert second.ts - first.ts == 5.0
    Batch(batch_id="node-01:000001", sent_at=second.ts, samples=[first, second])

    assert [g.index for g in second.gpus] == [0, 1, 2, 3]
    assert [g.name for g in second.gpus] == ["NVIDIA A100-SXM4-80GB"] * 2 + [
        "Tesla V100-SXM2-32GB"
    ] * 2
    assert len({g.uuid for g in second.gpus}) == 4
    gpu0 = second.gpus[0]
    assert gpu0.error is None
    assert gpu0.memory_total_bytes == 80 * 2**30
    assert gpu0.memory_used_bytes == 4 * 2**30  # the processes' memory, not the driver's
    assert gpu0.power_limit_watts == 400.0 and gpu0.power_watts == 60.0
    assert gpu0.sm_clock_hertz == 210e6 and gpu0.pstate == 8
    assert gpu0.ecc_uncorrected_volatile == 0

    facts = second.facts
    assert facts.driver_version == "550.54.15" and facts.cuda_version == "12.4"
    assert facts.agent_version and facts.hostname and facts.kernel
    assert second.errors == []


def test_processes_are_attributed_to_users_and_containers(fake, make_collector):
    sample = _validated(make_collector(fake).collect())
    by_pid = {p.pid: p for p in sample.processes}
    assert sorted(by_pid) == [1111, 2222, 3333, 4444, 5555]

    host = by_pid[1111]
    assert (host.user, host.uid, host.gpu_index) == ("root", 0, 0)
    assert host.command == "/usr/bin/python3 train.py --epochs 90"
    assert host.started_at == BTIME + 123456.0
    assert host.gpu_memory_bytes == 4 * 2**30
    assert host.container_id is None and host.container_runtime is None
    assert host.gpu_uuid == sample.gpus[0].uuid

    docker = by_pid[2222]
    assert (docker.user, docker.uid) == ("nobody", 65534)
    assert docker.container_id == DOCKER_ID
    assert docker.container_name == "bob-trainer"
    assert docker.container_runtime == "docker"

    pod = by_pid[3333]
    assert pod.container_id == K8S_ID
    assert pod.container_runtime == "containerd"
    assert pod.container_name == "llama-finetune-7f9c4/worker"
    assert pod.gpu_memory_bytes is None  # NVML could not tell

    ghost = by_pid[4444]
    assert ghost.uid == 4000123 and ghost.user is None  # not in passwd: keep the uid
    assert len(ghost.command) <= 200 and ghost.command.endswith("...")
    assert ghost.command.startswith("/opt/conda/envs/research/bin/python /home/ghost/")
    assert ghost.started_at == BTIME + 423456.0  # comm "(my (odd) job)" parsed right

    podman = by_pid[5555]
    assert podman.container_id == PODMAN_ID
    assert (podman.container_runtime, podman.container_name) == ("podman", "carol-serve")


def test_a_process_missing_from_proc_is_still_reported(fake, make_collector):
    fake.add_process(0, 999_999, 2**20)
    sample = make_collector(fake).collect()
    gone = next(p for p in sample.processes if p.pid == 999_999)
    assert gone.user is None and gone.uid is None and gone.command == ""
    assert gone.gpu_memory_bytes == 2**20


def test_state_changed_from_outside_shows_in_the_next_round(fake, make_collector):
    collector = make_collector(fake)
    assert collector.collect().gpus[1].utilization_gpu_percent == 0
    fake.set_utilization(1, 97, 40)
    fake.remove_process(1, 2222)
    fake.gpus[1].temperature_celsius = 81
    sample = collector.collect()
    assert sample.gpus[1].utilization_gpu_percent == 97
    assert sample.gpus[1].utilization_memory_percent == 40
    assert sample.gpus[1].temperature_celsius == 81
    assert 2222 not in {p.pid for p in sample.processes}


def test_bytes_from_old_nvml_bindings_are_decoded(make_collector):
    fake = FakeNvml.with_models(["Tesla K80"], return_bytes=True)
    sample = make_collector(fake).collect()
    assert sample.gpus[0].name == "Tesla K80"
    assert sample.gpus[0].uuid.startswith("GPU-")
    assert sample.facts.driver_version == "550.54.15"


def test_a_process_is_read_once_per_pid_and_start_time(fake, make_collector, tmp_path):
    proc = tmp_path / "proc"
    shutil.copytree(PROC_ROOT, proc)
    collector = make_collector(fake, proc_root=proc)
    assert _by_pid(collector.collect())[1111].user == "root"

    # Steady state: the cached description is used (status is not read again)...
    status = proc / "1111" / "status"
    status.write_text(status.read_text().replace("Uid:\t0\t0\t0\t0", "Uid:\t65534\t0\t0\t0"))
    assert _by_pid(collector.collect())[1111].user == "root"

    # ...until the pid is reused by a new process (another start time).
    stat = proc / "1111" / "stat"
    stat.write_text(stat.read_text().replace(" 12345600 ", " 12999900 "))
    again = _by_pid(collector.collect())[1111]
    assert (again.user, again.uid) == ("nobody", 65534)
    assert again.started_at == BTIME + 129999.0


def _by_pid(sample: Sample) -> dict[int, GpuProcess]:
    return {p.pid: p for p in sample.processes}
