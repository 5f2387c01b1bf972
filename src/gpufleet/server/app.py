"""The FastAPI application: wires settings, store, live state and the routes together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from gpufleet import __version__, web
from gpufleet.accounts import admin
from gpufleet.accounts import routes as account_routes
from gpufleet.accounts import web as account_web
from gpufleet.alerts import api as alerts_api
from gpufleet.alerts import service as alerts_service
from gpufleet.config import Settings
from gpufleet.http import errors
from gpufleet.http.auth import TokenCache, ensure_admin_key
from gpufleet.http.context import Context
from gpufleet.live.state import LiveState
from gpufleet.queue import api as queue_api
from gpufleet.recommend import api as recommend_api
from gpufleet.recommend import service as recommend_service
from gpufleet.reports import api as report_api
from gpufleet.reports import mail as report_mail
from gpufleet.reports import web as report_web
from gpufleet.server import gcpolicy, ingest, metrics
from gpufleet.server import openapi as openapi_schema
from gpufleet.store import Store, open_store
from gpufleet.usermap import api as usermap_api
from gpufleet.web import api, stream
from gpufleet.wire import Batch

log = logging.getLogger(__name__)


class GpufleetAPI(FastAPI):
    """FastAPI, with ``POST /api/v1/ingest`` answered before the middleware stack and router:
    the hot path (see ``server/ingest.py``). Everything else goes the usual way."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == ingest.PATH
            and scope["method"] == "POST"
            and hasattr(self.state, "ctx")
        ):
            await ingest.serve(self.state.ctx, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _prune_forever(ctx: Context) -> None:
    cfg = ctx.settings
    while True:
        now = time.time()
        try:
            deleted = await asyncio.to_thread(
                ctx.store.prune,
                # never inside the late window: late samples are rolled up with their hour
                now - max(cfg.retention.raw_days * 86400, cfg.warehouse.late_window_hours * 3600),
                now - cfg.ingest.dedupe_window_days * 86400,
            )
            if any(deleted.values()):
                log.info("retention: deleted %s", deleted)
        except Exception:
            log.exception("retention: pruning failed; will try again")
        await asyncio.sleep(cfg.retention.prune_interval_seconds)


async def _start_poller(ctx: Context) -> None:
    if not ctx.settings.ssh.hosts:
        return
    from gpufleet.poller.service import SshHostConfig, SshPoller

    hosts = [SshHostConfig.model_validate(h) for h in ctx.settings.ssh.hosts]

    async def sink(batch: Batch) -> None:
        await ingest.accept(ctx, batch, "ssh", time.time())

    ctx.poller = SshPoller(hosts, sink)
    await ctx.poller.start()
    log.info("agent-less: polling %d host(s) over SSH", len(hosts))


def _start_alerts(app: FastAPI, ctx: Context, hub: stream.StreamHub) -> asyncio.Task[None]:
    """Alerts hear every host's newest sample from live state and tick on their own task."""
    if not ctx.settings.alerts.enabled:
        app.state.alerts = None
        return asyncio.create_task(asyncio.sleep(0))
    svc = alerts_service.open_service(ctx.settings)
    if ctx.poller is not None:
        svc.poll_status = ctx.poller.status
    store = ctx.store

    def addresses() -> dict[str, str]:  # read when a notice to a user is due (rare)
        return {row[0]: row[3] for row in store.user_mapping() if row[3]}

    svc.user_addresses = addresses
    if ctx.settings.mail.smtp_host:  # the e-mailed reports' SMTP server
        svc.mailer = functools.partial(report_mail.smtp_send, ctx.settings)
    ctx.live.listeners.append(svc.on_host)
    svc.publish = hub.publish  # badges and /alerts follow the live stream
    hub.extra_snapshots["alerts"] = svc.badges
    app.state.alerts = svc
    return asyncio.create_task(alerts_service.run_forever(svc, ctx))


async def _start_queue(app: FastAPI, ctx: Context, hub: stream.StreamHub) -> None:
    """The job queue sees the fleet's live state; the overview's bars and the queue page hear
    of its changes over the live stream."""
    cfg = ctx.live.status_cfg

    def statuses() -> dict[str, str]:
        now = time.time()
        return {n: s.summary(now, cfg)["status"] for n, s in ctx.live.hosts.items()}

    svc = await queue_api.start(app, ctx.settings, ctx.live, statuses)
    if svc is not None:
        hub.queue_gpus = svc.driver.held_gpus
        svc.listeners.append(hub.on_queue_change)


def create_app(
    settings: Settings, store: Store | None = None, ingest_workers: int = 0, log_level: str = "INFO"
) -> FastAPI:
    """Build the app. The store is opened at start-up (unless given) and closed at shutdown.
    ``ingest_workers``: worker processes to start for agents' connections; they only get any
    when uvicorn serves the app with ``workers.pool.protocol_class(app)`` (``gpufleet
    server`` does)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = store is None
        st = store or open_store(settings.database_url)
        live = LiveState(
            status_cfg={
                "stale_after_intervals": settings.status.stale_after_intervals,
                "offline_after_seconds": settings.status.offline_after_seconds,
            }
        )
        live.load(st.hosts())
        ctx = Context(
            settings, st, live, TokenCache(st), ensure_admin_key(settings.server.data_dir)
        )
        app.state.ctx = ctx
        hub = stream.attach(app, ctx)  # web UI: live updates over SSE (gpufleet.web.stream)
        metrics.attach(app, ctx)  # /metrics: the XID counter follows every sample
        app.state.accounts = account_web.Accounts(settings, st)
        collector = asyncio.create_task(gcpolicy.run())  # see gcpolicy: no GC stalls
        pruner = asyncio.create_task(_prune_forever(ctx))
        roller = asyncio.create_task(report_api.rollup_forever(ctx))  # usage warehouse
        recommender = asyncio.create_task(recommend_service.refresh_forever(app))  # history
        settler = asyncio.create_task(recommend_service.settle_forever(app))  # its answers
        mailer = report_mail.attach(app, ctx)  # scheduled e-mail reports
        await _start_poller(ctx)
        # alert rules, life cycle, channels (gpufleet.alerts)
        alerter = _start_alerts(app, ctx, hub)
        await _start_queue(app, ctx, hub)  # the job queue, when queue.dispatcher is set
        from gpufleet.server.workers.pool import WorkerPool, move_leftovers

        workers_dir = settings.server.data_dir / "ingest-workers"
        pool = None
        if ingest_workers > 0:
            pool = WorkerPool(ctx, ingest_workers, workers_dir, log_level)
            await pool.start()
            app.state.ingest_workers = ctx.ingest_workers = pool
        else:  # what workers of an earlier run acknowledged, before anything is served
            await move_leftovers(ctx, workers_dir)
        log.info(
            "store %s (schema v%d): %d hosts known", settings.database_url_redacted,
            st.schema_version(), len(live.hosts),
        )  # fmt: skip
        try:
            yield
        finally:
            if pool is not None:
                app.state.ingest_workers = ctx.ingest_workers = None
                await pool.stop()
            await queue_api.stop(app)
            background = (pruner, collector, roller, recommender, settler, mailer, alerter)
            for task in background:
                task.cancel()
            # A cancelled task's store call may still run on its thread; it finishes before
            # the store closes below or is refused (StoreError), never left waiting.
            await asyncio.gather(*background, return_exceptions=True)
            hub.stop()
            if ctx.poller is not None:
                await ctx.poller.stop()
            if own_store:
                st.close()
            if getattr(app.state, "alerts", None) is not None:
                app.state.alerts.db.close()
            if getattr(app.state, "recommend", None) is not None:
                app.state.recommend.close()
                app.state.recommend = None

    app = GpufleetAPI(
        title="gpufleet",
        version=__version__,
        description="Live state, ingest and history of a lab's GPU servers.",
        lifespan=lifespan,
        docs_url=None,  # served by gpufleet.web.apidocs from the package (no CDN)
        redoc_url=None,
    )
    errors.install(app)
    account_web.install(app, settings.web.require_login)
    app.include_router(account_routes.router)
    app.include_router(account_routes.api)
    app.include_router(account_routes.api_me)
    app.router.routes.insert(0, ingest.ROUTE)  # the hot path is matched first
    for module in (api, metrics, admin):
        app.include_router(module.router)
    app.include_router(report_api.router)
    app.include_router(usermap_api.router)  # /api/v1/admin/usermap
    app.include_router(recommend_api.router)
    app.include_router(recommend_api.pages)  # /recommend
    app.include_router(alerts_api.router)  # /api/v1/alerts, /api/v1/silences, /api/v1/rules
    app.include_router(alerts_api.pages)  # /alerts
    app.include_router(queue_api.router)  # /api/v1/jobs (gpufleet.queue)
    app.include_router(queue_api.pages)  # /queue
    report_web.install(app)  # /reports, /me/usage, /admin/reports, report subscriptions API
    web.install(app)  # web UI: pages, /api/v1/stream, /api/v1/overview, /static

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_schema.build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
