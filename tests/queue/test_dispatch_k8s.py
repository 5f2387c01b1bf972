"""The Kubernetes dispatcher: its Job manifests checked against the official client's models, and
launch / watch / cancel / re-attach through the real client over HTTP against a replayed API
(``tests/queue/k8s_api.py``; no API server can be installed here)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gpufleet.queue.dispatch.base import Dispatcher, DispatchError, EventKind, HostGpus, Launch
from gpufleet.queue.dispatch.k8s import KubernetesDispatcher
from gpufleet.queue.dispatch.k8s_manifest import job_manifest, job_name, label_value
from gpufleet.sched.job import parse_job
from tests.queue.dispatch_helpers import Recorder, drive
from tests.queue.k8s_api import FIXTURES, FakeKubeApi, write_kubeconfig

IMAGE = "registry.example/train:1"
NOTES = {"model_name": "resnet50", "data_size": "120", "epoch": "3"}


def launch_of(job_id: str, *hosts: HostGpus, **kw: Any) -> Launch:
    kw.setdefault("image", IMAGE)
    kw.setdefault("command", ("python", "train.py", "--epochs", "3"))
    return Launch(job_id=job_id, name=f"train {job_id}", user="alice",
                  hosts=hosts or (HostGpus("gpu-node-1", (2, 3)),), **kw)  # fmt: skip


def serialized(launch: Launch, **kw: Any) -> dict[str, Any]:
    return client.ApiClient().sanitize_for_serialization(job_manifest(launch, "ml", **kw))


# -- the manifest ---------------------------------------------------------------------------


def test_manifest_pins_the_host_limits_gpus_and_keeps_the_annotations() -> None:
    launch = launch_of("job-7", annotations=NOTES, env={"WANDB_MODE": "offline"},
                       time_limit_seconds=3600.5, gpu_memory_bytes=40 * 2**30,
                       workdir="/work")  # fmt: skip
    doc = serialized(launch)
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "Job")
    meta = doc["metadata"]
    assert meta["name"] == "gpufleet-job-7" and meta["namespace"] == "ml"
    assert meta["labels"]["gpufleet.io/job-id"] == "job-7"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "gpufleet"
    for key, value in NOTES.items():  # the wide-area scheduler's annotations, kept
        assert meta["annotations"][key] == value
        assert doc["spec"]["template"]["metadata"]["annotations"][key] == value
    assert meta["annotations"]["gpufleet.io/gpu-memory-bytes"] == str(40 * 2**30)
    spec = doc["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 3601
    assert "completionMode" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"kubernetes.io/hostname": "gpu-node-1"}
    (container,) = pod["containers"]
    assert container["image"] == IMAGE and container["workingDir"] == "/work"
    assert container["command"] == ["python", "train.py", "--epochs", "3"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPUFLEET_JOB_ID"] == "job-7" and env["GPUFLEET_HOSTS"] == "gpu-node-1"
    assert env["GPUFLEET_RANK"] == "0" and env["WANDB_MODE"] == "offline"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"  # the container's own numbering
    # the client's strict models accept it back: a valid batch/v1 Job
    assert client.V1Job.from_dict(doc).spec.template.spec.containers[0].image == IMAGE


def test_manifest_from_a_submitted_kubernetes_job_spec_keeps_its_annotations() -> None:
    spec = parse_job(
        """apiVersion: batch/v1
kind: Job
metadata:
  name: bert
  annotations: {model_name: bert-large, data_size: "40", epoch: "2"}
spec:
  template:
    spec:
      containers:
      - name: main
        image: registry.example/bert:2
        command: [python, pretrain.py]
        resources: {limits: {nvidia.com/gpu: 4}}
