"""The alert service inside the server: feeds the engine, runs the clock-driven checks, keeps
state in :class:`AlertDB` and sends messages. The only part of alerts that does I/O besides
the API routes.

Inputs, all already in memory (nothing is read back from the store):
- each host's newest sample, the moment live state learns it (``on_host``: a live-state
  listener, so agents' pushes, ingest workers' batches and SSH polls all come this way);
- the SSH poller's status (why an agent-less host gives no sample);
- an optional TCP probe of silent agent hosts (agent down vs host down).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from gpufleet.alerts.alertmanager import Forwarder
from gpufleet.alerts.channels import channels_from, notice_users, send, user_email, user_url
from gpufleet.alerts.engine import AlertEngine, EngineConfig, HostSeen
from gpufleet.alerts.metrics import Thresholds
from gpufleet.alerts.notify import Dispatcher, Message, Silence, Timing
from gpufleet.alerts.persist import AlertDB
from gpufleet.alerts.rules import Rule, assemble_rules, builtin_rules
from gpufleet.config import Settings

log = logging.getLogger(__name__)

DB_FILE = "alerts.sqlite3"
# the SSH poller's failure kinds that mean the machine itself does not answer
HOST_GONE = ("dns", "refused", "unreachable", "network", "timeout")
Sender = Callable[[str, str, str], None]  # (url, title, body); raises on failure
Mailer = Callable[[EmailMessage], None]  # hands an e-mail to the SMTP server; raises on failure


class AlertService:
    def __init__(
        self, settings: Settings, db: AlertDB, *, clock: Callable[[], float] = time.time,
        sender: Sender = send,
    ) -> None:  # fmt: skip
        self.settings = settings
        cfg = settings.alerts
        self.db = db
        self.clock = clock
        self.sender = sender
        self.engine = AlertEngine(
            [],
            EngineConfig(
                offline_after_seconds=settings.status.offline_after_seconds,
                stale_after_intervals=settings.status.stale_after_intervals,
                resolve_hold_seconds=cfg.resolve_hold_seconds,
                thresholds=Thresholds(idle_util_percent=cfg.idle_util_percent),
            ),
        )
        self.dispatcher = Dispatcher(
            Timing(cfg.group_wait_seconds, cfg.group_interval_seconds, cfg.repeat_interval_seconds)
        )
        self.rule_errors: list[str] = []
        self.reload_rules()
        alerts, groups = db.load()
        self.engine.restore(alerts)
        self.dispatcher.restore(groups)
        self.channels, self.channel_errors = channels_from(cfg.channels)
        for err in self.rule_errors + self.channel_errors:
            log.error("alerts: %s (left out; the server runs on)", err)
        self.reachable: dict[str, bool | None] = {}
        self.poll_status: Callable[[], dict[str, dict[str, Any]]] = dict
        # the user mapping's e-mail addresses ({Unix user: address}) and the SMTP sender, for
        # notices to users when no alerts.user_notice_url is set (the server sets both)
        self.user_addresses: Callable[[], dict[str, str]] = dict
        self.mailer: Mailer | None = None
        self._lock = threading.Lock()
        # samples from the live state, taken without the lock (an append): the ingest path
        # never waits for a tick that holds the lock while it evaluates; the next holder of
        # the lock hands them to the engine first, in arrival order
        self._inbox: collections.deque[tuple[Any, float, float | None, str | None]] = (
            collections.deque()
        )
        self.busy_seconds = 0.0  # CPU time spent evaluating (thread time)
        self.observed = 0
        # the live stream's publish (web/stream.py): ``alerts`` events when badges change
        self.publish: Callable[[str, Any], None] | None = None
        self._published: str | None = None
        self.forwarder = Forwarder(cfg.alertmanager_url) if cfg.alertmanager_url else None
        self._changed = True  # something /alerts shows may differ from what was published
        self._muting: tuple[str, ...] = ()

    # -- rules ----------------------------------------------------------------------------

    def reload_rules(self) -> None:
        cfg = self.settings.alerts
        builtin = {r.name for r in builtin_rules()}
        edits = self.db.rule_edits()
        overrides = {n: dict(b) for n, b in cfg.builtin.items()}
        for n, b in edits.items():  # a web edit changes fields on top of the config's
            if n in builtin:
                overrides[n] = {**overrides.get(n, {}), **b}
        custom = {r.get("name"): r for r in cfg.rules if isinstance(r, dict)}
        custom.update({n: b for n, b in edits.items() if n not in builtin})
        unnamed = [r for r in cfg.rules if not isinstance(r, dict) or "name" not in r]
        rules, self.rule_errors = assemble_rules(overrides, list(custom.values()) + unnamed)
        self.all_rules: list[Rule] = rules
        self.engine.set_rules(rules)
        self.dispatcher.group_by = {r.name: r.group_by for r in rules}

    # -- inputs ---------------------------------------------------------------------------

    def group_of(self, host: str) -> str | None:
        return self.settings.hosts.group_of(host)

    def on_host(self, state: Any) -> None:
        """Live-state listener: a host's newest sample (``HostState``). Never waits for the
        lock: the sample is queued and handed to the engine by the next holder of the lock."""
        self._inbox.append((state.sample, self.clock(), state.clock_skew_seconds,
                            self.group_of(state.name)))  # fmt: skip

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The engine's lock, with the samples received meanwhile handed to the engine."""
        with self._lock:
            if self._inbox:
                t0 = time.thread_time()
                inbox = self._inbox
                while inbox:
                    sample, now, skew, group = inbox.popleft()
                    self.engine.observe(sample, now=now, skew_seconds=skew, group=group)
                    self.observed += 1
                self.busy_seconds += time.thread_time() - t0
            yield

    def _flush(self) -> None:
        """Evaluate the samples observed since the last tick (the lock held): the engine's
        time, wherever it is spent (a page read between ticks pays for the queue)."""
        t0 = time.thread_time()
        self.engine.flush()
        self.busy_seconds += time.thread_time() - t0

    def stats(self) -> dict[str, Any]:
        """The engine's own CPU time and work (what is queued evaluated and counted first)."""
        with self._locked():
            self._flush()
            return {"samples_observed": self.observed, "busy_seconds": round(self.busy_seconds, 6),
                    "rules": len(self.engine.rules),
                    "rule_evaluations": self.engine.evaluations}  # fmt: skip

    async def probe(self, hosts: list[HostSeen]) -> None:
        """TCP-connect to each silent agent host's probe port (when configured)."""
        port = self.settings.alerts.probe_port
        if port is None:
            return
        timeout = self.settings.alerts.probe_timeout_seconds

        async def one(name: str) -> None:
            try:
                _r, w = await asyncio.wait_for(asyncio.open_connection(name, port), timeout)
                w.close()
                self.reachable[name] = True
            except (OSError, TimeoutError):
                self.reachable[name] = False

        await asyncio.gather(*(one(h.name) for h in hosts))

    # -- the clock ------------------------------------------------------------------------

    def tick(self, hosts: list[HostSeen]) -> list[Message]:
        """The clock-driven checks; returns the messages to send (state is saved)."""
        t0 = time.thread_time()
        now = self.clock()
        with self._locked():
            for name, st in self.poll_status().items():
                self.engine.observe_poll(name, st, now=now, group=self.group_of(name))
            for h in hosts:
                h.group = self.group_of(h.name)
                if h.reachable is None:
                    h.reachable = self.reachable.get(h.name)
            self.engine.tick(now, hosts)
            events = self.engine.take_events()
            for e in events:
                if e["event"] == "resolved":
                    from gpufleet.alerts.engine import Alert

                    resolved = Alert.from_dict(e["alert"])
                    self.dispatcher.resolved(resolved)
                    if self.forwarder is not None:
                        self.forwarder.note_resolved(resolved)
            silences = self.silences(now)
            messages = self.dispatcher.flush(list(self.engine.alerts.values()), silences, now)
            muting = tuple(sorted(str(s.id) for s in silences))
            if events or muting != self._muting:
                self._muting, self._changed = muting, True
            changed_groups = bool(messages) or any(e["event"] == "resolved" for e in events)
            groups = self.dispatcher.snapshot() if changed_groups else None
        if events or groups is not None:
            self.db.save(events, groups)
        self.busy_seconds += time.thread_time() - t0
        return messages

    def forward(self) -> None:
        """Tell the Alertmanager (if one is configured) what fires and what resolved."""
        if self.forwarder is None:
            return
        with self._locked():
            self._flush()
            firing = [a for a in self.engine.alerts.values() if a.state == "firing"]
        self.forwarder.send(firing, self.clock())

    def deliver(self, messages: list[Message]) -> None:
        """Send messages to the channels that want them (blocking: run in a thread).

        Notices to a user (``notify_user`` alerts: held-but-idle GPUs) go to
        ``alerts.user_notice_url`` when it is set, else to the user's e-mail address in the
        user mapping through the ``mail`` settings; a user with neither is not told."""
        template = self.settings.alerts.user_notice_url
        lang = self.settings.ui.language  # the channels' language (docs/i18n.md)
        for msg in messages:
            targets: list[tuple[str, str]] = [
                (c.name, c.url) for c in self.channels if c.wants(msg)
            ]
            mails: list[tuple[str, str]] = []
            users = notice_users(msg)
            addresses = self._addresses() if users else {}
            for u in users:
                if template:
                    url = user_url(template, u, addresses.get(u))
                    if url is None:
                        log.info(
                            "alerts: no e-mail address for %s in the user mapping: not told", u
                        )
                    else:
                        targets.append((f"user:{u}", url))
                elif u in addresses and self.mailer is not None:
                    mails.append((f"user:{u}", addresses[u]))
            title, body = msg.title_in(lang), msg.body(lang)
            for name, url in targets:
                send = functools.partial(self.sender, url, title, body)
                self._send(msg.at, name, title, send, (url,))
            if self.mailer is not None:
                sender = self.settings.mail.from_address
                for name, to in mails:
                    mail = user_email(msg, to, sender, lang)
                    self._send(msg.at, name, title, functools.partial(self.mailer, mail))

    def _addresses(self) -> dict[str, str]:
        try:
            return self.user_addresses()
        except Exception as exc:  # the store is down: users are not told, channels still are
            log.warning("alerts: cannot read the user mapping's e-mail addresses: %s", exc)
            return {}

    def _send(
        self,
        at: float,
        name: str,
        title: str,
        send: Callable[[], None],
        secrets: tuple[str, ...] = (),
    ) -> None:
        """One delivery, logged on the message list whether it worked or not."""
        error = None
        try:
            send()
        except Exception as exc:  # one channel failing never stops the others
            error = f"{type(exc).__name__}: {exc}"
            for secret in secrets:
                error = error.replace(secret, "***")
            error = error[:500]
            log.warning("alerts: channel %s: %s", name, error)
        self.db.log_message(at, name, title, error)

    # -- actions --------------------------------------------------------------------------

    def silences(self, now: float) -> list[Silence]:
        return self.db.silences(now=now)

    def acknowledge(self, fp: str, who: str) -> dict[str, Any] | None:
        with self._locked():
            self._flush()
            a = self.engine.acknowledge(fp, who, self.clock())
            if a is None:
                return None
            self._changed = True
        return a.to_dict()  # the next tick saves it with the other changes

    def view(self, now: float) -> dict[str, Any]:
        """What the /alerts page and ``GET /api/v1/alerts`` show."""
        with self._locked():
            self._flush()
            alerts = list(self.engine.alerts.values())
        firing_all = [a for a in alerts if a.state == "firing"]
        silences = self.silences(now)
        rows = []
        for a in sorted(alerts, key=lambda a: (a.state != "firing", a.severity, a.rule)):
            d = a.to_dict()
            d["muted"] = self.dispatcher.muted(a, firing_all, silences, now) or None
            rows.append(d)
        counts = {"firing": 0, "pending": 0, "silenced": 0, "inhibited": 0}
        for d in rows:
            counts[d["state"]] += 1
            if d["muted"]:
                counts[d["muted"]] += 1
        return {"now": now, "counts": counts, "alerts": rows,
                "rule_errors": self.rule_errors, "channel_errors": self.channel_errors}  # fmt: skip

    def badges(self, now: float | None = None) -> dict[str, Any]:
        """Firing, not muted alerts counted by severity, for the fleet and per host (the
        ``alerts`` event of the live stream); ``version`` changes whenever /alerts would."""
        v = self.view(self.clock() if now is None else now)
        zero = {"critical": 0, "warning": 0, "info": 0}
        fleet = dict(zero)
        hosts: dict[str, dict[str, int]] = {}
        digest = hashlib.sha1()
        for d in v["alerts"]:
            digest.update(f"{d['fingerprint']}{d['state']}{d['muted']}{d['acked_by']}".encode())
            if d["state"] != "firing" or d["muted"]:
                continue
            fleet[d["severity"]] += 1
            host = d["labels"].get("host")
            if host:
                hosts.setdefault(host, dict(zero))[d["severity"]] += 1
        return {"now": v["now"], "firing": fleet, "hosts": hosts, "counts": v["counts"],
                "version": digest.hexdigest()[:16]}  # fmt: skip

    def announce(self) -> None:
        """Publish the badges on the live stream if anything /alerts shows has changed."""
        if self.publish is None or not self._changed:
            return
        t0 = time.thread_time()
        self._changed = False
        b = self.badges()
        self.busy_seconds += time.thread_time() - t0
        if b["version"] != self._published:
            self._published = b["version"]
            self.publish("alerts", b)


