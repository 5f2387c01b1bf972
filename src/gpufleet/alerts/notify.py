"""Who is told what, and when: silences, inhibition, grouping, group wait, repeat interval and
acknowledgement, as in Alertmanager. Pure: plain data in, :class:`Message` values out.

- A **silence** (label matchers with shell-style patterns, a start, an end and a reason) keeps
  matching alerts out of messages while it lasts; the alerts still show on the page.
- **Inhibition**: while a source alert fires (``host_down`` by default), alerts with the same
  ``host`` label are held back (its GPUs' and processes' alerts say nothing new).
- **Grouping**: alerts with the same values of their rule's ``group_by`` labels go out in one
  message (a host's 8 hot GPUs; a rack of hosts that went down: ``group_by: [rule, group]``).
  A new group waits ``group_wait`` for its siblings; a group that changed is sent again at most
  every ``group_interval``; a group still firing is re-sent every ``repeat_interval`` unless
  every alert in it was acknowledged.
- A **resolved** notice goes out only for an alert that was announced firing.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpufleet import i18n
from gpufleet.alerts.engine import Alert

LABEL_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Silence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""
    matchers: dict[str, Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        description="label -> shell-style pattern; every one must match (e.g. host: dgx-0*)"
    )
    starts_at: float
    ends_at: float
    reason: Annotated[str, Field(min_length=1, max_length=1000)]
    created_by: Annotated[str, Field(max_length=256)] = ""
    created_at: float = 0.0

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("give at least one matcher (label: pattern), e.g. host: dgx-03")
        for k in v:
            if not LABEL_RE.fullmatch(k):
                raise ValueError(f"{k!r} is not a label name (lower-case letters, digits, _)")
        return v

    def model_post_init(self, _context: Any) -> None:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: dict[str, str]) -> bool:
        return all(
            k in labels and fnmatch.fnmatchcase(labels[k], pattern)
            for k, pattern in self.matchers.items()
        )


class InhibitRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_rules: list[str] = Field(description="Rules whose firing alerts inhibit others.")
    target_rules: list[str] = Field(["*"], description="Rules held back (patterns).")
    equal: list[str] = Field(["host"], description="Labels source and target must share.")


DEFAULT_INHIBIT = [
    InhibitRule(source_rules=["host_down"], target_rules=["*"], equal=["host"]),
    InhibitRule(source_rules=["nvml_hung"], target_rules=["gpu_*", "ghost_memory", "xid_storm",
                "ecc_uncorrectable", "power_at_cap"], equal=["host"]),
]  # fmt: skip


@dataclass
class Timing:
    group_wait_seconds: float = 30.0
    group_interval_seconds: float = 300.0
    repeat_interval_seconds: float = 4 * 3600.0


@dataclass
class Message:
    group: dict[str, str]  # the group_by labels and their values
    firing: list[Alert]
    resolved: list[Alert]
    severity: str  # the most severe of the firing (or resolved) alerts
    at: float
    new: list[str] = field(default_factory=list)  # fingerprints announced for the first time

    @property
    def title(self) -> str:
        return self.title_in(i18n.ENGLISH)

    def title_in(self, lang: str) -> str:
        what = ", ".join(f"{k}={v}" for k, v in self.group.items())
        if self.firing:
            return i18n.translate("[{severity}] {n} firing: {what}", lang,
                                  severity=self.severity.upper(), n=len(self.firing), what=what)  # fmt: skip
        return i18n.translate("[RESOLVED] {what}", lang, what=what)

    def body(self, lang: str = i18n.ENGLISH) -> str:
        lines = []
        for a in self.firing:
            lines.append(
                i18n.translate("FIRING {summary}", lang, summary=_text(a, "summary", lang))
            )
            if a.runbook:
                lines.append(i18n.translate("  what to do: {runbook}", lang,
                                            runbook=_text(a, "runbook", lang)))  # fmt: skip
        for a in self.resolved:
            lines.append(
                i18n.translate("RESOLVED {summary}", lang, summary=_text(a, "summary", lang))
            )
        return "\n".join(lines)

    def labels(self) -> dict[str, str]:
        """Labels every alert of the message shares (for routing)."""
        alerts = self.firing or self.resolved
        common = dict(alerts[0].labels)
        for a in alerts[1:]:
            common = {k: v for k, v in common.items() if a.labels.get(k) == v}
        return common


def _text(a: Alert, what: str, lang: str) -> str:
    """An alert's summary or runbook in ``lang`` (a built-in rule's text), else as written."""
    message = getattr(a, f"{what}_i18n")
    if message and lang != i18n.ENGLISH:
        try:
            return i18n.Msg.from_json(message).render(lang)
        except (ValueError, KeyError, IndexError):  # a stored message this version cannot fill
            pass
    return str(getattr(a, what))


@dataclass
class _Group:
    labels: dict[str, str]
    created: float
    last_sent: float | None = None
    sent: set[str] = field(default_factory=set)  # fingerprints announced firing
    resolved: dict[str, Alert] = field(default_factory=dict)  # to announce


def _rank(sev: str) -> int:
    return {"critical": 0, "warning": 1, "info": 2}.get(sev, 3)


class Dispatcher:
    def __init__(self, timing: Timing | None = None,
                 inhibit: list[InhibitRule] | None = None) -> None:  # fmt: skip
        self.timing = timing or Timing()
        self.inhibit = DEFAULT_INHIBIT if inhibit is None else inhibit
        self.groups: dict[str, _Group] = {}
        self.group_by: dict[str, list[str]] = {}  # rule -> its group_by labels

    def _key(self, a: Alert) -> tuple[str, dict[str, str]]:
        by = self.group_by.get(a.rule, ["rule", "host"])
        labels = {k: a.labels.get(k, "") for k in by}
        return "\0".join(f"{k}={v}" for k, v in labels.items()), labels

    def muted(self, a: Alert, firing: list[Alert], silences: list[Silence], now: float) -> str:
        """Why ``a`` is kept out of messages: 'silenced', 'inhibited' or '' (not muted)."""
        if any(s.active(now) and s.matches(a.labels) for s in silences):
            return "silenced"
        for rule in self.inhibit:
            if a.rule in rule.source_rules:
                continue
            if not any(fnmatch.fnmatchcase(a.rule, p) for p in rule.target_rules):
                continue
            for src in firing:
                if src.rule in rule.source_rules and all(
                    k in a.labels and src.labels.get(k) == a.labels[k] for k in rule.equal
                ):
                    return "inhibited"
        return ""

    def resolved(self, a: Alert) -> None:
        """An alert resolved: its group announces it (if it was announced firing)."""
        key, _ = self._key(a)
        g = self.groups.get(key)
        if g is not None and a.fingerprint in g.sent:
            g.sent.discard(a.fingerprint)
            g.resolved[a.fingerprint] = a

    def flush(self, alerts: list[Alert], silences: list[Silence], now: float) -> list[Message]:
        """The messages due now. ``alerts``: the engine's pending and firing alerts."""
        t = self.timing
        firing = [a for a in alerts if a.state == "firing"]
        by_group: dict[str, list[Alert]] = {}
        for a in firing:
            if self.muted(a, firing, silences, now):
                continue
            key, labels = self._key(a)
            by_group.setdefault(key, []).append(a)
            if key not in self.groups:
                self.groups[key] = _Group(labels, now)
        out = []
        for key, g in list(self.groups.items()):
            members = by_group.get(key, [])
            new = [a for a in members if a.fingerprint not in g.sent]
            if g.last_sent is None:
                due = bool(new) and now - g.created >= t.group_wait_seconds
            else:
                since = now - g.last_sent
                changed = bool(new) or bool(g.resolved)
                unacked = any(a.acked_by is None for a in members)
                due = (changed and since >= t.group_interval_seconds) or (
                    bool(members) and unacked and since >= t.repeat_interval_seconds
                )
            if not due:
                if not members and not g.resolved and not g.sent:
                    del self.groups[key]  # nothing firing, nothing to say
                continue
            resolved = list(g.resolved.values())
            sev = min((a.severity for a in members or resolved), key=_rank)
            out.append(Message(dict(g.labels), sorted(members, key=_order), resolved, sev, now,
                               [a.fingerprint for a in new]))  # fmt: skip
            g.sent |= {a.fingerprint for a in members}
            g.resolved.clear()
            g.last_sent = now
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            key: {"labels": g.labels, "created": g.created, "last_sent": g.last_sent,
                  "sent": sorted(g.sent),
                  "resolved": [a.to_dict() for a in g.resolved.values()]}
            for key, g in self.groups.items()
        }  # fmt: skip

    def restore(self, data: dict[str, Any]) -> None:
        for key, d in data.items():
            resolved = {r["fingerprint"]: Alert.from_dict(r) for r in d.get("resolved", [])}
            self.groups[key] = _Group(d["labels"], d["created"], d["last_sent"], set(d["sent"]),
                                      resolved)  # fmt: skip


def _order(a: Alert) -> tuple[str, str]:
    return (a.labels.get("host", ""), a.labels.get("gpu", "").zfill(3))