"""
    )
    notes = {"model_name": spec.model_name, "data_size": str(spec.data_size_bytes / 1e9),
             "epoch": str(spec.epochs)}  # fmt: skip
    launch = launch_of("bert-1", HostGpus("n1", (0, 1, 2, 3)), image="registry.example/bert:2",
                       command=spec.command, annotations=notes)  # fmt: skip
    doc = serialized(launch)
    assert doc["metadata"]["annotations"]["model_name"] == "bert-large"
    assert doc["metadata"]["annotations"]["epoch"] == "2"
    container = doc["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert container["command"] == ["python", "pretrain.py"]


def test_multi_host_is_an_indexed_job_spread_over_the_placed_hosts() -> None:
    doc = serialized(launch_of("wide", HostGpus("n1", (0, 1)), HostGpus("n2", (4, 5))))
    spec = doc["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    affinity = spec["template"]["spec"]["affinity"]
    term = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"][0]  # fmt: skip
    assert term == {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1", "n2"]}
    apart = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert apart["topologyKey"] == "kubernetes.io/hostname"
    assert apart["labelSelector"]["matchLabels"] == {"gpufleet.io/job-id": "wide"}
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    rank = env["GPUFLEET_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "job-completion-index" in rank and env["GPUFLEET_HOSTS"]["value"] == "n1,n2"
    assert client.V1Job.from_dict(doc).spec.completion_mode == "Indexed"


def test_manifest_errors_name_the_field() -> None:
    with pytest.raises(DispatchError, match="image"):
        job_manifest(launch_of("x", image=None, command=("true",)), "ml")
    uneven = launch_of("y", HostGpus("a", (0,)), HostGpus("b", (0, 1)))
    with pytest.raises(DispatchError, match="hosts"):
        job_manifest(uneven, "ml")
    assert (
        job_manifest(launch_of("z", image=None, command=("true",)), "ml", default_image="busybox")
        .spec.template.spec.containers[0]
        .image
        == "busybox"
    )


def test_names_and_labels_stay_valid_and_distinct_for_any_job_id() -> None:
    ids = ["Job_1", "job-1", "a" * 200, "user@lab/run#7", "UPPER"]
    names = {job_name(i) for i in ids}
    labels = {label_value(i) for i in ids}
    assert len(names) == len(ids) and len(labels) == len(ids)
    for name in names:
        assert len(name) <= 52 and name == name.lower() and name[0].isalnum()
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    for label in labels:
        assert len(label) <= 63 and label[0].isalnum() and label[-1].isalnum()


def test_the_recorded_objects_are_valid_for_the_clients_models() -> None:
    """The hand-written recordings parse with the client's strict models: a check that they
    say what a real API server would say."""
    for path in FIXTURES.glob("*.json"):
        for step in json.loads(path.read_text())["steps"]:
            status = json.loads(
                json.dumps(step.get("status", {})).replace("$NOW", "2026-12-03T07:00:00Z")
            )
            if step.get("object") == "pod":
                client.V1PodStatus.from_dict(status)
            elif step.get("object") == "job":
                client.V1JobStatus.from_dict(status)


# -- the dispatcher against the replayed API ------------------------------------------------


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, Path]]:
    api = FakeKubeApi()
    url = api.start()
    yield api, write_kubeconfig(tmp_path / "kubeconfig", url)
    api.stop()


Body = Callable[[KubernetesDispatcher, Recorder], Awaitable[None]]


def run(kube: tuple[FakeKubeApi, Path], body: Body) -> None:
    config = str(kube[1])
    drive(lambda: KubernetesDispatcher(namespace="ml", kubeconfig=config, watch_timeout_seconds=2),
          body)  # fmt: skip


def test_implements_the_dispatcher_protocol() -> None:
    assert isinstance(KubernetesDispatcher(), Dispatcher)


def test_a_job_runs_to_completion_through_the_watch(kube: tuple[FakeKubeApi, Path]) -> None:
    api, _ = kube

    async def body(d: KubernetesDispatcher, rec: Recorder) -> None:
        handle = await d.launch(launch_of("ok-1", annotations=NOTES))
        assert handle == "gpufleet-ok-1"
        done = await rec.wait_end("ok-1")
        assert (done.kind, done.exit_code, done.handle) == (EventKind.EXITED, 0, handle)
        assert rec.kinds("ok-1") == [EventKind.STARTED, EventKind.EXITED]
        assert "epoch 3/3" in await d.logs("ok-1", handle)

    run(kube, body)
    (posted,) = api.posted_jobs()  # what went over the wire
    assert posted["metadata"]["annotations"]["model_name"] == "resnet50"
    limits = posted["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": "2"}
    watches = [q for m, p, q, _ in api.requests if m == "GET" and q.get("watch") == ["true"]]
    assert {tuple(q["labelSelector"]) for q in watches} == {
        ("app.kubernetes.io/managed-by=gpufleet",)
    }


@pytest.mark.parametrize(
    ("scenario", "kind", "exit_code", "reason"),
    [
        ("failed-exit-3", EventKind.EXITED, 3, None),
        ("oom-killed", EventKind.FAILED, 137, "out of host memory"),
        ("oom-killed-pod-event-late", EventKind.FAILED, 137, "out of host memory"),
        ("cuda-oom", EventKind.FAILED, 1, "oom"),
        ("deadline", EventKind.FAILED, None, "time limit"),
        ("node-lost", EventKind.FAILED, None, "host down"),
    ],
)
def test_endings_say_what_happened(
    kube: tuple[FakeKubeApi, Path], scenario: str, kind: EventKind, exit_code: int | None,
    reason: str | None,
) -> None:  # fmt: skip
    api, _ = kube
    api.scenario_of["end-1"] = scenario

    async def body(d: KubernetesDispatcher, rec: Recorder) -> None:
        await d.launch(launch_of("end-1", time_limit_seconds=60))
        event = await rec.wait_end("end-1")
        assert (event.kind, event.exit_code, event.reason) == (kind, exit_code, reason)
        assert rec.kinds("end-1")[0] is EventKind.STARTED

    run(kube, body)


def test_cancel_deletes_the_job_in_the_foreground(kube: tuple[FakeKubeApi, Path]) -> None:
    api, _ = kube
    api.scenario_of["run-1"] = "running"
    api.scenario_of["wait-1"] = "pending"

    async def body(d: KubernetesDispatcher, rec: Recorder) -> None:
        handle = await d.launch(launch_of("run-1"))
        await d.launch(launch_of("wait-1"))
        await rec.wait("run-1", EventKind.STARTED)
        await d.cancel("run-1", handle)
        await d.cancel("wait-1", None)
        for job in ("run-1", "wait-1"):
            event = await rec.wait_end(job)
            assert (event.kind, event.reason) == (EventKind.CANCELLED, "cancelled")
        assert rec.kinds("wait-1") == [EventKind.CANCELLED]  # it never ran
        await d.cancel("gone-1", None)  # no such Job: nothing runs, so it is cancelled
        assert (await rec.wait("gone-1", EventKind.CANCELLED)).reason == "cancelled"

    run(kube, body)
    deletes = [q for m, _, q, _ in api.requests if m == "DELETE"]
    assert all(q.get("propagationPolicy") == ["Foreground"] for q in deletes) and len(deletes) == 3


def test_a_job_deleted_by_someone_else_is_lost(kube: tuple[FakeKubeApi, Path]) -> None:
    api, _ = kube
    api.scenario_of["del-1"] = "running"

    async def body(d: KubernetesDispatcher, rec: Recorder) -> None:
        handle = await d.launch(launch_of("del-1"))
        await rec.wait("del-1", EventKind.STARTED)
        await asyncio.to_thread(api.delete_job, "ml", handle)  # kubectl delete job, by a person
        assert (await rec.wait("del-1", EventKind.LOST)).handle == handle

    run(kube, body)


def test_the_watch_lists_again_after_410_gone(kube: tuple[FakeKubeApi, Path]) -> None:
    api, _ = kube
    api.scenario_of["long-1"] = "running"

    async def body(d: KubernetesDispatcher, rec: Recorder) -> None:
        handle = await d.launch(launch_of("long-1"))
        await rec.wait("long-1", EventKind.STARTED)
        lists_before = len(_lists(api))
        api.compact_and_drop_watches()  # the watch ends; resuming from its version is too old

        async def listed_again() -> None:  # at least the watch that was behind lists again
            while len(_lists(api)) == lists_before:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(listed_again(), 120)
        await d.cancel("long-1", handle)
        assert (await rec.wait("long-1", EventKind.CANCELLED)).handle == handle
        assert rec.kinds("long-1") == [EventKind.STARTED, EventKind.CANCELLED]  # no repeat

    run(kube, body)


def _lists(api: FakeKubeApi) -> list[str]:
    return [p for m, p, q, _ in api.requests if m == "GET" and "watch" not in q and "log" not in p
            and "limit" not in q]  # fmt: skip


def test_launch_is_idempotent(kube: tuple[FakeKubeApi, Path]) -> None:
    api, _ = kube
    api.scenario_of["same-1"] = "running"

    async def body(d: KubernetesDispatcher, rec: Recorder) -> None:
        launch = launch_of("same-1")
        first, again = await asyncio.gather(d.launch(launch), d.launch(launch))
        # a restarted dispatcher: the create answers 409 AlreadyExists, the Job is ours
        other = KubernetesDispatcher(namespace="ml", kubeconfig=str(kube[1]))
        await other.start()
        try:
            assert await other.launch(launch) == first == again
        finally:
            await other.close()
        assert len(api.list("jobs", "ml", "gpufleet.io/job-id=same-1")["items"]) == 1
        await d.cancel("same-1", first)
        await rec.wait("same-1", EventKind.CANCELLED)

    run(kube, body)
    assert len(api.posted_jobs()) == 2  # one created, one refused with 409


def test_reattach_after_a_restart(kube: tuple[FakeKubeApi, Path]) -> None:
    api, _ = kube
    api.scenario_of["keep-1"] = "running"
    api.scenario_of["ended-1"] = "failed-exit-3"

    async def before(d: KubernetesDispatcher, rec: Recorder) -> None:
        await d.launch(launch_of("keep-1"))
        await d.launch(launch_of("ended-1"))
        await rec.wait("keep-1", EventKind.STARTED)
        await rec.wait("ended-1", EventKind.STARTED)

    run(kube, before)  # gone before ended-1 necessarily ended

    async def after(d: KubernetesDispatcher, rec: Recorder) -> None:
        await d.reattach([("keep-1", "gpufleet-keep-1"), ("ended-1", None), ("nope-1", None)])
        running = await rec.wait("keep-1", EventKind.STARTED)
        ended = await rec.wait("ended-1", EventKind.EXITED)
        lost = await rec.wait("nope-1", EventKind.LOST)
        assert running.handle == "gpufleet-keep-1" and ended.exit_code == 3 and lost.reason
        await d.cancel("keep-1", running.handle)
        await rec.wait("keep-1", EventKind.CANCELLED)

    run(kube, after)


def test_a_missing_rbac_rule_is_a_clear_error(kube: tuple[FakeKubeApi, Path]) -> None:
    api, _ = kube
    api.forbidden.add("create")

    async def body(d: KubernetesDispatcher, rec: Recorder) -> None:
        with pytest.raises(DispatchError, match=r"create Job gpufleet-no-1.*403.*cannot create"):
            await d.launch(launch_of("no-1"))
        api.forbidden.clear()
        assert await d.launch(launch_of("no-1")) == "gpufleet-no-1"  # nothing half-done before
        await rec.wait("no-1", EventKind.EXITED)

    run(kube, body)


def test_an_unreachable_api_server_fails_start_naming_it(tmp_path: Path) -> None:
    from tests.conftest import free_port

    config = write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{free_port()}")

    async def main() -> None:
        d = KubernetesDispatcher(namespace="ml", kubeconfig=str(config), request_timeout_seconds=5)
        with pytest.raises(DispatchError, match="list Jobs in namespace ml"):
            await d.start()

    asyncio.run(main())
