"""One list of real mounts and physical interfaces: the agent (psutil) and the agent-less
poller (df, /proc/net/dev) keep the same disks and count the same interfaces."""

from __future__ import annotations

from types import SimpleNamespace

from gpufleet.agent.host import select_disks
from gpufleet.poller import parse

MOUNTS = [  # (device, mount point, fstype) as a GPU server with Docker, snaps and k8s has them
    ("/dev/nvme0n1p2", "/", "ext4"),
    ("/dev/nvme0n1p1", "/boot/efi", "vfat"),
    ("/dev/md0", "/data", "xfs"),
    ("/dev/loop3", "/snap/core22/1234", "squashfs"),
    ("overlay", "/var/lib/docker/overlay2/abc/merged", "overlay"),
    ("tmpfs", "/run", "tmpfs"),
    ("tmpfs", "/dev/shm", "tmpfs"),
    ("shm", "/var/lib/containers/storage/shm", "tmpfs"),
    ("nas:/export/home", "/nfs/home", "nfs4"),
    ("/dev/sdb1", "/var/lib/kubelet/pods/x/volumes/y", "ext4"),
    ("/dev/sdc1", "/run/media/usb", "ext4"),
    ("udev", "/dev", "devtmpfs"),
]


def df_text(mounts) -> str:
    lines = ["Filesystem Type 1-blocks Used Available Capacity Mounted on"]
    lines += [f"{d} {t} 1000000 1000 999000 1% {m}" for d, m, t in mounts]
    return "\n".join(lines) + "\n"


def test_agent_and_poller_keep_the_same_mounts():
    agent = {
        p.mountpoint
        for p in select_disks(
            SimpleNamespace(device=d, mountpoint=m, fstype=t) for d, m, t in MOUNTS
        )
    }
    poller = {disk.mount for disk in parse.parse_df(df_text(MOUNTS))}
    assert agent == poller == {"/", "/boot/efi", "/data", "/nfs/home"}


def test_agent_and_poller_count_the_same_interfaces(monkeypatch):
    names = ["lo", "eno1", "ib0", "docker0", "veth1a2b", "tunl0", "kube-bridge", "podman0",
             "lxcbr0", "cali123", "enp65s0f0"]  # fmt: skip
    # the poller: /proc/net/dev readings 5 s apart, each interface moved 1,000 bytes
    before = {n: (0, 0) for n in names}
    after = {n: (1000 * (i + 1), 0) for i, n in enumerate(names)}
    rx_poller, _ = parse.net_rates(before, after, 1.0)
    physical = {"eno1", "ib0", "enp65s0f0"}
    assert rx_poller == sum(1000 * (i + 1) for i, n in enumerate(names) if n in physical)
    # the agent: the same counters through psutil
    import psutil

    from gpufleet.agent.host import HostCollector

    counters = iter([before, after])

    def pernic(pernic=False):
        return {
            n: SimpleNamespace(bytes_recv=rx, bytes_sent=tx)
            for n, (rx, tx) in next(counters).items()
        }

    monkeypatch.setattr(psutil, "net_io_counters", pernic)
    collector = HostCollector()
    collector._net_rates(0.0)
    rx_agent, _ = collector._net_rates(1.0)
    assert rx_agent == rx_poller