def open_service(settings: Settings, data_dir: Path | None = None) -> AlertService:
    db = AlertDB((data_dir or settings.server.data_dir) / DB_FILE)
    return AlertService(settings, db)


async def run_forever(service: AlertService, ctx: Any) -> None:
    """Every ``evaluate_interval_seconds``: probe silent hosts, tick, send (in a thread)."""
    interval = service.settings.alerts.evaluate_interval_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            hosts = [
                HostSeen(st.name, st.last_received, st.interval_seconds)
                for st in list(ctx.live.hosts.values())
            ]
            polled = service.poll_status()
            for h in hosts:
                if h.name in polled:  # agent-less: the poller says whether it got in
                    st = polled[h.name]
                    if st.get("last_poll") is not None:
                        h.reachable = bool(st.get("ok")) or st.get("kind") not in HOST_GONE
            now = service.clock()
            offline = service.settings.status.offline_after_seconds
            await service.probe(
                [h for h in hosts if h.name not in polled and now - h.last_received > offline]
            )
            messages = await asyncio.to_thread(service.tick, hosts)
            service.announce()
            if service.forwarder is not None:
                await asyncio.to_thread(service.forward)
            if messages:
                await asyncio.to_thread(service.deliver, messages)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("alerts: evaluation failed; will try again")
