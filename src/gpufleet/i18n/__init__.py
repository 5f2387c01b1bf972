"""The languages gpufleet speaks to people: English and Simplified Chinese (zh-CN).

A message's id is its English text; ``zh-CN.json`` (package data, beside this file) maps each
id to its Chinese. ``{name}`` placeholders are filled after the lookup, so a translation may
move them. English needs no catalogue. Plurals: ``plural(one, other, n)`` picks by ``n`` in
English; Chinese has one form, the catalogue's entry for ``one``.

Which language: pages by ``?lang=`` / the ``lang`` cookie, then ``Accept-Language``
(``negotiate``), then the config default ``ui.language``; the CLI by ``GPUFLEET_LANG``, then
the config default, then ``LC_ALL`` / ``LC_MESSAGES`` / ``LANG`` (``from_locale``). Every
Chinese tag (zh, zh-CN, zh-Hans, zh-SG, and also zh-TW, zh-HK, zh-Hant: Traditional readers
read Simplified better than English) means zh-CN, every en tag en; other tags leave the
choice to the next rule (docs/i18n.md).

A bottom-level package: it imports nothing from gpufleet, so every layer can use it.
"""

from __future__ import annotations

import json
import string
import unicodedata
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

ENGLISH = "en"
CHINESE = "zh-CN"
LANGUAGES = (ENGLISH, CHINESE)
# what the language switch shows: each language in its own words
NAMES = {ENGLISH: "English", CHINESE: "简体中文"}
SHORT_NAMES = {ENGLISH: "EN", CHINESE: "中文"}  # the switch in the top bar
COOKIE = "lang"

# The language of the code running now (the CLI sets it once; a page passes its own).
current: ContextVar[str] = ContextVar("gpufleet_language", default=ENGLISH)


# The catalogue file's sections: where the messages are used ("js": the pages' scripts, which
# get that section shipped with each page; "click": click's own messages, which
# i18n.clickhelp routes here; the others are only for finding one's way).
SECTIONS = ("pages", "js", "cli", "click", "mail", "cores")


@cache
def sections(lang: str) -> Mapping[str, Mapping[str, str]]:
    """The catalogue of ``lang`` by section (empty for English: the msgid is the English)."""
    if lang == ENGLISH:
        return {s: {} for s in SECTIONS}
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r} (one of {', '.join(LANGUAGES)})")
    text = resources.files(__name__).joinpath(f"{lang}.json").read_text(encoding="utf-8")
    data: dict[str, dict[str, str]] = json.loads(text)
    return {s: data.get(s, {}) for s in SECTIONS}


@cache
def catalogue(lang: str) -> Mapping[str, str]:
    """msgid -> translation for ``lang``, all sections together."""
    merged: dict[str, str] = {}
    for part in sections(lang).values():
        merged.update(part)
    return merged


def _fill(text: str, params: Mapping[str, Any]) -> str:
    return text.format_map(params) if params else text


def translate(msgid: str, lang: str | None = None, /, **params: Any) -> str:
    """``msgid`` in ``lang`` (default: the current language), placeholders filled. A msgid the
    catalogue lacks comes back in English (a test keeps the catalogue complete)."""
    lang = lang or current.get()
    text = catalogue(lang).get(msgid, msgid) if lang != ENGLISH else msgid
    return _fill(text, params)


def plural(one: str, other: str, n: float, lang: str | None = None, /, **params: Any) -> str:
    """English ``one`` when ``n == 1`` else ``other``; Chinese: the translation of ``one``.
    ``{n}`` is filled with ``n``."""
    lang = lang or current.get()
    params = {"n": n, **params}
    if lang != ENGLISH:
        return _fill(catalogue(lang).get(one, one if n == 1 else other), params)
    return _fill(one if n == 1 else other, params)


def pgettext(context: str, msgid: str, lang: str | None = None, /, **params: Any) -> str:
    """``msgid`` in the sense ``context`` gives it (a held job, not a held GPU): catalogued as
    ``"context\\x04msgid"`` (gettext's convention); English is the msgid."""
    lang = lang or current.get()
    key = f"{context}\x04{msgid}"
    text = catalogue(lang).get(key, msgid) if lang != ENGLISH else msgid
    return _fill(text, params)


def _(msgid: str, /, **params: Any) -> str:
    """``translate`` in the current language: the short form code marks its messages with."""
    return translate(msgid, None, **params)


def N_(msgid: str) -> str:
    """Mark a message for the catalogue without translating it here (click help texts, which
    are translated when the help is printed)."""
    return msgid


# how a list parameter of a message is joined (the parts of an estimate's detail)
LIST_SEPARATOR = {ENGLISH: "; ", CHINESE: "；"}


