"""A real single-node Slurm cluster for the Slurm dispatcher's tests (Debian ``slurm-wlm`` and
``munge``), started in a temporary directory as the current user and stopped at teardown.

``munged`` gets a fresh key and its own socket; ``slurmctld`` and ``slurmd`` run in the
foreground (``-D``) on free loopback ports with a generated ``slurm.conf``:
``select/cons_tres``, ``GresTypes=gpu``, ``NodeName=<this host> Gres=gpu:4``. Slurm 22.05's
``gres/gpu`` drops a GPU declared by ``Count`` alone ("Removing file-less GPU") and wants each
``File=`` to be a character device, so ``gres.conf`` names four symlinks to ``/dev/null``
(``<tmp>/dev/nvidia0..3``): no GPU and no driver needed, and the job still gets
``SLURM_JOB_GPUS`` / ``CUDA_VISIBLE_DEVICES`` from its allocation. No ``slurmdbd``: ``sacct`` is
off, and ``MinJobAge=3600`` keeps finished jobs in ``squeue``.

Without the binaries the tests skip, or fail under ``GPUFLEET_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port, need_binary

GPUS = 4
START_DEADLINE_SECONDS = 120.0  # generous: a busy machine


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    node: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What a client needs to reach this cluster (the dispatcher's ``env=``)."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60
        )

    def logs(self) -> str:
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text()[-4000:]}")
        return "\n".join(parts)


def _write_config(root: Path, node: str) -> Path:
    for sub in ("munge", "state", "spool", "log", "dev", "jobs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(GPUS):
        (root / "dev" / f"nvidia{i}").symlink_to("/dev/null")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=gpufleettest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
GresTypes=gpu
MinJobAge=3600
ReturnToService=2
InactiveLimit=0
KillWait=2
OverTimeLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs=16 RealMemory=1000 Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    )
    files = f"{root}/dev/nvidia[0-{GPUS - 1}]"
    (root / "gres.conf").write_text(f"AutoDetect=off\nName=gpu File={files}\n")
    return conf


def _wait(cluster: SlurmCluster, what: str, ready: object) -> None:
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        for proc in cluster.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{proc.args[0]} exited while waiting for {what}:\n{cluster.logs()}"
                )
        time.sleep(0.2)
    raise RuntimeError(
        f"slurm test cluster: no {what} within {START_DEADLINE_SECONDS:.0f} s:\n{cluster.logs()}"
    )


def _daemon(cluster: SlurmCluster, daemon: str, *args: str) -> subprocess.Popen[bytes]:
    with (cluster.root / "log" / f"{daemon}.out").open("ab") as out:
        return subprocess.Popen(
            [shutil.which(daemon) or daemon, "-D", *args],
            env={**os.environ, **cluster.env}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def restart_controller(cluster: SlurmCluster, while_down: Callable[[], None]) -> None:
    """Stop slurmctld (SIGTERM: it saves its state), run ``while_down``, start it again from the
    saved state."""
    controller = cluster.procs[1]
    controller.terminate()
    controller.wait(60)
    while_down()
    cluster.procs[1] = _daemon(cluster, "slurmctld")
    _wait(cluster, "slurmctld again", lambda: cluster.run("scontrol", "ping").returncode == 0)


def start_cluster(root: Path) -> SlurmCluster:
    for binary in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel"):
        need_binary(binary, f"Slurm ({binary}: Debian packages slurm-wlm and munge)")
    node = socket.gethostname().split(".")[0]
    conf = _write_config(root, node)
    cluster = SlurmCluster(root, conf, node)
    munge = root / "munge"
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge.chmod(0o711)
    logs = root / "log"
    cluster.procs.append(subprocess.Popen(
        [shutil.which("munged") or "munged", "--foreground", "--force", f"--key-file={key}",
         f"--socket={munge}/munge.socket", f"--pid-file={munge}/munged.pid",
         f"--log-file={logs}/munged.log", f"--seed-file={munge}/munged.seed"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    ))  # fmt: skip
    _wait(cluster, "munge socket", lambda: (munge / "munge.socket").exists())
    cluster.procs.append(_daemon(cluster, "slurmctld", "-c"))  # -c: a clean state
    _wait(cluster, "slurmctld", lambda: cluster.run("scontrol", "ping").returncode == 0)
    cluster.procs.append(_daemon(cluster, "slurmd"))

    def node_idle() -> bool:
        state = cluster.run("sinfo", "--noheader", "--format=%t").stdout.strip()
        if state in ("inval", "drain", "drng"):
            raise RuntimeError(f"slurm test node is {state}:\n{cluster.logs()}")
        return state == "idle"

    _wait(cluster, "idle node", node_idle)
    return cluster


def stop_cluster(cluster: SlurmCluster) -> None:
    """Cancel every job, then stop slurmd, slurmctld and munged (in that order)."""
    if cluster.procs and cluster.procs[-1].poll() is None:
        cluster.run("scancel", "--full", f"--user={os.getuid()}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not cluster.run("squeue", "--noheader", "--format=%i").stdout.strip():
                break
            time.sleep(0.2)
    for proc in reversed(cluster.procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    # a short path: the munge socket name must fit in sun_path (108 bytes)
    root = Path(tmp_path_factory.mktemp("slurm", numbered=True))
    cluster = start_cluster(root)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
