"""The live web UI: server-rendered pages (Jinja2), hand-written JS/CSS, vendored ECharts.

``install(app)`` adds the page routes, the SSE stream and the static files to an app; the
pages draw what ``/api/v1/overview``, ``/api/v1/hosts/{name}`` and ``/api/v1/stream`` serve.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
TEMPLATE_DIR = Path(__file__).parent / "templates"


def install(app: FastAPI) -> None:
    from gpufleet.server import stream
    from gpufleet.web import apidocs, routes

    app.include_router(stream.router)
    app.include_router(routes.router)
    app.include_router(apidocs.router)  # /docs from the package, not a CDN
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
