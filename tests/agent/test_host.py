"""The host collector on this real machine (psutil), through Collector.collect()."""

from __future__ import annotations

import time
from types import SimpleNamespace

from gpufleet.agent.fakenvml import FakeNvml
from gpufleet.agent.host import select_disks


def test_host_metrics_on_this_machine(make_collector):
    collector = make_collector(FakeNvml())
    first = collector.collect().host_metrics
    time.sleep(0.1)
    second = collector.collect().host_metrics

    # rates need two rounds: not invented on the first
    assert first.net_rx_bytes_per_second is None and first.net_tx_bytes_per_second is None
    assert second.net_rx_bytes_per_second is not None and second.net_rx_bytes_per_second >= 0
    assert second.net_tx_bytes_per_second is not None and second.net_tx_bytes_per_second >= 0
    assert second.cpu_percent is not None and 0 <= second.cpu_percent <= 100
    assert second.cpu_count and second.cpu_count >= 1
    assert second.load1 is not None and second.load15 is not None
    assert second.memory_total_bytes and second.memory_available_bytes
    assert second.memory_used_bytes is not None
    assert second.memory_used_bytes <= second.memory_total_bytes
    assert second.swap_total_bytes is not None
    assert second.uptime_seconds and second.uptime_seconds > 0
    assert isinstance(second.users, list)

    mounts = [d.mount for d in second.disks]
    assert "/" in mounts or mounts, "the root filesystem (or some real disk) is reported"
    for disk in second.disks:
        assert disk.fstype not in ("squashfs", "overlay", "tmpfs", "proc", "sysfs")
        assert disk.total_bytes > 0 and disk.used_bytes <= disk.total_bytes
    devices = [d.device for d in second.disks]
    assert len(devices) == len(set(devices)), "a device mounted twice is reported once"


def test_host_facts_on_this_machine(make_collector):
    facts = make_collector(FakeNvml()).collect().facts
    assert facts.hostname and facts.kernel and facts.os
    assert facts.cpu_count and facts.memory_total_bytes
    assert facts.boot_time and facts.boot_time < time.time()


def _part(device: str, mountpoint: str, fstype: str) -> SimpleNamespace:
    return SimpleNamespace(device=device, mountpoint=mountpoint, fstype=fstype)


def test_only_real_mounts_are_kept():
    parts = [
        _part("/dev/nvme0n1p2", "/", "ext4"),
        _part("/dev/nvme0n1p1", "/boot/efi", "vfat"),
        _part("/dev/md0", "/data", "xfs"),
        _part("/dev/md0", "/home/alice/data", "xfs"),  # bind mount of /data
        _part("/dev/loop3", "/snap/core22/1234", "squashfs"),
        _part("overlay", "/var/lib/docker/overlay2/abc/merged", "overlay"),
        _part("/dev/nvme0n1p2", "/var/lib/docker", "ext4"),  # bind/subvolume again
        _part("tmpfs", "/run", "tmpfs"),
        _part("nas:/export/home", "/nfs/home", "nfs4"),
        _part("/dev/sdb1", "/var/lib/kubelet/pods/x/volumes/y", "ext4"),
    ]
    kept = [(p.device, p.mountpoint) for p in select_disks(parts)]
    assert kept == [
        ("/dev/nvme0n1p2", "/"),
        ("/dev/nvme0n1p1", "/boot/efi"),
        ("/dev/md0", "/data"),
        ("nas:/export/home", "/nfs/home"),
    ]
