"""The Kubernetes dispatcher: a ``batch/v1`` Job per launch through the official ``kubernetes``
client, completion from a watch on Jobs and Pods with gpufleet's label (event-driven).

- **Launch** creates the Job of :func:`k8s_manifest.job_manifest`; its name is derived from the
  job id, so a second create answers 409 AlreadyExists and the launch returns that Job: no job
  runs twice.
- **Watches** (:mod:`k8s_watch`): two threads (the client is synchronous) run ``list`` then
  ``watch`` on Jobs and on Pods labelled ``app.kubernetes.io/managed-by=gpufleet`` in the
  namespace, resuming from the last ``resourceVersion`` (and listing again on 410 Gone). A pod that runs gives ``STARTED``;
  the Job's ``Complete``/``Failed`` condition gives the ending (:mod:`k8s_state`); a Job deleted
  by :meth:`cancel` gives ``CANCELLED``, one deleted by someone else ``LOST``.
- Responses are read as JSON (``_preload_content=False``), not through the client's strict
  models, so a newer API server's extra fields never break the watch.
- **Re-attach** finds Jobs by the ``gpufleet.io/job-id`` annotation and label; **logs** are the
  pods' logs through the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from gpufleet.queue.dispatch.base import (
    DispatchError,
    DispatchEvent,
    EventChannel,
    EventKind,
    Launch,
    stop_task,
)
from gpufleet.queue.dispatch.k8s_manifest import (
    JOB_ID_ANNOTATION,
    MANAGED_BY,
    job_manifest,
    job_name,
    job_selector,
)
from gpufleet.queue.dispatch.k8s_state import (
    job_condition,
    job_ending,
    pod_ended,
    pod_started_at,
    timestamp,
)
from gpufleet.queue.dispatch.k8s_watch import ResourceWatch, call_json
from gpufleet.queue.dispatch.oom import looks_like_cuda_oom

log = logging.getLogger(__name__)

SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
Obj = Mapping[str, Any]


@dataclass
class _Tracked:
    job_id: str
    name: str
    started: bool = False
    cancel_asked: bool = False
    pods: dict[str, Obj] = field(default_factory=dict)


def _api_error(what: str, exc: ApiException) -> DispatchError:
    detail = exc.reason or ""
    try:
        detail = json.loads(exc.body or "{}").get("message") or detail
    except (ValueError, AttributeError):
        pass
    return DispatchError(f"kubernetes: {what} failed ({exc.status}): {detail}")


def _job_id_of(obj: Obj) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(JOB_ID_ANNOTATION)


class KubernetesDispatcher:
    """Runs jobs as Kubernetes Jobs in ``namespace``. Credentials: ``api_client`` if given, else
    in-cluster config when running in a pod (``KUBERNETES_SERVICE_HOST``), else ``kubeconfig``
    (default ``~/.kube/config``) and ``context``. ``default_image`` runs a launch without one."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str = "default",
        api_client: client.ApiClient | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        default_image: str | None = None,
        service_account: str | None = None,
        name_prefix: str = "gpufleet-",
        watch_timeout_seconds: int = 300,
        request_timeout_seconds: float = 30.0,
    ) -> None:
        self.namespace = namespace
        self.default_image = default_image
        self.service_account = service_account
        self.name_prefix = name_prefix
        self.watch_timeout_seconds = watch_timeout_seconds
        self.request_timeout_seconds = request_timeout_seconds
        self._api = api_client
        self._kubeconfig, self._context = kubeconfig, context
        self._channel = EventChannel()
        self._tracked: dict[str, _Tracked] = {}
        self._inbox: asyncio.Queue[tuple[str, str, Obj]] = asyncio.Queue()
        self._watches: list[ResourceWatch] = []
        self._task: asyncio.Task[None] | None = None
        self._owns_api = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._ended: set[str] = set()  # ending reported: a late cancel does nothing

    # -- the API -----------------------------------------------------------------------------

    def _connect(self) -> client.ApiClient:
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not self._kubeconfig:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=self._kubeconfig, context=self._context,
                client_configuration=configuration,
            )  # fmt: skip
        return client.ApiClient(configuration)

    def _call(self, method: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """One API call, its JSON body parsed (blocking: run it in a thread)."""
        return call_json(method, *args, timeout=self.request_timeout_seconds, **kw)

    async def _acall(self, what: str, method: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return await asyncio.to_thread(self._call, method, *args, **kw)
        except ApiException as exc:
            raise _api_error(what, exc) from None
        except Exception as exc:  # urllib3: connection refused, timeout, TLS
            raise DispatchError(f"kubernetes: {what}: {type(exc).__name__}: {exc}") from None

    # -- the Dispatcher interface ------------------------------------------------------------

    async def start(self) -> None:
        if self._api is None:
            self._api = await asyncio.to_thread(self._connect)
            self._owns_api = True
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        await self._acall(
            f"list Jobs in namespace {self.namespace}", self._batch.list_namespaced_job,
            self.namespace, label_selector=SELECTOR, limit=1,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        for kind, lister in (("jobs", self._batch.list_namespaced_job),
                             ("pods", self._core.list_namespaced_pod)):  # fmt: skip
            w = ResourceWatch(
                kind, lister, self.namespace, SELECTOR, loop=loop,
                deliver=lambda k, t, o: self._inbox.put_nowait((k, t, o)),
                watch_timeout_seconds=self.watch_timeout_seconds,
                request_timeout_seconds=self.request_timeout_seconds,
            )  # fmt: skip
            w.start()
            self._watches.append(w)
        self._task = asyncio.create_task(self._process(), name="k8s-events")

    async def close(self) -> None:
        for w in self._watches:
            await w.stop()
        await stop_task(self._task)
        if self._owns_api and self._api is not None:
            self._api.close()

    def events(self) -> AsyncIterator[DispatchEvent]:
        return self._channel.events()

    async def launch(self, launch: Launch) -> str:
        async with self._locks.setdefault(launch.job_id, asyncio.Lock()):
            return await self._launch(launch)

    async def _launch(self, launch: Launch) -> str:
        known = self._tracked.get(launch.job_id)
        if known is not None:
            return known.name
        if launch.job_id in self._ended:
            return job_name(launch.job_id, self.name_prefix)
        manifest = job_manifest(
            launch, self.namespace, default_image=self.default_image, prefix=self.name_prefix,
            service_account=self.service_account,
        )  # fmt: skip
        name = job_name(launch.job_id, self.name_prefix)  # the manifest's metadata.name
        # watched before it exists, so no event of it is dropped
        self._tracked[launch.job_id] = _Tracked(launch.job_id, name)
        body = client.ApiClient().sanitize_for_serialization(manifest)
        try:
            await asyncio.to_thread(
                self._call, self._batch.create_namespaced_job, self.namespace, body
            )
        except ApiException as exc:
            if exc.status == 409:  # AlreadyExists: launched before (by us, or before a restart)
                existing = await self._acall(
                    f"read Job {name}", self._batch.read_namespaced_job, name, self.namespace
                )
                if _job_id_of(existing) == launch.job_id:
                    return name
            self._tracked.pop(launch.job_id, None)
            raise _api_error(f"create Job {name} in namespace {self.namespace}", exc) from None
        except Exception as exc:
            self._tracked.pop(launch.job_id, None)
            raise DispatchError(f"kubernetes: create Job {name}: {exc}") from None
        return name

    async def cancel(self, job_id: str, handle: str | None) -> None:
        async with self._locks.setdefault(job_id, asyncio.Lock()):  # after an in-flight launch
            if job_id not in self._ended:
                await self._cancel(job_id, handle)

    async def _cancel(self, job_id: str, handle: str | None) -> None:
        tracked = self._tracked.get(job_id)
        name = handle or (tracked.name if tracked else job_name(job_id, self.name_prefix))
        if tracked is None:
            tracked = self._tracked[job_id] = _Tracked(job_id, name)
        tracked.cancel_asked = True
        try:
            # Foreground: the Job goes (DELETED event) only after its pods have stopped
            await asyncio.to_thread(
                self._call, self._batch.delete_namespaced_job, name, self.namespace,
                propagation_policy="Foreground",
            )  # fmt: skip
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error(f"delete Job {name}", exc) from None
            self._finish(tracked, EventKind.CANCELLED, reason="cancelled")  # nothing runs

    async def reattach(self, jobs: Sequence[tuple[str, str | None]]) -> None:
        listed = await self._acall("list Jobs", self._batch.list_namespaced_job,
                                   self.namespace, label_selector=SELECTOR)  # fmt: skip
        pods = await self._acall("list Pods", self._core.list_namespaced_pod,
                                 self.namespace, label_selector=SELECTOR)  # fmt: skip
        by_id = {_job_id_of(j): j for j in listed.get("items") or []}
        for job_id, handle in jobs:
            job = by_id.get(job_id)
            if job is None:
                self._emit(job_id, EventKind.LOST, handle, reason="no Kubernetes Job for it")
                continue
            tracked = self._tracked.setdefault(job_id, _Tracked(job_id, job["metadata"]["name"]))
            for pod in pods.get("items") or []:
                if _job_id_of(pod) == job_id:
                    await self._on_pod(tracked, "ADDED", pod)
            await self._on_job(tracked, "ADDED", job)

    async def logs(self, job_id: str, handle: str | None, tail_bytes: int = 65536) -> str:
        pods = await self._acall(f"list Pods of {job_id}", self._core.list_namespaced_pod,
                                 self.namespace, label_selector=job_selector(job_id))  # fmt: skip
        names = sorted(p["metadata"]["name"] for p in pods.get("items") or [])
        texts = []
        for name in names:
            try:
                text = await asyncio.to_thread(
                    self._core.read_namespaced_pod_log, name, self.namespace, container="job",
                    tail_lines=max(100, tail_bytes // 40),
                    _request_timeout=self.request_timeout_seconds,
                )  # fmt: skip
            except ApiException as exc:  # a pod whose container never started has no log
                text = f"({name}: no log: {exc.status} {exc.reason})\n"
            texts.append(f"==> {name} <==\n{text}" if len(names) > 1 else str(text))
        return "".join(texts)[-tail_bytes:]

    # -- watching ----------------------------------------------------------------------------

    async def _process(self) -> None:
        while True:
            kind, type_, obj = await self._inbox.get()
            job_id = _job_id_of(obj)
            tracked = self._tracked.get(job_id or "")
            if tracked is None:
                continue  # not launched or re-attached here (or already reported)
            try:
                if kind == "pods":
                    await self._on_pod(tracked, type_, obj)
                else:
                    await self._on_job(tracked, type_, obj)
            except DispatchError as exc:
                log.warning("%s", exc)
            except Exception:  # an object we could not read: say so, keep watching
                log.exception("kubernetes: event for %s", job_id)

    async def _on_pod(self, tracked: _Tracked, type_: str, pod: Obj) -> None:
        tracked.pods[pod["metadata"]["name"]] = pod
        started = pod_started_at(pod)
        if started is not None and not tracked.started:
            tracked.started = True
            self._emit(tracked.job_id, EventKind.STARTED, tracked.name, at=started)

    async def _on_job(self, tracked: _Tracked, type_: str, job: Obj) -> None:
        if type_ == "DELETED":
            if tracked.cancel_asked:
                self._finish(tracked, EventKind.CANCELLED, reason="cancelled")
            else:
                self._finish(tracked, EventKind.LOST, reason="the Job was deleted")
            return
        if tracked.cancel_asked:
            return  # the DELETED event ends it
        pods = list(tracked.pods.values())
        if job_condition(job) is not None and not any(map(pod_ended, pods)):
            # the Pods watch may be behind the Jobs watch: ask for the pods' final state
            listed = await self._acall(f"list Pods of {tracked.job_id}",
                                       self._core.list_namespaced_pod, self.namespace,
                                       label_selector=job_selector(tracked.job_id))  # fmt: skip
            pods = listed.get("items") or pods
        ending = job_ending(job, pods)
        if ending is None:
            return
        ran = ending.exit_code is not None or any(pod_started_at(p) is not None for p in pods)
        if ran and not tracked.started:  # it ran (the Pods watch may lag): STARTED first
            started = timestamp((job.get("status") or {}).get("startTime"))
            tracked.started = True
            self._emit(tracked.job_id, EventKind.STARTED, tracked.name, at=started)
        kind, reason = ending.kind, ending.reason
        if ending.check_log and looks_like_cuda_oom(await self.logs(tracked.job_id, tracked.name)):
            kind, reason = EventKind.FAILED, "oom"
        self._finish(tracked, kind, exit_code=ending.exit_code, reason=reason,
                     at=ending.at_seconds)  # fmt: skip

    def _finish(self, tracked: _Tracked, kind: EventKind, *, exit_code: int | None = None,
                reason: str | None = None, at: float | None = None) -> None:  # fmt: skip
        if self._tracked.pop(tracked.job_id, None) is None:
            return  # already reported
        self._ended.add(tracked.job_id)
        self._emit(tracked.job_id, kind, tracked.name, at=at, exit_code=exit_code, reason=reason)

    def _emit(self, job_id: str, kind: EventKind, handle: str | None, *, at: float | None = None,
              exit_code: int | None = None, reason: str | None = None) -> None:  # fmt: skip
        at_seconds = at if at is not None else time.time()
        self._channel.emit(DispatchEvent(job_id, kind, at_seconds, handle, exit_code, reason))
