"""The alert engine: rules evaluated as data arrives, and each alert's life cycle.

Pure: no I/O, no clock of its own (every call takes ``now``). The service feeds it each host's
newest sample as it is stored (:meth:`AlertEngine.observe`: only that host's series are
evaluated, nothing is read back from the store) and calls :meth:`AlertEngine.tick` every few
seconds for what only the clock can tell (silence, held-back resolves, user and fleet sums).

Life cycle of one alert (one rule on one series, e.g. ``gpu_too_hot`` on ``dgx-03`` GPU 5)::

    (condition true) -> pending --for_seconds--> firing --(false for resolve_hold)--> resolved
                        pending --(false)--> dropped (never notified)

A firing alert whose condition clears is kept firing for ``resolve_hold_seconds``; if the
condition comes back in that time it is the same incident (``flaps`` counts it), so a flapping
metric does not page on every flap. Every state change is appended to ``events`` (history).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from gpufleet.alerts.metrics import Labels, Thresholds, labels_of, sample_series
from gpufleet.alerts.rules import Rule, render, render_message
from gpufleet.alerts.window import MetricPlan, Window, compile_plans
from gpufleet.wire import Sample, gpu_is_free

USER_METRICS = ("user_gpus_held", "user_gpus_held_idle")
CLOCK_METRICS = ("silent_seconds", "host_down", "agent_down")
FLEET_METRICS = ("fleet_hosts_silent_ratio", "fleet_gpus_free")


def fingerprint(rule: str, labels: dict[str, str]) -> str:
    text = rule + "\0" + "\0".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Alert:
    fingerprint: str
    rule: str
    labels: dict[str, str]
    severity: str
    state: str  # pending | firing | resolved
    active_since: float  # condition first true
    value: float | None
    summary: str
    runbook: str
    fired_at: float | None = None
    resolved_at: float | None = None
    clear_since: float | None = None  # firing, but the condition is false since then
    flaps: int = 0
    acked_by: str | None = None
    acked_at: float | None = None
    notify_user: bool = False
    series: dict[str, str] = field(default_factory=dict)  # the labels that identify the series
    # summary and runbook as messages each reader renders in their language (i18n.Msg JSON),
    # where they are a built-in rule's own text; None: show ``summary`` / ``runbook`` as is
    summary_i18n: dict[str, Any] | None = None
    runbook_i18n: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _set_texts(a: Alert, rule: Rule, value: float | None) -> None:
    a.summary = render(rule.summary, a.labels, value)
    a.runbook = render(rule.runbook, a.labels, value)
    summary, runbook = (render_message(t, a.labels, value) for t in (rule.summary, rule.runbook))
    a.summary_i18n = summary.as_json() if summary else None
    a.runbook_i18n = runbook.as_json() if runbook else None


@dataclass
class HostSeen:
    """What the server knows about a host's contact (for silence)."""

    name: str
    last_received: float
    interval_seconds: float
    reachable: bool | None = None  # a probe's (or the SSH poller's) answer; None: no probe
    group: str | None = None


@dataclass
class EngineConfig:
    offline_after_seconds: float = 60.0
    stale_after_intervals: float = 3.0
    resolve_hold_seconds: float = 120.0
    thresholds: Thresholds = field(default_factory=Thresholds)


