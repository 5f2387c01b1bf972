"""parse.py on committed, real-looking nvidia-smi and /proc text."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpufleet.poller import parse
from gpufleet.poller.parse import SECTION_MARK, Counters, parse_poll
from gpufleet.wire import Batch, Sample

FIXTURES = Path(__file__).parent / "fixtures"
TS = 1714500000.0
MIB = 1024 * 1024


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def poll_text(
    *, gpu: str = "a100", second: bool = False, extra: dict[str, str] | None = None
) -> str:
    """The poll script's output, assembled from fixtures the way ssh.py's script prints it."""
    n = "2" if second else "1"
    sections = {
        "smi_timeout_seconds": "4",
        "hostname": "gpu-a100-07",
        "kernel": "5.15.0-105-generic",
        "os_release": fixture("os_release.txt"),
        "cpuinfo": "model name\t: AMD EPYC 7742 64-Core Processor",
        "stat": fixture(f"proc_stat_{n}.txt"),
        "loadavg": fixture("loadavg.txt"),
        "meminfo": fixture("meminfo.txt"),
        "uptime": fixture(f"uptime_{n}.txt"),
        "netdev": fixture(f"net_dev_{n}.txt"),
        "df": fixture("df.txt"),
        "who": fixture("who.txt"),
        "smi_gpu": fixture(f"{gpu}_query_gpu.csv"),
        "smi_gpu_rc": "0",
        "smi_apps": fixture(f"{gpu}_compute_apps.csv"),
        "smi_apps_rc": "0",
        "ps": fixture("ps.txt"),
        "cgroup 2817344": fixture("cgroup_docker.txt"),
        "cgroup 2817345": "0::/user.slice/user-1003.slice/session-12.scope",
        "docker": "4f2a9c8e1b7d6a5c3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d alice-llm\n",
        **(extra or {}),
        "end": "",
    }
    out = ["Welcome to gpu-a100-07 (a login banner the parser must skip)"]
    for name, body in sections.items():
        out.append(f"{SECTION_MARK}{name}")
        out.append(body)
    return "\n".join(out) + "\n"


def test_a100_box_gpus() -> None:
    table = parse.parse_query_gpu(fixture("a100_query_gpu.csv"))
    assert table.errors == []
    assert [g.index for g in table.gpus] == list(range(8))
    assert table.driver_version == "535.129.03"
    g0 = table.gpus[0]
    assert g0.name == "NVIDIA A100-SXM4-80GB"
    assert g0.uuid == "GPU-6a1f3b2e-8c4d-11ee-9a7b-0242ac120002"
    assert g0.utilization_gpu_percent == 97.0
    assert g0.utilization_memory_percent == 61.0
    assert g0.memory_used_bytes == 71234 * MIB
    assert g0.memory_total_bytes == 81920 * MIB
    assert g0.temperature_celsius == 63.0
    assert g0.power_watts == pytest.approx(348.71)
    assert g0.power_limit_watts == 400.0
    assert g0.fan_percent is None  # SXM boards have no fan: "[N/A]"
    assert g0.sm_clock_hertz == 1410 * 1_000_000
    assert g0.pstate == 0
    assert g0.ecc_uncorrected_volatile == 0
    assert g0.error is None
    assert table.gpus[6].ecc_uncorrected_volatile == 2


def test_mixed_box_not_available_is_none() -> None:
    table = parse.parse_query_gpu(fixture("mixed_query_gpu.csv"))
    assert table.errors == []
    rtx, t4, mig, quadro, broken = table.gpus
    assert rtx.ecc_uncorrected_volatile is None  # "[N/A]" on GeForce
    assert rtx.fan_percent == 58.0
    assert rtx.pstate == 2
    assert t4.pstate == 8 and t4.fan_percent is None
    assert mig.utilization_gpu_percent is None and mig.utilization_memory_percent is None
    assert mig.memory_used_bytes == 9730 * MIB
    assert quadro.power_watts is None and quadro.power_limit_watts is None  # "[Not Supported]"
    assert quadro.error is None
    # "[Unknown Error]": reported as erroring, not dropped
    assert broken.index == 4
    assert broken.error is not None and "utilization.gpu" in broken.error
    assert broken.temperature_celsius is None
    assert broken.memory_total_bytes == 11264 * MIB


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("[N/A]", None), ("[Not Supported]", None), ("N/A", None), ("", None), (" 42 ", "42")],
)
def test_smi_value(raw: str, expected: str | None) -> None:
    assert parse.smi_value(raw) == expected


def test_bad_rows_are_reported_not_fatal() -> None:
    text = "0, GPU-a, Tesla V100, 1, 2\nx, GPU-b, Tesla V100, 1, 2, 3, 4, 5, 6, 7, 8, 9, P0, 0, 1\n"
    table = parse.parse_query_gpu(text)
    assert table.gpus == []
    assert len(table.errors) == 2
    # out-of-range value: that field dropped and named, the GPU kept
    row = "0, GPU-a, Tesla V100, 250, 1, 10, 100, 40, 50, 300, [N/A], 1000, P0, 0, 1"
    (gpu,) = parse.parse_query_gpu(row).gpus
    assert gpu.utilization_gpu_percent is None
    assert gpu.error is not None and "utilization_gpu_percent" in gpu.error


def test_compute_apps_map_uuid_to_index() -> None:
    table = parse.parse_query_gpu(fixture("mixed_query_gpu.csv"))
    uuids = {g.uuid: g.index for g in table.gpus}
    apps, errors = parse.parse_compute_apps(fixture("mixed_compute_apps.csv"), uuids)
    assert [(a.pid, a.gpu_index) for a in apps] == [(44120, 0), (50991, 2)]
    assert apps[0].gpu_memory_bytes == 17990 * MIB
    assert apps[1].gpu_memory_bytes is None  # "[N/A]"
    assert len(errors) == 1 and "61002" in errors[0]


def test_proc_stat_and_cpu_percent() -> None:
    first = parse.parse_proc_stat(fixture("proc_stat_1.txt"))
    second = parse.parse_proc_stat(fixture("proc_stat_2.txt"))
    assert first.cpu_count == 16
    assert first.boot_time == 1714462801
    # deltas: user 2200, system 220, idle 100, iowait 10, softirq 20 -> busy 2440 of 2550
    assert parse.cpu_percent(first.cpu, second.cpu) == pytest.approx(100 * 2440 / 2550)
    assert parse.cpu_percent(None, second.cpu) is None
    assert parse.cpu_percent(second.cpu, first.cpu) is None


def test_meminfo_loadavg_uptime() -> None:
    mem = parse.parse_meminfo(fixture("meminfo.txt"))
    assert mem["MemTotal"] == 1056561048 * 1024
    assert mem["HugePages_Total"] == 0
    assert parse.parse_loadavg(fixture("loadavg.txt")) == (12.41, 11.87, 10.92)
    assert parse.parse_loadavg("") is None
    assert parse.parse_uptime(fixture("uptime_1.txt")) == 1712233.41


def test_net_dev_rates_skip_loopback_and_virtual() -> None:
    before = parse.parse_net_dev(fixture("net_dev_1.txt"))
    after = parse.parse_net_dev(fixture("net_dev_2.txt"))
    assert set(before) == {"lo", "eno1", "ib0", "docker0", "veth1a2b3c"}
    rx, tx = parse.net_rates(before, after, 5.0)
    assert rx == (5_000_000 + 500_000_000) / 5
    assert tx == (1_000_000 + 500_000_000) / 5
    assert parse.net_rates(None, after, 5.0) == (None, None)
    # counters that went backwards (driver reload) are skipped, not negative
    assert parse.net_rates(after, before, 5.0) == (None, None)


def test_df() -> None:
    disks = parse.parse_df(fixture("df.txt"))
    assert [d.mount for d in disks] == ["/", "/boot/efi", "/data", "/home"]
    root = disks[0]
    assert (root.device, root.fstype) == ("/dev/nvme0n1p2", "ext4")
    assert root.total_bytes == 1888377872384 and root.used_bytes == 712334123008
    assert disks[3].fstype == "nfs4"
    # `df -P -k` fallback: no Type column, 1024-byte blocks, pseudo filesystems dropped here
    plain = "Filesystem 1024-blocks Used Available Capacity Mounted on\n"
    plain += "/dev/sda1 1000 250 750 25% /srv/my data\ntmpfs 100 0 100 0% /run\n"
    (disk,) = parse.parse_df(plain)
    assert (
        disk.mount == "/srv/my data" and disk.total_bytes == 1024_000 and disk.used_bytes == 256_000
    )


@pytest.mark.parametrize(
    ("etime", "seconds"),
    [("00:41", 41), ("05:33", 333), ("12:01:55", 43315), ("3-04:12:09", 274329), ("x", None)],
)
def test_etime(etime: str, seconds: int | None) -> None:
    assert parse.parse_etime(etime) == seconds


def test_ps() -> None:
    rows = parse.parse_ps(fixture("ps.txt"))
    assert rows[2817344].user == "alice" and rows[2817344].uid == 1003
    assert rows[2817344].command.startswith("python -m torch.distributed.run")
    assert rows[3011982].user == "bob_long_username_example"
    assert rows[3120877].user is None and rows[3120877].uid == 70001  # no passwd entry
    long = parse.shorten_command("python " + "x" * 500)
    assert len(long) == 200 and long.endswith("…")


def test_who_and_os_release() -> None:
    assert parse.parse_who(fixture("who.txt")) == ["alice", "bob"]
    assert parse.parse_os_release(fixture("os_release.txt")) == "Ubuntu 22.04.4 LTS"


def test_full_poll_first_then_second() -> None:
    sample, counters = parse_poll(poll_text(), host="gpu-a100-07", ts=TS, interval_seconds=5)
    assert sample.errors == []
    assert len(sample.gpus) == 8
    assert sample.host_metrics.cpu_percent is None  # first poll: no previous reading
    assert sample.host_metrics.net_rx_bytes_per_second is None
    hm = sample.host_metrics
    assert hm.cpu_count == 16
    assert hm.load1 == 12.41
    assert hm.memory_total_bytes == 1056561048 * 1024
    assert hm.memory_used_bytes == (1056561048 - 871233412) * 1024
    assert hm.swap_used_bytes == (8388604 - 8123440) * 1024
    assert hm.uptime_seconds == 1712233.41
    assert hm.users == ["alice", "bob"]
    assert len(hm.disks) == 4
    facts = sample.facts
    assert facts.hostname == "gpu-a100-07" and facts.kernel == "5.15.0-105-generic"
    assert facts.os == "Ubuntu 22.04.4 LTS" and facts.driver_version == "535.129.03"
    assert facts.cpu_model == "AMD EPYC 7742 64-Core Processor"
    assert facts.boot_time == 1714462801

    procs = {(p.pid, p.gpu_index): p for p in sample.processes}
    assert len(procs) == 6
    p = procs[(2817344, 0)]
    assert p.user == "alice" and p.uid == 1003
    assert p.gpu_memory_bytes == 71218 * MIB
    assert p.started_at == TS - 274329
    assert (p.container_runtime, p.container_name) == ("docker", "alice-llm")
    assert p.container_id == "4f2a9c8e1b7d6a5c3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d"
    assert procs[(2817345, 1)].container_id is None
    assert {p.gpu_index for p in sample.processes} == {0, 1, 2, 3, 6}

    second, _ = parse_poll(
        poll_text(second=True), host="gpu-a100-07", ts=TS + 5.3, previous=counters
    )
    assert second.host_metrics.cpu_percent == pytest.approx(100 * 2440 / 2550)
    # rates use the host's own uptime delta (5.0 s), not the poller's clock (5.3 s)
    assert second.host_metrics.net_rx_bytes_per_second == pytest.approx(505_000_000 / 5)
    # the sample goes on the wire as is
    Batch(batch_id="ssh:test:0001", source="ssh", sent_at=TS + 6, samples=[sample, second])


def test_reboot_resets_rates() -> None:
    _, counters = parse_poll(poll_text(), host="h1", ts=TS)
    rebooted = Counters(
        ts=counters.ts, uptime_seconds=counters.uptime_seconds, boot_time=1.0,
        cpu=counters.cpu, net=counters.net,
    )  # fmt: skip
    sample, _ = parse_poll(poll_text(second=True), host="h1", ts=TS + 5, previous=rebooted)
    assert sample.host_metrics.cpu_percent is None


def test_mixed_box_poll() -> None:
    sample, _ = parse_poll(poll_text(gpu="mixed"), host="mixed-box", ts=TS)
    assert len(sample.gpus) == 5
    assert [(p.pid, p.gpu_index) for p in sample.processes] == [(44120, 0), (50991, 2)]
    assert sample.processes[0].user is None  # not in ps output (exited meanwhile)
    assert any("MIG" in e for e in sample.errors)


def test_nvidia_smi_missing_keeps_host_metrics() -> None:
    text = poll_text(extra={"smi_missing": ""})
    text = text.replace(f"{SECTION_MARK}smi_gpu_rc", f"{SECTION_MARK}ignored")
    sample, _ = parse_poll(text, host="cpu-only", ts=TS)
    assert sample.gpus == [] and sample.processes == []
    assert sample.host_metrics.memory_total_bytes is not None
    assert sample.errors == ["nvidia-smi missing: not found in PATH on the host; no GPU data"]


@pytest.mark.parametrize("rc", ["124", "137", "143"])
def test_nvidia_smi_hung(rc: str) -> None:
    sample, _ = parse_poll(poll_text(extra={"smi_gpu_rc": rc}), host="h1", ts=TS)
    assert sample.gpus == []
    assert sample.errors == ["nvidia-smi hung: --query-gpu gave no answer (killed after 4 s)"]
    assert sample.host_metrics.load1 == 12.41


def test_nvidia_smi_failed() -> None:
    extra = {
        "smi_gpu": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        "smi_gpu_rc": "9",
    }
    sample, _ = parse_poll(poll_text(extra=extra), host="h1", ts=TS)
    assert sample.errors[0].startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed")


def test_output_cut_short_in_nvidia_smi() -> None:
    text = poll_text()
    text = text[: text.index(f"{SECTION_MARK}smi_gpu_rc")]
    sample, _ = parse_poll(text, host="h1", ts=TS)
    assert "nvidia-smi hung: no answer before the poll timed out" in sample.errors
    assert sample.host_metrics.memory_total_bytes is not None
    text = poll_text()
    text = text[: text.index(f"{SECTION_MARK}meminfo")]
    sample, _ = parse_poll(text, host="h1", ts=TS)
    assert sample.errors == ["poll output was cut short (last section: loadavg)"]
    assert sample.host_metrics.memory_total_bytes is None


@pytest.mark.parametrize("phase", ["idle", "load"])
def test_a_real_h200_polled_without_the_agent_reads_as_the_agent_read_it(phase):
    """The poll script run on a real H200 (scripts/nvml_probe.py; tests/agent/fixtures/h200)
    right after the agent's own sample: the same GPU, memory to nvidia-smi's MiB, the same
    process and user. Only what moved in between (power, clock, temperature) may differ."""
    import json

    path = Path(__file__).parent.parent / "agent" / "fixtures" / "h200" / "samples.json"
    rec = json.loads(path.read_text())[phase]
    agent = Sample.model_validate(rec["sample"])
    polled, _ = parse_poll(rec["poll"]["output"], host=agent.host, ts=agent.ts)
    assert rec["poll"]["rc"] == 0 and polled.errors == []
    (g,) = polled.gpus
    (a,) = agent.gpus
    for f in ("name", "uuid", "memory_total_bytes", "power_limit_watts", "fan_percent",
              "pstate", "ecc_uncorrected_volatile"):  # fmt: skip
        assert getattr(g, f) == getattr(a, f), f
    assert abs(g.memory_used_bytes - a.memory_used_bytes) < MIB
    assert g.utilization_gpu_percent == pytest.approx(a.utilization_gpu_percent, abs=2)
    assert g.power_watts == pytest.approx(a.power_watts, abs=5)
    assert [(p.pid, p.user, p.gpu_memory_bytes) for p in polled.processes] == [
        (p.pid, p.user, p.gpu_memory_bytes) for p in agent.processes
    ]
    assert polled.facts.driver_version == agent.facts.driver_version
