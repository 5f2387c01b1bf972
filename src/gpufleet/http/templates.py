"""The pages' Jinja2 environment, shared by every capability that renders a page.

The template and static files live with the web UI (``gpufleet/web/templates`` and
``gpufleet/web/static``): they are data, found by path, so a capability's page needs this kit
and not the web UI's code.

Pages speak the reader's language (gpufleet.i18n, docs/i18n.md): ``_("text", name=...)`` in a
template translates into the request's language, ``lang`` is that language (``<html lang>``),
and ``js_messages`` the catalogue slice the page's scripts translate with (``GF.t``). The
language is, in order: ``?lang=`` (which ``LanguageCookie`` also keeps in the ``lang``
cookie), the cookie, ``Accept-Language``, the config's ``ui.language``, English.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup, escape
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpufleet import __version__, i18n
from gpufleet.http.format import NA, register_filters
from gpufleet.i18n import N_

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"
TEMPLATE_DIR = WEB_DIR / "templates"
VENDOR_ECHARTS = STATIC_DIR / "vendor" / "echarts.min.js"

templates = Jinja2Templates(directory=str(TEMPLATE_DIR))
register_filters(templates.env)
templates.env.globals["version"] = __version__
templates.env.globals["languages"] = i18n.NAMES
templates.env.globals["short_names"] = i18n.SHORT_NAMES
# a report's grouping and period, as the pages name them (translated with _() in the template)
templates.env.globals["by_labels"] = {
    "fleet": N_("fleet"), "host": N_("host"), "gpu_model": N_("GPU model"), "gpu": N_("GPU"),
    "user": N_("user"), "group": N_("group"), "person": N_("person"),
    "host_group": N_("host group"), "unix_user": N_("Unix user"),
}  # fmt: skip
templates.env.globals["period_labels"] = {
    "day": N_("day"), "week": N_("week"), "month": N_("month"), "quarter": N_("quarter"),
    "year": N_("year"), "custom": N_("custom range"),
}  # fmt: skip


def _asset_version(path: Path) -> str:
    try:
        return str(int(path.stat().st_mtime))
    except OSError:
        return "0"


templates.env.globals["asset"] = lambda name: (
    f"/static/{name}?v={_asset_version(STATIC_DIR / name)}"
)


def configured_language(request: Request) -> str:
    """The config's ``ui.language`` (English when the app has no settings, as in a bare test)."""
    ctx = getattr(request.app.state, "ctx", None)
    ui = getattr(getattr(ctx, "settings", None), "ui", None)
    return getattr(ui, "language", i18n.ENGLISH)


def request_language(request: Request) -> str:
    """The language of a page: ``?lang=``, the ``lang`` cookie, ``Accept-Language``, the config
    default, English (the first that names a language gpufleet speaks)."""
    cached = request.scope.get("gpufleet.lang")
    if cached:
        return str(cached)
    lang = (
        i18n.normalize(request.query_params.get("lang", ""))
        or i18n.normalize(request.cookies.get(i18n.COOKIE, ""))
        or i18n.negotiate(request.headers.get("accept-language"))
        or configured_language(request)
    )
    request.scope["gpufleet.lang"] = lang
    return lang


def _lang_of(ctx: Context) -> str:
    if "lang" in ctx:
        return str(ctx["lang"])
    request = ctx.get("request")
    return request_language(request) if request is not None else i18n.ENGLISH


def _markup(text: str, params: dict[str, Any]) -> Markup:
    # the message escaped, then its placeholders filled with escaped values (Markup ones, such
    # as "<code>make setup</code>"|safe, as they are)
    return Markup(escape(text)).format(**params) if params else Markup(escape(text))


def translator(lang: str) -> Callable[..., Markup]:
    """``_`` for a template rendered outside a request (the e-mailed report): ``lang`` fixed."""

    def translate(msgid: str, /, **params: Any) -> Markup:
        return _markup(i18n.translate(msgid, lang), params)

    return translate


