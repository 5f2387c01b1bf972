"""Forwarding alerts to an existing Prometheus Alertmanager through its v2 API.

gpufleet keeps its own life cycle, channels and history; an Alertmanager, when
``alerts.alertmanager_url`` names one, is told about every firing alert (re-sent every
``RESEND_SECONDS`` as Alertmanager expects of its clients, so it does not time them out) and
about each resolve once, with ``endsAt``. Labels: ``alertname`` (the rule), ``severity``
and the alert's own labels; annotations: ``summary`` and ``runbook``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gpufleet.alerts.engine import Alert

log = logging.getLogger(__name__)
RESEND_SECONDS = 60.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def postable(alert: Alert, *, ends_at: float | None = None, source: str = "") -> dict[str, Any]:
    """One alert in the v2 API's ``postableAlert`` form."""
    labels = {k: str(v) for k, v in alert.labels.items() if k != "rule" and v != ""}
    labels["alertname"] = alert.rule
    labels["severity"] = alert.severity
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": alert.summary, "runbook": alert.runbook},
        "startsAt": _iso(alert.fired_at or alert.active_since),
    }
    if ends_at is not None:
        out["endsAt"] = _iso(ends_at)
    if source:
        out["generatorURL"] = source
    return out


def redacted(url: str) -> str:
    """The URL without user and password (for logs and errors)."""
    p = urlsplit(url)
    host = p.hostname or ""
    netloc = f"{host}:{p.port}" if p.port else host
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


class Forwarder:
    """What to tell the Alertmanager next; :meth:`send` posts it (blocking: run in a thread)."""

    def __init__(self, url: str, *, timeout_seconds: float = 10.0, source: str = "") -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.timeout_seconds = timeout_seconds
        self.source = source
        self.resolved: list[dict[str, Any]] = []  # told once, then dropped
        self.last_sent = float("-inf")
        self.last_firing: set[str] = set()
        self.errors = 0

    def note_resolved(self, alert: Alert) -> None:
        if alert.fired_at is not None:  # a pending alert was never told
            self.resolved.append(
                postable(alert, ends_at=alert.resolved_at or alert.fired_at, source=self.source)
            )

    def due(self, firing: list[Alert], now: float) -> list[dict[str, Any]] | None:
        """The payload to post now, or None when nothing changed and no re-send is due."""
        fps = {a.fingerprint for a in firing}
        if not self.resolved and fps == self.last_firing and now - self.last_sent < RESEND_SECONDS:
            return None
        payload = [postable(a, source=self.source) for a in firing] + self.resolved
        return payload

    def send(self, firing: list[Alert], now: float) -> bool:
        payload = self.due(firing, now)
        if payload is None:
            return True
        import httpx

        try:
            r = httpx.post(self.url, json=payload, timeout=self.timeout_seconds)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            self.errors += 1
            reason = str(exc).replace(self.url, redacted(self.url))
            log.warning("alerts: Alertmanager %s: %s", redacted(self.url), reason[:300])
            return False
        self.resolved = []
        self.last_sent = now
        self.last_firing = {a.fingerprint for a in firing}
        return True
