"""A small Kubernetes API server on loopback that replays recorded exchanges, for the Kubernetes
dispatcher's tests (no real API server can be installed here).

It speaks the REST paths the official client calls, over real HTTP: ``/apis/batch/v1/namespaces/
{ns}/jobs`` (list, watch, create, read, delete) and ``/api/v1/namespaces/{ns}/pods`` (list,
watch, ``{name}/log``), with ``labelSelector``, ``resourceVersion``, ``timeoutSeconds`` and
chunked watch streams of ``{"type": ..., "object": ...}`` lines. 409 AlreadyExists, 404 NotFound
and 403 Forbidden answer as the API's ``Status`` objects.

What a Job does once created comes from a *recorded scenario*: a JSON file in
``fixtures/k8s/`` written by hand from the Kubernetes API reference (Job and Pod status as the
job controller and kubelet set them): a list of steps, each the next ``status`` of the Job's pod
or of the Job itself, replayed in order as watch events. ``"$NOW"`` in a step becomes the current
time. A ``{"hold": true}`` step waits for a delete (foreground: pods stop and go, then the Job).
A pod step with ``"watch_behind": true`` changes the stored pod at once but sends its watch
event only after the last step (the Jobs watch ahead of the Pods watch).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures" / "k8s"
STEP_PAUSE_SECONDS = 0.05
JOB_ID_ANNOTATION = "gpufleet.io/job-id"

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?$")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fill(value: Any) -> Any:
    if value == "$NOW":
        return now_rfc3339()
    if isinstance(value, dict):
        return {k: _fill(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v) for v in value]
    return value


def status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code,
    }  # fmt: skip


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, eq, value = term.partition("=")
        if eq and labels.get(key) != value:
            return False
        if not eq and key not in labels:
            return False
    return True


class FakeKubeApi:
    """The API's state: objects, an event log with resource versions, and scenario players."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 1000
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name)
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # version, kind, type, obj
        self.scenario_of: dict[str, str] = {}  # gpufleet job id -> scenario file stem
        self.requests: list[tuple[str, str, dict[str, list[str]], Any]] = []
        self.forbidden: set[str] = set()  # "create", ...: answer 403 like a missing RBAC rule
        self.logs: dict[str, str] = {}  # pod name -> its log
        self._deleted: set[str] = set()
        self.compacted_to = 0  # a watch from an older resourceVersion gets 410 Gone
        self._watch_generation = 0  # bumped to end every open watch (an API server restart)
        self._server: ThreadingHTTPServer | None = None
        self.stopping = False

    # -- state (call with self.cond held) ----------------------------------------------------

    def _record(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if type_ == "DELETED":
            self.objects.pop((kind, ns, name), None)
        else:
            self.objects[(kind, ns, name)] = obj
        self.events.append((self.version, kind, type_, copy.deepcopy(obj)))
        self.cond.notify_all()

    def list(self, kind: str, ns: str, selector: str) -> dict[str, Any]:
        with self.cond:
            items = [
                copy.deepcopy(o) for (k, n, _), o in sorted(self.objects.items())
                if k == kind and n == ns and _matches(o["metadata"].get("labels") or {}, selector)
            ]  # fmt: skip
            return {
                "kind": "JobList" if kind == "jobs" else "PodList",
                "apiVersion": "batch/v1" if kind == "jobs" else "v1",
                "metadata": {"resourceVersion": str(self.version)}, "items": items,
            }  # fmt: skip

    def watch(
        self, kind: str, ns: str, selector: str, since: int, timeout: float
    ) -> Iterator[bytes]:
        deadline = time.monotonic() + timeout
        seen = since
        with self.cond:
            generation = self._watch_generation
            if since < self.compacted_to:  # what a real server sends: an ERROR event, 410
                gone = status_body(
                    410, "Expired", f"too old resource version: {since} ({self.compacted_to})"
                )
                yield json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"
                return
        while not self.stopping and generation == self._watch_generation:
            with self.cond:
                batch = [
                    (v, t, o) for v, k, t, o in self.events
                    if v > seen and k == kind and o["metadata"]["namespace"] == ns
                    and _matches(o["metadata"].get("labels") or {}, selector)
                ]  # fmt: skip
                seen = self.version
                if not batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self.cond.wait(min(left, 0.5))
                    continue
            for _, type_, obj in batch:
                yield json.dumps({"type": type_, "object": obj}).encode() + b"\n"

    # -- a Job's life ------------------------------------------------------------------------

    def create_job(self, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body["metadata"]["name"]
        with self.cond:
            if ("jobs", ns, name) in self.objects:
                return 409, status_body(
                    409, "AlreadyExists", f'jobs.batch "{name}" already exists',
                    name=name, group="batch", kind="jobs",
                )  # fmt: skip
            job = copy.deepcopy(body)
            job["metadata"].update(
                namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(),
                generation=1,
            )  # fmt: skip
            job["status"] = {}
            self._record("jobs", "ADDED", job)
        job_id = (body["metadata"].get("annotations") or {}).get(JOB_ID_ANNOTATION, "")
        scenario = json.loads(
            (FIXTURES / f"{self.scenario_of.get(job_id, 'succeeded')}.json").read_text()
        )
        threading.Thread(target=self._play, args=(ns, name, scenario), daemon=True).start()
        return 201, job

    def _pod_for(self, ns: str, job: dict[str, Any]) -> dict[str, Any]:
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        template = job["spec"]["template"]
        labels = {**(template["metadata"].get("labels") or {}),
                  "batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}  # fmt: skip
        spec = copy.deepcopy(template["spec"])
        spec["nodeName"] = (spec.get("nodeSelector") or {}).get("kubernetes.io/hostname", "node-a")
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": f"{name}-{uuid.uuid4().hex[:5]}", "namespace": ns,
                "uid": str(uuid.uuid4()), "creationTimestamp": now_rfc3339(), "labels": labels,
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                     "uid": uid, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": spec,
            "status": {"phase": "Pending"},
        }  # fmt: skip

    def _play(self, ns: str, name: str, scenario: dict[str, Any]) -> None:
        pod: dict[str, Any] | None = None
        late: dict[str, Any] | None = None  # a pod update whose watch event is held back
        for step in scenario["steps"]:
            time.sleep(STEP_PAUSE_SECONDS)
            with self.cond:
                job = self.objects.get(("jobs", ns, name))
                if job is None or name in self._deleted:
                    return
                if step.get("hold"):
                    while name not in self._deleted and not self.stopping:
                        self.cond.wait(0.5)
                    return
                if step["object"] == "pod":
                    first = pod is None
                    pod = pod or self._pod_for(ns, job)
                    pod["status"] = _fill(step["status"])
                    self.logs[pod["metadata"]["name"]] = scenario.get("log", "")
                    if step.get("watch_behind"):  # stored, but its watch event comes last
                        self.version += 1
                        pod["metadata"]["resourceVersion"] = str(self.version)
                        self.objects[("pods", ns, pod["metadata"]["name"])] = copy.deepcopy(pod)
                        late = copy.deepcopy(pod)
                    else:
                        self._record("pods", "ADDED" if first else "MODIFIED", copy.deepcopy(pod))
                elif step["object"] == "pod-deleted" and pod is not None:
                    self._record("pods", "DELETED", copy.deepcopy(pod))
                else:
                    job = copy.deepcopy(job)
                    job["status"] = _fill(step["status"])
                    self._record("jobs", "MODIFIED", job)
        if late is not None:
            time.sleep(STEP_PAUSE_SECONDS)
            with self.cond:
                self._record("pods", "MODIFIED", late)

    def delete_job(self, ns: str, name: str) -> tuple[int, dict[str, Any]]:
        """Foreground deletion: the Job gets a deletionTimestamp, its pods stop and go, then it
        goes; the answer is the Job as it is now (what the API server returns)."""
        with self.cond:
            job = self.objects.get(("jobs", ns, name))
            if job is None:
                return 404, status_body(404, "NotFound", f'jobs.batch "{name}" not found',
                                        name=name, group="batch", kind="jobs")  # fmt: skip
            self._deleted.add(name)
            job = copy.deepcopy(job)
            job["metadata"].update(
                deletionTimestamp=now_rfc3339(), finalizers=["foregroundDeletion"]
            )
            self._record("jobs", "MODIFIED", job)
            answer = copy.deepcopy(job)
            for (kind, pod_ns, _), pod in list(self.objects.items()):
                if (
                    kind == "pods"
                    and pod_ns == ns
                    and pod["metadata"]["labels"].get("job-name") == name
                ):
                    self._record("pods", "DELETED", copy.deepcopy(pod))
            self._record("jobs", "DELETED", copy.deepcopy(job))
            return 200, answer

    # -- HTTP --------------------------------------------------------------------------------

    def start(self) -> str:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                api.requests.append((method, url.path, query, body))
                one = {k: v[0] for k, v in query.items()}
                jobs, pods = _JOBS.match(url.path), _PODS.match(url.path)
                verb = {"GET": "get", "POST": "create", "DELETE": "delete"}[method]
                if verb in api.forbidden:
                    what = "jobs" if jobs else "pods"
                    ns = (jobs or pods).group(1) if (jobs or pods) else ""  # type: ignore[union-attr]
                    self._send(403, status_body(403, "Forbidden", (
                        f'{what} is forbidden: User "system:serviceaccount:{ns}:gpufleet" cannot '
                        f'{verb} resource "{what}" in API group "{"batch" if jobs else ""}" '
                        f'in the namespace "{ns}"'), kind=what))  # fmt: skip
                    return
                if jobs and method == "POST":
                    self._send(*api.create_job(jobs.group(1), body))
                elif jobs and method == "DELETE" and jobs.group(2):
                    self._send(*api.delete_job(jobs.group(1), jobs.group(2)))
                elif (jobs or pods) and method == "GET" and not (jobs or pods).group(2):  # type: ignore[union-attr]
                    match = jobs or pods
                    kind = "jobs" if jobs else "pods"
                    selector = one.get("labelSelector", "")
                    if one.get("watch") in ("true", "1"):
                        self._stream(api.watch(kind, match.group(1), selector,  # type: ignore[union-attr]
                                               int(one.get("resourceVersion") or 0),
                                               float(one.get("timeoutSeconds") or 60)))  # fmt: skip
                    else:
                        self._send(200, api.list(kind, match.group(1), selector))  # type: ignore[union-attr]
                elif jobs and method == "GET":
                    with api.cond:
                        job = api.objects.get(("jobs", jobs.group(1), jobs.group(2)))
                    if job is None:
                        self._send(
                            404,
                            status_body(404, "NotFound", f'jobs.batch "{jobs.group(2)}" not found'),
                        )
                    else:
                        self._send(200, job)
                elif pods and pods.group(3) and method == "GET":
                    text = api.logs.get(pods.group(2))
                    if text is None:
                        self._send(
                            404, status_body(404, "NotFound", f'pods "{pods.group(2)}" not found')
                        )
                    else:
                        lines = text.splitlines(keepends=True)[
                            -int(one.get("tailLines") or 10**9) :
                        ]
                        self._send(200, "".join(lines).encode(), "text/plain")
                else:
                    self._send(
                        404, status_body(404, "NotFound", f"the server could not find {url.path}")
                    )

            def _stream(self, chunks: Iterator[bytes]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def compact_and_drop_watches(self) -> None:
        """Compact history to now and end every open watch: the clients must list again."""
        with self.cond:
            self.compacted_to = self.version
            self._watch_generation += 1
            self.cond.notify_all()

    def posted_jobs(self) -> list[dict[str, Any]]:
        return [body for method, path, _, body in self.requests
                if method == "POST" and path.endswith("/jobs")]  # fmt: skip


def write_kubeconfig(path: Path, server: str, namespace: str = "ml") -> Path:
    """A kubeconfig for the fake API (a bearer token user, as a service account's would be)."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: replay
  cluster:
    server: {server}
contexts:
- name: replay
  context:
    cluster: replay
    user: gpufleet
    namespace: {namespace}
current-context: replay
users:
- name: gpufleet
  user:
    token: test-token
"""
    )
    return path