@dataclass(frozen=True)
class Msg:
    """A message not yet in a language: a core builds its sentences as ``Msg`` (``msg``,
    ``nmsg``, ``pmsg``) and each reader renders them in theirs; the English is
    ``msg.render("en")`` of the same template, never a second copy.

    ``params`` hold values (numbers stay numbers: the template's format spec, ``{p:.1f}``,
    formats them alike in every language), nested messages (rendered in the same language)
    and lists of either (joined with ``LIST_SEPARATOR``). ``other`` is the English plural
    form, chosen by ``params["n"]`` (``plural``); ``context`` a pgettext context.
    ``as_json`` / ``from_json``: ``{"id": ..., "params": {...}}`` (plus ``other`` /
    ``context`` where set), what an API puts beside its English text."""

    id: str
    params: Mapping[str, Any] = field(default_factory=dict)
    other: str | None = None
    context: str | None = None

    def render(self, lang: str | None = None) -> str:
        lang = lang or current.get()
        values = {k: _render_param(v, lang) for k, v in self.params.items()}
        if self.other is not None:
            return plural(self.id, self.other, values.get("n", 0), lang, **values)
        if self.context is not None:
            return pgettext(self.context, self.id, lang, **values)
        return translate(self.id, lang, **values)

    def __str__(self) -> str:
        return self.render(ENGLISH)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "params": {k: _param_json(v) for k, v in self.params.items()},
        }
        if self.other is not None:
            out["other"] = self.other
        if self.context is not None:
            out["context"] = self.context
        return out

    @classmethod
    def from_json(cls, data: Any) -> Msg:
        """The inverse of ``as_json``; ValueError naming what is wrong."""
        if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
            raise ValueError(f"a message is an object with a string 'id', not {data!r}")
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise ValueError(f"message {data['id']!r}: 'params' must be an object")
        other, context = data.get("other"), data.get("context")
        for name, v in (("other", other), ("context", context)):
            if v is not None and not isinstance(v, str):
                raise ValueError(f"message {data['id']!r}: {name!r} must be a string")
        return cls(data["id"], {k: _param_from_json(v) for k, v in params.items()}, other,
                   context)  # fmt: skip


def _render_param(v: Any, lang: str) -> Any:
    if isinstance(v, Msg):
        return v.render(lang)
    if isinstance(v, list | tuple):
        return LIST_SEPARATOR.get(lang, "; ").join(str(_render_param(x, lang)) for x in v)
    return v


def _param_json(v: Any) -> Any:
    if isinstance(v, Msg):
        return v.as_json()
    if isinstance(v, list | tuple):
        return [_param_json(x) for x in v]
    if type(v).__module__ == "numpy" and hasattr(v, "item"):
        return v.item()  # a numpy number: its Python value
    return v


def _param_from_json(v: Any) -> Any:
    if isinstance(v, Mapping):
        return Msg.from_json(v)
    if isinstance(v, list):
        return [_param_from_json(x) for x in v]
    return v


def msg(msgid: str, /, **params: Any) -> Msg:
    """A message to render later (marked for the catalogue like ``_``)."""
    return Msg(msgid, params)


def nmsg(one: str, other: str, n: float, /, **params: Any) -> Msg:
    """A plural message to render later: English ``one`` or ``other`` by ``n`` (``plural``)."""
    return Msg(one, {"n": n, **params}, other=other)


def pmsg(context: str, msgid: str, /, **params: Any) -> Msg:
    """A message with a context (``pgettext``) to render later."""
    return Msg(msgid, params, context=context)


def render(message: Any, lang: str | None = None) -> str:
    """A message in ``lang``: a ``Msg``, its JSON form, or plain text (shown as it is)."""
    if isinstance(message, Msg):
        return message.render(lang)
    if isinstance(message, Mapping):
        return Msg.from_json(message).render(lang)
    return "" if message is None else str(message)


def placeholders(text: str) -> set[str]:
    """The ``{name}`` fields of a message (the test checks both languages have the same)."""
    return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}


def normalize(tag: str) -> str | None:
    """A language tag or locale name -> a supported language, or None.

    ``zh``, ``zh-CN``, ``zh_CN.UTF-8``, ``zh-Hans``, ``zh-Hant-TW``... -> ``zh-CN``; ``en``,
    ``en-GB``, ``en_US.UTF-8`` -> ``en``; ``C``, ``POSIX``, ``fr`` -> None."""
    base = tag.strip().split(".")[0].split("@")[0].replace("_", "-").lower()
    primary = base.split("-")[0]
    if primary == "zh":
        return CHINESE
    if primary == "en":
        return ENGLISH
    return None


def negotiate(header: str | None) -> str | None:
    """The best supported language of an ``Accept-Language`` header (q-values honoured, ties
    in the header's order), or None when it names none we speak (``*`` included)."""
    if not header:
        return None
    choices: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        fields = part.strip().split(";")
        tag = fields[0].strip()
        q = 1.0
        for f in fields[1:]:
            k, _sep, v = f.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if not tag or q <= 0:
            continue
        lang = normalize(tag)
        if lang is not None:
            choices.append((-q, i, lang))
    return min(choices)[2] if choices else None


def from_locale(environ: Mapping[str, str]) -> str | None:
    """The language of the POSIX locale: the first set of LC_ALL, LC_MESSAGES, LANG."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(var, "")
        if value:
            return normalize(value)
    return None


def cli_language(environ: Mapping[str, str], configured: str | None = None) -> str:
    """The CLI's language: ``GPUFLEET_LANG``, then the config default, then the locale."""
    explicit = normalize(environ.get("GPUFLEET_LANG", "") or "")
    return explicit or configured or from_locale(environ) or ENGLISH


def width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def js_catalogue(lang: str) -> Mapping[str, str]:
    """The slice of the catalogue the pages' scripts use (their ``t("...")`` messages)."""
    return sections(lang)["js"]
