"""The ``batch/v1`` Job a :class:`Launch` becomes, built from the official client's models (pure:
no API call). One pod per host, pinned to it; ``nvidia.com/gpu`` limits; the gpufleet labels the
dispatcher finds it by; the job's annotations kept (model_name, data_size, epoch).

A multi-host launch becomes an *Indexed* Job with one pod per host: required node affinity to the
placed hosts, pod anti-affinity on ``kubernetes.io/hostname`` so no two share a host, and
``GPUFLEET_RANK`` from the pod's completion index.
"""

from __future__ import annotations

import math
import re

from kubernetes import client

from gpufleet.queue.dispatch.base import DispatchError, Launch
from gpufleet.queue.dispatch.names import safe_name, short_hash

JOB_ID_LABEL = "gpufleet.io/job-id"
USER_LABEL = "gpufleet.io/user"
MANAGED_BY = ("app.kubernetes.io/managed-by", "gpufleet")
JOB_ID_ANNOTATION = "gpufleet.io/job-id"  # the exact id (a label value is limited to 63 chars)
GPU_MEMORY_ANNOTATION = "gpufleet.io/gpu-memory-bytes"
HOSTNAME_KEY = "kubernetes.io/hostname"
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def label_value(text: str) -> str:
    """A valid label value, unique per input (see :func:`names.safe_name`)."""
    return safe_name(text, 63)


def job_name(job_id: str, prefix: str = "gpufleet-") -> str:
    """The Job's name: a DNS label (<= 63, lower case) so the pods' ``job-name`` label fits."""
    clean = _NOT_DNS.sub("-", job_id.lower()).strip("-")
    name = prefix + clean
    if clean == job_id and len(name) <= 52:  # room for the pods' 5-char suffix + index
        return name
    return f"{name[:43].rstrip('-')}-{short_hash(job_id)}"


def job_selector(job_id: str) -> str:
    return f"{JOB_ID_LABEL}={label_value(job_id)}"


def _env(launch: Launch, per_host: int) -> list[client.V1EnvVar]:
    # The device plugin mounts only the allocated GPUs, numbered from 0 in the container.
    values = {
        "GPUFLEET_JOB_ID": launch.job_id,
        "GPUFLEET_HOSTS": ",".join(h.host for h in launch.hosts),
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(per_host)),
        **launch.env,
    }
    env = [client.V1EnvVar(name=k, value=v) for k, v in values.items()]
    if len(launch.hosts) == 1:
        env.append(client.V1EnvVar(name="GPUFLEET_RANK", value="0"))
    else:
        source = client.V1ObjectFieldSelector(field_path=COMPLETION_INDEX)
        env.append(
            client.V1EnvVar(
                name="GPUFLEET_RANK", value_from=client.V1EnvVarSource(field_ref=source)
            )
        )
    return env


def _placement(launch: Launch, labels: dict[str, str]) -> dict[str, object]:
    hosts = [h.host for h in launch.hosts]
    if len(hosts) == 1:
        return {"node_selector": {HOSTNAME_KEY: hosts[0]}}
    on_hosts = client.V1NodeSelectorRequirement(key=HOSTNAME_KEY, operator="In", values=hosts)
    node = client.V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=client.V1NodeSelector(
            node_selector_terms=[client.V1NodeSelectorTerm(match_expressions=[on_hosts])]
        )
    )
    apart = client.V1PodAntiAffinity(
        required_during_scheduling_ignored_during_execution=[
            client.V1PodAffinityTerm(
                topology_key=HOSTNAME_KEY,
                label_selector=client.V1LabelSelector(
                    match_labels={JOB_ID_LABEL: labels[JOB_ID_LABEL]}
                ),
            )
        ]
    )
    return {"affinity": client.V1Affinity(node_affinity=node, pod_anti_affinity=apart)}


def job_manifest(
    launch: Launch,
    namespace: str,
    *,
    default_image: str | None = None,
    prefix: str = "gpufleet-",
    service_account: str | None = None,
) -> client.V1Job:
    """The Job for ``launch`` (``backoffLimit: 0``: the queue, not Kubernetes, decides on a
    retry; ``activeDeadlineSeconds`` from the time limit, rounded up)."""
    image = launch.image or default_image
    if not image:
        raise DispatchError(f"launch {launch.job_id}: image: Kubernetes needs a container image")
    per_host = {len(h.gpu_indices) for h in launch.hosts}
    if len(per_host) != 1:
        raise DispatchError(
            f"launch {launch.job_id}: hosts: Kubernetes runs one pod shape per Job; "
            f"every host must get the same number of GPUs, got {sorted(per_host)}"
        )
    (gpus,) = per_host
    labels = {
        JOB_ID_LABEL: label_value(launch.job_id),
        USER_LABEL: label_value(launch.user),
        MANAGED_BY[0]: MANAGED_BY[1],
    }
    annotations = {**launch.annotations, JOB_ID_ANNOTATION: launch.job_id}
    if launch.gpu_memory_bytes is not None:
        annotations[GPU_MEMORY_ANNOTATION] = str(launch.gpu_memory_bytes)
    command: list[str] | None = None
    if len(launch.command) == 1:
        command = ["/bin/sh", "-c", launch.command[0]]
    elif launch.command:
        command = list(launch.command)
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    container = client.V1Container(
        name="job", image=image, command=command, env=_env(launch, gpus),
        working_dir=launch.workdir,
        resources=client.V1ResourceRequirements(limits=limits) if limits else None,
    )  # fmt: skip
    pod_spec = client.V1PodSpec(
        restart_policy="Never", containers=[container], service_account_name=service_account,
        **_placement(launch, labels),  # type: ignore[arg-type]
    )  # fmt: skip
    hosts = len(launch.hosts)
    deadline = (
        max(1, math.ceil(launch.time_limit_seconds))
        if launch.time_limit_seconds is not None
        else None
    )
    spec = client.V1JobSpec(
        backoff_limit=0,
        active_deadline_seconds=deadline,
        completions=hosts if hosts > 1 else None,
        parallelism=hosts if hosts > 1 else None,
        completion_mode="Indexed" if hosts > 1 else None,
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels=dict(labels), annotations=dict(annotations)),
            spec=pod_spec,
        ),
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=job_name(launch.job_id, prefix),
            namespace=namespace,
            labels=labels,
            annotations=annotations,
        ),
        spec=spec,
    )
