"""The pages' Jinja2 environment, shared by every capability that renders a page.

The template and static files live with the web UI (``gpufleet/web/templates`` and
``gpufleet/web/static``): they are data, found by path, so a capability's page needs this kit
and not the web UI's code."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

from gpufleet import __version__
from gpufleet.http.format import register_filters

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"
TEMPLATE_DIR = WEB_DIR / "templates"
VENDOR_ECHARTS = STATIC_DIR / "vendor" / "echarts.min.js"

templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
register_filters(templates.env)
templates.env.globals["version"] = __version__


def _asset_version(path: Path) -> str:
    try:
        return str(int(path.stat().st_mtime))
    except OSError:
        return "0"


templates.env.globals["asset"] = lambda name: (
    f"/static/{name}?v={_asset_version(STATIC_DIR / name)}"
)
