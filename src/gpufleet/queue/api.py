"""The queue's HTTP edge: the JSON API, the /queue page, /metrics gauges and the service's start.

- ``POST /api/v1/jobs``: a job spec (YAML or JSON: the plain spec or a Kubernetes ``batch/v1``
  Job; ``?hold=1`` submits it held), or the page's form. 201 with the job; 422 naming the field
  or the quota.
- ``GET /api/v1/jobs[?state=&user=]``: the queue page's data (``queue.view.queue_view``).
- ``GET /api/v1/jobs/{id}`` (with its event log), ``GET /api/v1/jobs/{id}/logs``.
- ``POST /api/v1/jobs/{id}/cancel|hold|release``; ``PUT /api/v1/jobs/{id}/priority`` (admins).

Reads follow ``web.require_login``. Changes: the local admin key (the CLI, under
``/api/v1/admin/...``), or a logged-in user with the CSRF token, who may touch only their own
jobs (admins: any). A user submits as themself.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from gpufleet.http.errors import ApiError
from gpufleet.promtext import Family
from gpufleet.queue import store as st
from gpufleet.queue.service import QueueService, SubmitError
from gpufleet.queue.view import queue_view, row
from gpufleet.sched.job import JobSpec, JobSpecError, parse_job, parse_plain

router = APIRouter(tags=["queue"])
pages = APIRouter(include_in_schema=False)
MAX_SPEC_BYTES = 256 * 1024


def service_of(request: Request) -> QueueService:
    svc = getattr(request.app.state, "queue", None)
    if svc is None:
        raise ApiError(
            503, "queue_off",
            "the job queue is off: set queue.dispatcher in the config (docs/queue.md)",
        )  # fmt: skip
    return svc


class Who:
    def __init__(self, name: str | None, admin: bool) -> None:
        self.name, self.admin = name, admin


async def who(request: Request, authorization: str | None) -> Who:
    from gpufleet.accounts.web import auth, csrf_protected
    from gpufleet.http.auth import check_admin

    if authorization is not None:
        check_admin(authorization, request.app.state.ctx.admin_key)
        return Who(None, True)
    from gpufleet.accounts.users import has_role

    user = auth(request).user
    if user is None:
        raise ApiError(401, "login_required", "log in first to change the queue: open /login")
    if not has_role(user.role, "user"):
        raise ApiError(
            403, "forbidden", f"this needs the user role; {user.name!r} is a {user.role}"
        )
    await csrf_protected(request)
    return Who(user.name, user.role == "admin")


def _paths(path: str) -> list[str]:
    return [f"/api/v1{path}", f"/api/v1/admin{path}"]


def _route(method: str, path: str, summary: str, status_code: int = 200, body: Any = None) -> Any:
    """The route at /api/v1/<path> (in the schema) and /api/v1/admin/<path> (the CLI's);
    ``body``: the JSON schema of a body the handler reads itself."""
    extra = (
        {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}
        if body is not None
        else None
    )

    def deco(fn: Any) -> Any:
        router.api_route(_paths(path)[1], methods=[method], summary=summary,
                         include_in_schema=False, status_code=status_code)(fn)  # fmt: skip
        return router.api_route(
            _paths(path)[0], methods=[method], summary=summary, status_code=status_code,
            openapi_extra=extra,
        )(fn)  # fmt: skip

    return deco


def _spec_error(exc: JobSpecError) -> ApiError:
    text = str(exc)
    field, _, msg = text.partition(": ")
    return ApiError(422, "invalid_job", text, [{"loc": field, "msg": msg, "type": "job_spec"}])


async def _read_spec(request: Request, actor: Who) -> JobSpec:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        from gpufleet.accounts.web import form_data

        form = await form_data(request)
        data: dict[str, Any] = {
            k: v for k, v in form.items() if k != "csrf_token" and k != "hold" and v != ""
        }
        for key in ("gpus", "epochs", "steps", "priority", "data_size_gb", "preemptible"):
            if key in data:
                try:
                    data[key] = json.loads(data[key])
                except ValueError:
                    pass  # parse_plain names the field and the value
        data.setdefault("user", actor.name)
        data.setdefault("epochs", 1)
        spec = parse_plain(data)
    else:
        body = await request.body()
        if len(body) > MAX_SPEC_BYTES:
            raise ApiError(
                413, "payload_too_large", f"a job spec is at most {MAX_SPEC_BYTES} bytes"
            )
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_job", "spec: not UTF-8 text") from None
        spec = parse_job(text)
    if actor.name is not None and spec.user != actor.name and not actor.admin:
        raise ApiError(
            403, "forbidden",
            f"user: you are logged in as {actor.name!r}; only an admin submits for {spec.user!r}",
        )  # fmt: skip
    return spec


@_route("POST", "/jobs", "Submit a job (plain spec or Kubernetes batch/v1 Job)", 201)
async def submit(
    request: Request,
    hold: Annotated[bool, Query(description="Submit it held")] = False,
    authorization: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    actor = await who(request, authorization)  # credentials first, then "is the queue on"
    svc = service_of(request)
    try:
        spec = await _read_spec(request, actor)
        record = await svc.submit(spec, held=hold)
    except JobSpecError as exc:
        raise _spec_error(exc) from None
    except SubmitError as exc:
        field = str(exc).partition(":")[0]
        raise ApiError(422, "job_refused", str(exc), [{"loc": field, "msg": str(exc)}]) from None
    return row(record, svc.driver, time.time())


def jobs_json(
    request: Request, state: str | None = None, user: str | None = None
) -> dict[str, Any]:
    svc = service_of(request)
    if state is not None and state not in st.STATES:
        raise ApiError(422, "invalid_request", f"state: must be one of {', '.join(st.STATES)}")
    return queue_view(svc.store, svc.driver, svc.status(), time.time(), state, user)


@router.get("/api/v1/jobs", summary="The queue: pending, running and recent jobs")
@router.get("/api/v1/admin/jobs", include_in_schema=False)
def list_jobs(
    request: Request,
    state: Annotated[st.State | None, Query(description="Only jobs in this state")] = None,
    user: Annotated[str | None, Query(description="Only this user's jobs")] = None,
) -> dict[str, Any]:
    return jobs_json(request, state, user)


def _job(svc: QueueService, job_id: int) -> st.JobRecord:
    try:
        return svc.store.get(job_id)
    except st.UnknownJobError:
        raise ApiError(
            404, "unknown_job", f"no job {job_id}; GET /api/v1/jobs lists them"
        ) from None


@router.get("/api/v1/jobs/{job_id}", summary="One job, with its event log")
@router.get("/api/v1/admin/jobs/{job_id}", include_in_schema=False)
def get_job(request: Request, job_id: int) -> dict[str, Any]:
    svc = service_of(request)
    out = row(_job(svc, job_id), svc.driver, time.time())
    out["events"] = svc.store.events(job_id)
    return out


@router.get("/api/v1/jobs/{job_id}/logs", summary="The end of a job's output")
@router.get("/api/v1/admin/jobs/{job_id}/logs", include_in_schema=False)
async def job_logs(
    request: Request, job_id: int, tail_bytes: Annotated[int, Query(ge=1, le=2**24)] = 65536
) -> PlainTextResponse:
    svc = service_of(request)
    _job(svc, job_id)
    return PlainTextResponse(await svc.logs(job_id, tail_bytes))


async def _act(request: Request, job_id: int, authorization: str | None, action: str) -> Any:
    actor = await who(request, authorization)
    svc = service_of(request)
    record = _job(svc, job_id)
    if not actor.admin and record.user != actor.name:
        raise ApiError(403, "forbidden", f"job {job_id} is {record.user}'s; you may change yours")
    by = actor.name or "admin (CLI)"
    try:
        done = await getattr(svc, action)(job_id, by)
    except st.TransitionError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    return row(done, svc.driver, time.time())


@_route("POST", "/jobs/{job_id}/cancel", "Cancel a job (a running one is stopped)")
async def cancel(
    request: Request, job_id: int, authorization: Annotated[str | None, Header()] = None
) -> Any:
    return await _act(request, job_id, authorization, "cancel")


@_route("POST", "/jobs/{job_id}/hold", "Hold a pending job")
async def hold_job(
    request: Request, job_id: int, authorization: Annotated[str | None, Header()] = None
) -> Any:
    return await _act(request, job_id, authorization, "hold")


@_route("POST", "/jobs/{job_id}/release", "Release a held job")
async def release(
    request: Request, job_id: int, authorization: Annotated[str | None, Header()] = None
) -> Any:
    return await _act(request, job_id, authorization, "release")


@_route(
    "PUT", "/jobs/{job_id}/priority", "Set a job's priority (admins)",
    body={"type": "object", "required": ["priority"],
          "properties": {"priority": {"type": "integer"}}},
)  # fmt: skip
async def priority(
    request: Request, job_id: int, authorization: Annotated[str | None, Header()] = None
) -> Any:
    actor = await who(request, authorization)
    svc = service_of(request)
    if not actor.admin:
        raise ApiError(403, "forbidden", "priority: only an admin sets priorities")
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ApiError(422, "invalid_request", 'body: not JSON; send {"priority": N}') from None
    value = body.get("priority") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, "invalid_request", f"priority: must be an integer, got {value!r}")
    _job(svc, job_id)
    record = await svc.set_priority(job_id, value, actor.name or "admin (CLI)")
    return row(record, svc.driver, time.time())


@pages.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request) -> Response:
    from gpufleet.accounts.web import page_context
    from gpufleet.http.templates import templates

    svc = getattr(request.app.state, "queue", None)
    view = jobs_json(request) if svc is not None else None
    return templates.TemplateResponse(
        request, "queue.html", {**page_context(request), "page": "queue", "view": view,
                                "view_json": json.dumps(view).replace("</", "<\\/")},
    )  # fmt: skip


# -- start-up, /metrics -----------------------------------------------------------------------
def families(app: FastAPI) -> list[Family]:
    svc: QueueService | None = getattr(app.state, "queue", None)
    if svc is None:
        return []
    jobs = Family("queue_jobs", "Jobs in the queue by state.")
    for state, count in svc.store.counts().items():
        jobs.add((("state", state),), count)
    error = Family(
        "queue_predictor_recent_error_ratio",
        "Mean |predicted - true| / true runtime of the queue's recently finished jobs.",
    )
    error.add((), svc.driver.recent_error())
    decision = Family("queue_decision_p99_seconds", "p99 time of a scheduling pass (recent).")
    decision.add((), svc.status()["decision_p99_seconds"])
    return [jobs, error, decision]


def _dispatcher(cfg: Any, settings: Any) -> Any:
    from gpufleet.errors import ConfigError

    options = dict(cfg.dispatcher_options)
    data_dir = settings.server.data_dir
    if cfg.dispatcher == "replay":
        from gpufleet.queue.dispatch.replay import ReplayDispatcher

        return ReplayDispatcher(data_dir / "queue-replay.json", time_scale=cfg.replay_time_scale)
    if cfg.dispatcher == "local":
        from gpufleet.queue.dispatch.local import LocalDispatcher

        options.setdefault("root", data_dir / "jobs")
        return LocalDispatcher(**options)
    if cfg.dispatcher == "ssh":
        from gpufleet.poller.service import SshHostConfig
        from gpufleet.queue.dispatch.ssh import SshDispatcher

        hosts = [SshHostConfig.model_validate(h) for h in settings.ssh.hosts]
        return SshDispatcher(hosts, **options)
    if cfg.dispatcher == "slurm":
        from gpufleet.queue.dispatch.slurm import SlurmDispatcher

        # job logs: a directory the compute nodes write to (shared storage on a real cluster)
        options.setdefault("log_dir", data_dir / "slurm-logs")
        return SlurmDispatcher(**options)
    if cfg.dispatcher == "kubernetes":
        from gpufleet.queue.dispatch.k8s import KubernetesDispatcher

        return KubernetesDispatcher(**options)
    raise ConfigError(
        f"queue.dispatcher: unknown dispatcher {cfg.dispatcher!r}",
        hint="set queue.dispatcher to none, replay, local, ssh, slurm or kubernetes "
        "(docs/dispatchers.md)",
    )


async def start(app: FastAPI, settings: Any, live: Any, status_of: Any) -> QueueService | None:
    """Start the queue when ``queue.dispatcher`` is set; None when it is off."""
    from gpufleet.errors import ConfigError
    from gpufleet.queue.driver import QueueDriver
    from gpufleet.queue.fleet import fleet_from_live
    from gpufleet.queue.policies import policy_factory
    from gpufleet.queue.quota import quota_rules

    cfg = settings.queue
    app.state.queue = None
    if cfg.dispatcher == "none":
        return None
    try:
        dispatcher = _dispatcher(cfg, settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"queue.dispatcher_options: {exc}",
            hint=f"see docs/dispatchers.md for the options of the {cfg.dispatcher} dispatcher",
        ) from None
    try:
        driver = QueueDriver(
            policy_factory(cfg.policy),
            quotas=quota_rules(cfg.quotas, cfg.groups),
            memory_margin=cfg.memory_margin,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), hint="fix the setting in the queue section") from None
    svc = QueueService(
        st.JobStore(settings.server.data_dir / "queue.sqlite3"), dispatcher, driver,
        lambda: fleet_from_live(dict(live.hosts), status_of()),
        refresh_seconds=cfg.refresh_seconds,
        requeue_within_seconds=cfg.requeue_within_seconds,
    )  # fmt: skip
    await svc.start()
    app.state.queue = svc
    return svc


async def stop(app: FastAPI) -> None:
    svc: QueueService | None = getattr(app.state, "queue", None)
    if svc is not None:
        await svc.stop()
        svc.store.close()