class AlertEngine:
    def __init__(self, rules: Iterable[Rule], config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.rules: dict[str, Rule] = {}
        self.by_metric: dict[str, list[Rule]] = {}
        self.alerts: dict[str, Alert] = {}  # pending and firing, by fingerprint
        self.events: list[dict[str, Any]] = []  # state changes not yet taken by the service
        # series -> metric -> its windows, one per span of plan.spans (same order)
        self._windows: dict[Labels, dict[str, list[Window]]] = {}
        self._key_alerts: dict[Labels, int] = {}  # series -> its pending and firing alerts
        self._host_keys: dict[str, set[Labels]] = {}  # series the host's last sample had
        self._host_alerts: dict[str, set[str]] = {}  # host -> fingerprints
        self._user_share: dict[str, dict[str, tuple[int, int]]] = {}  # host -> user -> (held, idle)
        self._free_gpus: dict[str, int] = {}
        self._last_ts: dict[str, float] = {}
        self._unreachable_at: dict[str, float] = {}  # host -> when a probe last got no answer
        self._active: dict[tuple[str, Labels], str] = {}  # (rule, series) -> fingerprint
        self.evaluations = 0
        self.set_rules(rules)

    def set_rules(self, rules: Iterable[Rule]) -> None:
        self.rules = {r.name: r for r in rules if r.enabled}
        self.by_metric = {}
        for r in self.rules.values():
            self.by_metric.setdefault(r.metric, []).append(r)
        self._plan: dict[str, MetricPlan] = compile_plans(list(self.rules.values()))
        self.metrics = frozenset(self._plan)  # what samples are turned into (nothing else)
        self._users_wanted = any(m in self._plan for m in USER_METRICS + FLEET_METRICS)
        for fp in [fp for fp, a in getattr(self, "alerts", {}).items() if a.rule not in self.rules]:
            self._drop(fp)

    # -- input --------------------------------------------------------------------------

    def observe(
        self, sample: Sample, *, now: float, skew_seconds: float | None = None,
        group: str | None = None,
    ) -> None:  # fmt: skip
        """A host's newest sample arrived (``now``: server clock). Older samples (a spool
        catching up) are ignored: they say nothing about now."""
        host = sample.host
        if sample.ts < self._last_ts.get(host, float("-inf")):
            return
        self._last_ts[host] = sample.ts
        series = sample_series(
            sample,
            skew_seconds=skew_seconds,
            group=group,
            th=self.config.thresholds,
            wanted=self.metrics,
        )
        before = self._host_keys.get(host, set())
        self._host_keys[host] = set(series)
        for key, values in series.items():
            self._evaluate_series(key, values, now)
        for key in before - set(series):  # a process ended, a mount went: its alerts clear
            for fp in list(self._host_alerts.get(host, ())):
                a = self.alerts.get(fp)
                if a is not None and labels_of(**a.series) == key:
                    self._condition_false(a, now)
        if self._users_wanted:
            self._account_users(sample)

    def observe_poll(self, host: str, status: dict[str, Any], *, now: float,
                     group: str | None = None) -> None:  # fmt: skip
        """The SSH poller's status of an agent-less host (``ok``, ``kind``, ``reachable``)."""
        if status.get("last_poll") is None:
            return
        failed = not status.get("ok") and status.get("kind") not in (None, "partial")
        key = labels_of(host=host, group=group)
        self._evaluate_series(
            key, {"ssh_failed": float(failed)}, now,
            extra={"failure": str(status.get("kind") or "")} if failed else None,
        )  # fmt: skip

    def tick(self, now: float, hosts: Iterable[HostSeen]) -> None:
        """What the clock tells: silent hosts, held-back resolves, user and fleet sums."""
        cfg = self.config
        hosts = list(hosts)
        silent_stale = 0
        for h in hosts:
            silent = max(0.0, now - h.last_received)
            stale_after = max(cfg.stale_after_intervals * h.interval_seconds, 10.0)
            offline_after = max(cfg.offline_after_seconds, 2 * stale_after)
            silent_stale += silent > stale_after
            offline = silent > offline_after
            if h.reachable is False:
                self._unreachable_at[h.name] = now
            # a host that answers again after it did not (powered on, network back) is given
            # the stale time for its agent's first sample before "agent down" (else every
            # host back from a power cut pages once more, between its probe and its sample)
            back = now - self._unreachable_at.get(h.name, -math.inf) < stale_after
            values = {
                "silent_seconds": silent,
                "host_down": float(offline and h.reachable is not True),
                "agent_down": float(offline and h.reachable is True and not back),
            }
            self._evaluate_series(labels_of(host=h.name, group=h.group), values, now)
        users: dict[str, list[int]] = {}
        for shares in self._user_share.values():
            for user, (held, idle) in shares.items():
                u = users.setdefault(user, [0, 0])
                u[0] += held
                u[1] += idle
        for user, (held, idle) in users.items():
            self._evaluate_series(
                labels_of(user=user),
                {"user_gpus_held": float(held), "user_gpus_held_idle": float(idle)}, now,
            )  # fmt: skip
        for fp in [fp for fp, a in self.alerts.items() if a.labels.get("user") and
                   "host" not in a.labels and a.labels["user"] not in users]:  # fmt: skip
            self._condition_false(self.alerts[fp], now)
        fleet = {"fleet_gpus_free": float(sum(self._free_gpus.values()))}
        if hosts:
            fleet["fleet_hosts_silent_ratio"] = silent_stale / len(hosts)
        self._evaluate_series((), fleet, now)
        hold = cfg.resolve_hold_seconds
        for a in list(self.alerts.values()):
            if a.state == "firing" and a.clear_since is not None and now - a.clear_since >= hold:
                self._resolve(a, now)

    def forget_host(self, host: str, now: float) -> None:
        """A host removed from the fleet: its alerts resolve."""
        for fp in list(self._host_alerts.get(host, ())):
            a = self.alerts.get(fp)
            if a is not None:
                self._resolve(a, now) if a.state == "firing" else self._drop(fp)
        for d in (self._host_keys, self._user_share, self._free_gpus, self._last_ts):
            d.pop(host, None)
        for key in [k for k in self._windows if ("host", host) in k]:
            del self._windows[key]

    # -- evaluation ---------------------------------------------------------------------

    def _evaluate_series(
        self, key: Labels, values: dict[str, float], now: float,
        extra: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """The hot path: per metric, its compiled plan. A series without alerts whose value
        no plain rule can hold costs a few comparisons; windows are shared by the rules on
        the same metric and span; labels and text are made only when an alert is new."""
        plans = self._plan
        has_alerts = key in self._key_alerts
        series_windows = None
        for metric, raw in values.items():
            plan = plans.get(metric)
            if plan is None:
                continue
            if plan.plain and (has_alerts or not plan.quiet(raw)):
                self.evaluations += len(plan.plain)
                for name, holds, still, rule in plan.plain:
                    self._check(name, holds, still, rule, key, raw, now, extra)
            if plan.windowed:
                if series_windows is None:
                    series_windows = self._windows.setdefault(key, {})
                ws = series_windows.get(metric)
                if ws is None:
                    ws = series_windows[metric] = [Window(span) for span in plan.spans]
                for w in ws:
                    w.add(now, raw)
                for (i, kind), sub in plan.windowed.items():
                    value = ws[i].value(kind, now, raw)
                    if has_alerts or not sub.quiet(value):
                        self.evaluations += len(sub.plain)
                        for name, holds, still, rule in sub.plain:
                            self._check(name, holds, still, rule, key, value, now, extra)

    def _check(
        self, name: str, holds: Any, still: Any, rule: Rule, key: Labels, value: float,
        now: float, extra: dict[str, str] | None,
    ) -> None:  # fmt: skip
        fp = self._active.get((name, key))
        if holds(value) or (
            still is not None and fp is not None and still(value)
            and self.alerts[fp].state == "firing"
        ):  # fmt: skip
            if fp is None:
                labels = dict(key)
                if extra:
                    labels.update(extra)
                labels["rule"] = name
                labels.update(rule.labels)
                self._new_alert(rule, key, labels, value, now)
            else:
                self._condition_true(self.alerts[fp], rule, value, now)
        elif fp is not None:
            a = self.alerts[fp]
            a.value = value
            self._condition_false(a, now)

    def _new_alert(
        self, rule: Rule, key: Labels, labels: dict[str, str], value: float, now: float
    ) -> None:
        fp = fingerprint(rule.name, dict(key))
        a = Alert(
            fp, rule.name, labels, rule.severity, "pending", now, value,
            render(rule.summary, labels, value), render(rule.runbook, labels, value),
            notify_user=rule.notify_user, series=dict(key),
        )  # fmt: skip
        _set_texts(a, rule, value)
        self.alerts[fp] = a
        self._active[(rule.name, key)] = fp
        self._key_alerts[key] = self._key_alerts.get(key, 0) + 1
        if "host" in labels:
            self._host_alerts.setdefault(labels["host"], set()).add(fp)
        self._event(a, "pending", now)
        self._condition_true(a, rule, value, now)

    def _condition_true(self, a: Alert, rule: Rule, value: float, now: float) -> None:
        a.value = value
        if a.state == "firing" and a.clear_since is not None:
            a.clear_since = None
            a.flaps += 1
        if a.state == "pending" and now - a.active_since >= rule.for_seconds:
            a.state, a.fired_at = "firing", now
            _set_texts(a, rule, value)  # the value it fired with
            self._event(a, "firing", now)

    def _condition_false(self, a: Alert, now: float) -> None:
        if a.state == "pending":
            self._drop(a.fingerprint)
            self._event(a, "dropped", now)
        elif a.state == "firing" and a.clear_since is None:
            a.clear_since = now
            if self.config.resolve_hold_seconds <= 0:
                self._resolve(a, now)

    def _resolve(self, a: Alert, now: float) -> None:
        a.state, a.resolved_at = "resolved", now
        self._drop(a.fingerprint)
        self._event(a, "resolved", now)

    def _drop(self, fp: str) -> None:
        a = self.alerts.pop(fp, None)
        if a is None:
            return
        key = labels_of(**a.series)
        if self._active.pop((a.rule, key), None) is not None:
            n = self._key_alerts.pop(key, 0) - 1
            if n > 0:
                self._key_alerts[key] = n
        if "host" in a.labels:
            self._host_alerts.get(a.labels["host"], set()).discard(fp)

    def _event(self, a: Alert, what: str, now: float) -> None:
        self.events.append({"at": now, "event": what, "alert": a.to_dict()})

    def _account_users(self, sample: Sample) -> None:
        shares: dict[str, tuple[int, int]] = {}
        idle_below = self.config.thresholds.idle_util_percent
        for g in sample.gpus:
            users = {p.user for p in sample.processes if p.gpu_index == g.index and p.user}
            idle = g.utilization_gpu_percent is not None and g.utilization_gpu_percent < idle_below
            for u in users:
                held, n_idle = shares.get(u, (0, 0))
                shares[u] = (held + 1, n_idle + int(idle))
        self._user_share[sample.host] = shares
        self._free_gpus[sample.host] = sum(
            1 for g in sample.gpus if gpu_is_free(g, sample.processes)
        )

    # -- actions and persistence ---------------------------------------------------------

    def acknowledge(self, fp: str, who: str, now: float) -> Alert | None:
        a = self.alerts.get(fp)
        if a is None:
            return None
        a.acked_by, a.acked_at = who, now
        self._event(a, "acknowledged", now)
        return a

    def take_events(self) -> list[dict[str, Any]]:
        out, self.events = self.events, []
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.alerts.values()]

    def restore(self, alerts: Iterable[dict[str, Any]]) -> None:
        """Alerts saved by :meth:`snapshot` before a restart (rules since removed are left out)."""
        for d in alerts:
            a = Alert.from_dict(d)
            if a.rule not in self.rules:
                continue
            self.alerts[a.fingerprint] = a
            key = labels_of(**a.series)
            if (a.rule, key) not in self._active:
                self._key_alerts[key] = self._key_alerts.get(key, 0) + 1
            self._active[(a.rule, key)] = a.fingerprint
            if "host" in a.labels:
                self._host_alerts.setdefault(a.labels["host"], set()).add(a.fingerprint)