@pass_context
def _translate(ctx: Context, msgid: str, /, **params: Any) -> Markup:
    return _markup(i18n.translate(msgid, _lang_of(ctx)), params)


@pass_context
def _plural(ctx: Context, one: str, other: str, n: float, /, **params: Any) -> Markup:
    lang = _lang_of(ctx)
    text = one if n == 1 or lang != i18n.ENGLISH else other
    return _markup(i18n.translate(text, lang), {"n": n, **params})


@pass_context
def _page_lang(ctx: Context) -> str:
    return _lang_of(ctx)


@pass_context
def _js_messages(ctx: Context) -> str:
    """The page scripts' catalogue as JSON, safe inside ``<script type="application/json">``."""
    data = i18n.js_catalogue(_lang_of(ctx))
    return orjson.dumps(data).decode().replace("</", "<\\/")


@pass_context
def _switch_url(ctx: Context, lang: str) -> str:
    """This page's address with ``lang=`` set (the language switch's links)."""
    request = ctx.get("request")
    if request is None:
        return f"?lang={lang}"
    query = {k: v for k, v in request.query_params.multi_items() if k != "lang"}
    return f"{request.url.path}?{urlencode({**query, 'lang': lang})}"


def duration_in(lang: str, seconds: float | None) -> str:
    """``human_duration`` in ``lang``: "3 h 5 min", "3 小时 5 分钟"."""
    if seconds is None:
        return NA
    s = max(int(seconds), 0)
    if s < 60:
        return i18n.translate("{n} s", lang, n=s)
    if s < 3600:
        return i18n.translate("{n} min", lang, n=s // 60)
    if s < 86400:
        return i18n.translate("{h} h {m} min", lang, h=s // 3600, m=s % 3600 // 60)
    return i18n.translate("{d} d {h} h", lang, d=s // 86400, h=s % 86400 // 3600)


@pass_context
def _duration(ctx: Context, seconds: float | None) -> str:
    return duration_in(_lang_of(ctx), seconds)


@pass_context
def _ago(ctx: Context, ts: float | None) -> str:
    lang = _lang_of(ctx)
    if ts is None:
        return i18n.translate("never", lang)
    return i18n.translate("{duration} ago", lang, duration=duration_in(lang, time.time() - ts))


@pass_context
def _say(ctx: Context, message: Any) -> str:
    """A server message (``i18n.Msg``, its JSON, or plain text) in the page's language."""
    return i18n.render(message, _lang_of(ctx))


templates.env.filters.update(duration=_duration, ago=_ago)
templates.env.globals.update(
    _=_translate, ngettext=_plural, page_lang=_page_lang, js_messages=_js_messages,
    switch_url=_switch_url, say=_say,
)  # fmt: skip


class LanguageCookie:
    """ASGI middleware for the pages' language: a request with ``?lang=en`` or ``?lang=zh-CN``
    (the page's language switch) keeps that choice in the ``lang`` cookie for a year, so every
    later page follows; an HTML answer says it varies with ``Accept-Language`` and the cookie
    (a shared cache must not hand one reader's language to another)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra: list[tuple[bytes, bytes]] = []
        if b"lang=" in scope.get("query_string", b""):
            query = parse_qs(scope["query_string"].decode("latin-1"))
            lang = i18n.normalize((query.get("lang") or [""])[0])
            if lang is not None:
                cookie: SimpleCookie = SimpleCookie()
                cookie[i18n.COOKIE] = lang
                morsel = cookie[i18n.COOKIE]
                morsel["path"] = "/"
                morsel["max-age"] = 365 * 86400
                morsel["samesite"] = "Lax"
                extra.append((b"set-cookie", morsel.OutputString().encode("latin-1")))

        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                html = any(k.lower() == b"content-type" and v.startswith(b"text/html")
                           for k, v in headers)  # fmt: skip
                if html:
                    headers.append((b"vary", b"Accept-Language, Cookie"))
                message["headers"] = headers + extra
            await send(message)

        await self.app(scope, receive, send_with)
