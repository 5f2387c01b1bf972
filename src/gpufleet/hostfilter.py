"""Which mounts and network interfaces count for a host: one list, read by the agent (psutil)
and the agent-less poller (``df``, ``/proc/net/dev``), so a server reports the same disks and
network rates whichever way it is watched."""

from __future__ import annotations

# Filesystems that hold no user data: kernel pseudo filesystems, memory-backed ones, layered
# container and snap images, read-only media.
PSEUDO_FSTYPES = frozenset(
    {
        "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
        "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "overlay", "aufs",
        "proc", "pstore", "ramfs", "rpc_pipefs", "securityfs", "selinuxfs", "squashfs", "sysfs",
        "tmpfs", "tracefs", "iso9660", "udf", "fuse.lxcfs", "fuse.snapfuse", "fuse.gvfsd-fuse",
        "fuse.portal", "nullfs", "nfsd", "shm", "none",
    }
)  # fmt: skip
# Devices that name no block device or share (what `df` shows for memory-backed mounts).
PSEUDO_DEVICES = frozenset({"", "none", "overlay", "tmpfs", "shm", "devtmpfs", "udev"})
# Mount points below these hold container layers, snaps and kubelet volumes, not host disks.
SKIP_MOUNT_PREFIXES = (
    "/snap/", "/var/lib/docker/", "/var/lib/containers/", "/var/lib/kubelet/",
    "/run/containerd/", "/var/snap/", "/proc/", "/sys/", "/dev/", "/run/",
)  # fmt: skip
# Filesystems whose statvfs can hang on a dead server (the agent reads them with a deadline).
NETWORK_FSTYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "9p"}
)
# Interfaces left out of a host's rx/tx rates: loopback, and virtual devices whose traffic is
# also counted on a physical interface (containers, bridges, tunnels).
VIRTUAL_NET_PREFIXES = (
    "lo", "veth", "docker", "br-", "virbr", "cni", "flannel", "cali", "vxlan", "tunl",
    "kube-", "lxcbr", "lxdbr", "podman",
)  # fmt: skip


def is_real_mount(device: str, mount: str, fstype: str) -> bool:
    """Whether a mount holds user data worth reporting. ``fstype`` may be "" when the source
    does not say (plain ``df -P``): then the device name decides."""
    if fstype in PSEUDO_FSTYPES or device in PSEUDO_DEVICES:
        return False
    return not any((mount + "/").startswith(p) for p in SKIP_MOUNT_PREFIXES)


def is_virtual_interface(name: str) -> bool:
    return name.startswith(VIRTUAL_NET_PREFIXES)
