"""What ``sbatch`` gets for a :class:`Launch`: the batch script and the command line (pure)."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

from gpufleet.queue.dispatch.base import DispatchError, Launch

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def batch_script(launch: Launch) -> str:
    """The script ``sbatch`` runs: GPUFLEET_* and the launch's env, then the command (through
    bash when it is one string; on every node with ``srun`` when the job spans several)."""
    env = {
        "GPUFLEET_JOB_ID": launch.job_id,
        "GPUFLEET_HOSTS": ",".join(h.host for h in launch.hosts),
        **launch.env,
    }
    for key in env:
        if not _ENV_NAME.match(key):
            raise DispatchError(f"launch {launch.job_id}: env: {key!r} is not a variable name")
    lines = ["#!/bin/bash", f"# gpufleet job {launch.job_id} ({launch.name}, {launch.user})"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    if launch.image and not launch.command:
        raise DispatchError(f"launch {launch.job_id}: Slurm runs a command, not an image")
    command = launch.command[0] if len(launch.command) == 1 else shlex.join(launch.command)
    if len(launch.hosts) == 1:
        lines += ["export GPUFLEET_RANK=0", f"exec /bin/bash -c {shlex.quote(command)}"]
    else:  # one task per node; its rank is the node's position in the allocation
        inner = f"export GPUFLEET_RANK=$SLURM_NODEID; exec /bin/bash -c {shlex.quote(command)}"
        lines.append(
            "exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 /bin/bash -c " + shlex.quote(inner)
        )
    return "\n".join(lines) + "\n"


def sbatch_args(launch: Launch, script: Path, log_file: Path, job_name: str) -> list[str]:
    """``sbatch``'s arguments for a launch (the time limit rounds up to whole minutes, Slurm's
    unit)."""
    per_host = {len(h.gpu_indices) for h in launch.hosts}
    args = [
        "--parsable", f"--job-name={job_name}", f"--output={log_file}", "--no-requeue",
        f"--nodes={len(launch.hosts)}", f"--nodelist={','.join(h.host for h in launch.hosts)}",
    ]  # fmt: skip
    if len(per_host) == 1:
        (count,) = per_host
        if count:
            args.append(f"--gres=gpu:{count}")
    else:
        args.append(f"--gpus={launch.num_gpus}")
    if launch.time_limit_seconds is not None:
        args.append(f"--time={max(1, math.ceil(launch.time_limit_seconds / 60))}")
    if launch.workdir:
        args.append(f"--chdir={launch.workdir}")
    return [*args, str(script)]
