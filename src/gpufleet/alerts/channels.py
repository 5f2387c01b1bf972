"""Sending messages through Apprise, with routing by severity and labels.

Each channel is an Apprise URL (``mailtos://``, ``slack://``, ``dingtalk://``, ``feishu://``,
``wecombot://``, ``tgram://``, ``json://`` ...) from the config or an environment variable.
The URL holds the secret (a token, a password), so only the channel's *name* is ever shown:
on pages, in the API and in logs (:func:`redact` for error text that might quote it).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from gpufleet.alerts.notify import Message

log = logging.getLogger(__name__)


@dataclass
class Channel:
    name: str
    url: str
    severities: tuple[str, ...]
    match: dict[str, str]

    def wants(self, msg: Message) -> bool:
        if msg.severity not in self.severities:
            return False
        labels = msg.labels()
        return all(k in labels and fnmatch.fnmatchcase(labels[k], p) for k, p in self.match.items())

    def public(self) -> dict[str, Any]:
        """What pages and the API show: never the URL."""
        scheme = self.url.split("://", 1)[0] if "://" in self.url else "?"
        return {"name": self.name, "kind": scheme, "severities": list(self.severities),
                "match": self.match}  # fmt: skip


def channels_from(config: list[Any], environ: dict[str, str] | None = None) -> tuple[
    list[Channel], list[str]
]:  # fmt: skip
    """Channels from the ``alerts.channels`` settings; an unusable one is reported, not fatal."""
    env = os.environ if environ is None else environ
    out, errors = [], []
    for i, c in enumerate(config):
        url = c.url if c.url is not None else env.get(c.url_env or "", "")
        if not url:
            errors.append(f"alerts.channels[{i}] {c.name!r}: url_env: ${c.url_env} is not set")
            continue
        if not _valid(url):
            errors.append(
                f"alerts.channels[{i}] {c.name!r}: url: Apprise does not know this URL "
                "(see https://github.com/caronc/apprise/wiki for the forms)"
            )
            continue
        out.append(Channel(c.name, url, tuple(c.severities), dict(c.match)))
    return out, errors


def _valid(url: str) -> bool:
    import apprise

    return apprise.Apprise().add(url)


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return re.sub(r"(\w+://)[^\s/]*@", r"\1***@", text)


def send(url: str, title: str, body: str, timeout_seconds: float = 15.0) -> None:
    """Send one message (blocking; run it in a thread). Raises ``RuntimeError`` on failure."""
    import apprise

    ap = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
    if not ap.add(url):
        raise RuntimeError("the channel URL is not one Apprise knows")
    with apprise.LogCapture(level=logging.WARNING) as captured:
        ok = ap.notify(title=title, body=body)
        details = captured.getvalue().strip() if not ok else ""
    if not ok:
        last = details.splitlines()[-1] if details else "no detail"
        raise RuntimeError(f"Apprise could not deliver: {redact(last, [url])}"[:500])


def notice_users(msg: Message) -> list[str]:
    """The Unix users a message's ``notify_user`` alerts are about (names safe in a URL)."""
    users = {u for a in msg.firing if a.notify_user
             for u in a.labels.get("user", "").split(",") if u}  # fmt: skip
    return sorted(u for u in users if re.fullmatch(r"[\w.-]+", u))


def user_url(template: str, user: str, email: str | None) -> str | None:
    """``alerts.user_notice_url`` with ``{user}`` and ``{email}`` filled in; None when it
    asks for an e-mail address the user mapping does not know."""
    if "{email}" in template:
        if not email:
            return None
        template = template.replace("{email}", quote(email, safe="@"))
    return template.replace("{user}", user)


def user_email(msg: Message, to: str, from_address: str, lang: str) -> EmailMessage:
    """A notice to one user as a plain-text e-mail (sent through the ``mail`` settings)."""
    mail = EmailMessage()
    mail["From"] = from_address
    mail["To"] = to
    mail["Subject"] = msg.title_in(lang)
    mail.set_content(msg.body(lang))
    return mail
