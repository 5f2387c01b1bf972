"""Alert state that survives a restart: the pending and firing alerts, what each message group
already announced, the history of state changes, silences and the rules admins edited on the
web. One SQLite file in the data dir (``alerts.sqlite3``), owned by the server process; small
and written at most once per evaluation tick, so it stays off the store's writer.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

from gpufleet.alerts.notify import Silence
from gpufleet.sidefile import open_sidefile

SCHEMA = [
    # version 1
    """
    CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS history (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, event TEXT NOT NULL,
        fingerprint TEXT NOT NULL, rule TEXT NOT NULL, host TEXT, severity TEXT,
        summary TEXT, alert TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS history_at ON history (at);
    CREATE INDEX IF NOT EXISTS history_rule ON history (rule, at);
    CREATE TABLE IF NOT EXISTS silences (id TEXT PRIMARY KEY, ends_at REAL NOT NULL,
        body TEXT NOT NULL, expired_early REAL);
    CREATE TABLE IF NOT EXISTS rules (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
        channel TEXT NOT NULL, title TEXT NOT NULL, ok INTEGER NOT NULL, error TEXT);
    """,
    # version 2: one row per pending/firing alert, written when it changes (not every tick)
    """
    CREATE TABLE IF NOT EXISTS active (fingerprint TEXT PRIMARY KEY, body TEXT NOT NULL);
    """,
]


class AlertDB:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db = open_sidefile(self.path, SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- state ------------------------------------------------------------------------------

    def save(self, events: list[dict[str, Any]], groups: dict[str, Any] | None) -> None:
        """New history, the alerts those events changed, and (when given) the dispatcher's
        groups, in one transaction. Only what changed is written."""
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                for e in events:
                    a = e["alert"]
                    if e["event"] in ("resolved", "dropped"):
                        db.execute("DELETE FROM active WHERE fingerprint = ?", (a["fingerprint"],))
                    else:
                        db.execute("INSERT OR REPLACE INTO active VALUES (?, ?)",
                                   (a["fingerprint"], json.dumps(a)))  # fmt: skip
                if groups is not None:
                    db.execute("INSERT OR REPLACE INTO state VALUES ('groups', ?)",
                               (json.dumps(groups),))  # fmt: skip
                db.executemany(
                    "INSERT INTO history (at, event, fingerprint, rule, host, severity, summary,"
                    " alert) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(e["at"], e["event"], e["alert"]["fingerprint"], e["alert"]["rule"],
                      e["alert"]["labels"].get("host"), e["alert"]["severity"],
                      e["alert"]["summary"], json.dumps(e["alert"])) for e in events
                     if e["event"] != "dropped"],
                )  # fmt: skip
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def load(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows = dict(self._q("SELECT key, value FROM state"))
        active = [json.loads(b) for (b,) in self._q("SELECT body FROM active")]
        if not active and "alerts" in rows:  # saved by version 1
            active = json.loads(rows["alerts"])
        return active, json.loads(rows.get("groups", "{}"))

    def history(self, *, since: float = 0.0, rule: str | None = None, host: str | None = None,
                text: str | None = None, limit: int = 200) -> list[dict[str, Any]]:  # fmt: skip
        sql = "SELECT at, event, alert FROM history WHERE at >= ?"
        args: list[Any] = [since]
        if rule:
            sql += " AND rule = ?"
            args.append(rule)
        if host:
            sql += " AND host = ?"
            args.append(host)
        if text:
            sql += " AND (summary LIKE ? OR rule LIKE ? OR host LIKE ?)"
            args += [f"%{text}%"] * 3
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [{"at": at, "event": ev, "alert": json.loads(a)}
                for at, ev, a in self._q(sql, tuple(args))]  # fmt: skip

    # -- silences ---------------------------------------------------------------------------

    def add_silence(self, s: Silence) -> Silence:
        s = s.model_copy(update={"id": s.id or uuid.uuid4().hex[:12]})
        self._q("INSERT OR REPLACE INTO silences (id, ends_at, body) VALUES (?, ?, ?)",
                (s.id, s.ends_at, s.model_dump_json()))  # fmt: skip
        return s

    def silences(self, *, include_expired: bool = False, now: float = 0.0) -> list[Silence]:
        rows = self._q("SELECT body FROM silences WHERE ends_at > ? ORDER BY ends_at",
                       (float("-inf") if include_expired else now,))  # fmt: skip
        return [Silence.model_validate_json(b) for (b,) in rows]

    def expire_silence(self, sid: str, now: float) -> Silence | None:
        rows = self._q("SELECT body FROM silences WHERE id = ?", (sid,))
        if not rows:
            return None
        s = Silence.model_validate_json(rows[0][0])
        if s.ends_at > now:
            s = s.model_copy(update={"ends_at": max(now, s.starts_at + 1e-3)})
            self._q("UPDATE silences SET ends_at = ?, body = ?, expired_early = ? WHERE id = ?",
                    (s.ends_at, s.model_dump_json(), now, sid))  # fmt: skip
        return s

    # -- rules edited on the web --------------------------------------------------------------

    def rule_edits(self) -> dict[str, dict[str, Any]]:
        return {n: json.loads(b) for n, b in self._q("SELECT name, body FROM rules")}

    def put_rule_edit(self, name: str, body: dict[str, Any]) -> None:
        self._q("INSERT OR REPLACE INTO rules VALUES (?, ?)", (name, json.dumps(body)))

    def delete_rule_edit(self, name: str) -> bool:
        had = bool(self._q("SELECT 1 FROM rules WHERE name = ?", (name,)))
        self._q("DELETE FROM rules WHERE name = ?", (name,))
        return had

    # -- messages sent ----------------------------------------------------------------------

    def log_message(self, at: float, channel: str, title: str, error: str | None) -> None:
        self._q("INSERT INTO messages (at, channel, title, ok, error) VALUES (?, ?, ?, ?, ?)",
                (at, channel, title, int(error is None), error))  # fmt: skip

    def messages(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._q("SELECT at, channel, title, ok, error FROM messages ORDER BY id DESC "
                       "LIMIT ?", (limit,))  # fmt: skip
        return [{"at": a, "channel": c, "title": t, "ok": bool(o), "error": e}
                for a, c, t, o, e in rows]  # fmt: skip
