"""The live web UI: server-rendered pages (Jinja2), hand-written JS/CSS, vendored ECharts.

``install(app)`` adds the page routes, the SSE stream and the static files to an app; the
pages draw what ``/api/v1/overview``, ``/api/v1/hosts/{name}`` and ``/api/v1/stream`` serve.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from gpufleet.http.templates import STATIC_DIR, TEMPLATE_DIR, LanguageCookie

__all__ = ["STATIC_DIR", "TEMPLATE_DIR", "install"]


def install(app: FastAPI) -> None:
    from gpufleet.web import apidocs, routes, stream

    app.include_router(stream.router)
    app.include_router(routes.router)
    app.include_router(apidocs.router)  # /docs from the package, not a CDN
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(LanguageCookie)  # the pages' language switch (?lang=) sets a cookie
