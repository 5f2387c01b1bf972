"""The recommender's own past answers and their outcomes, kept across restarts: one SQLite
file in the data dir (``recommend.sqlite3``), owned by the server process, written at each
settling (``recommend.settle_seconds``) and at shutdown: what was answered or settled since
(small rows, off the store's writer and off the answer's path; a crash loses at most the
answers of the last settling interval). The ledgers of
``recommend.online`` are rebuilt from it at start; it holds at most what they keep.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path

from gpufleet.recommend.online import ChanceLedger, EtaLedger, Said
from gpufleet.sidefile import open_sidefile

DB_FILE = "recommend.sqlite3"

SCHEMA = [
    # version 1
    """
    CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, at REAL NOT NULL,
        host TEXT NOT NULL, gpus TEXT NOT NULL, hours REAL NOT NULL, p0 REAL NOT NULL,
        top INTEGER NOT NULL, follow_seconds REAL NOT NULL, outcome INTEGER,
        followed INTEGER NOT NULL DEFAULT 0, settled_at REAL);
    CREATE INDEX IF NOT EXISTS answers_at ON answers (at);
    CREATE TABLE IF NOT EXISTS etas (key TEXT PRIMARY KEY, at REAL NOT NULL,
        hours REAL NOT NULL, request TEXT NOT NULL, actual REAL);
    CREATE INDEX IF NOT EXISTS etas_at ON etas (at);
    """,
]


class OutcomeDB:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db = open_sidefile(self.path, SCHEMA, fsync_each_commit=False)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _many(self, sql: str, rows: list[tuple]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def save_answers(self, said: Iterable[Said]) -> None:
        """New answers and settled ones (a row per answer, replaced)."""
        self._many(
            "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(str(s.key), s.at, s.host, json.dumps(list(s.gpus)), s.hours, s.p0, int(s.top),
              s.follow_seconds, None if s.outcome is None else int(s.outcome), int(s.followed),
              s.settled_at) for s in said],
        )  # fmt: skip

    def save_eta(self, key: str, at: float, hours: float, request: str) -> None:
        self._many("INSERT OR REPLACE INTO etas VALUES (?, ?, ?, ?, NULL)",
                   [(key, at, hours, request)])  # fmt: skip

    def settle_etas(self, settled: Iterable[tuple[str, float]]) -> None:
        self._many("UPDATE etas SET actual = ? WHERE key = ?",
                   [(actual, key) for key, actual in settled])  # fmt: skip

    def trim(self, answers: int, etas: int) -> None:
        """Keep the latest ``answers`` answers and ``etas`` estimates."""
        with self._lock:
            self._db.execute("DELETE FROM answers WHERE key NOT IN (SELECT key FROM answers"
                             " ORDER BY at DESC, rowid DESC LIMIT ?)", (answers,))  # fmt: skip
            self._db.execute("DELETE FROM etas WHERE key NOT IN (SELECT key FROM etas"
                             " ORDER BY at DESC, rowid DESC LIMIT ?)", (etas,))  # fmt: skip

    def load(self, chance: ChanceLedger, eta: EtaLedger) -> dict[str, str]:
        """Fill the ledgers (oldest first); returns the waiting estimates' requests (JSON)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM answers ORDER BY at, rowid").fetchall()
            etas = self._db.execute("SELECT * FROM etas ORDER BY at, rowid").fetchall()
        for key, at, host, gpus, hours, p0, top, follow, outcome, followed, settled in rows:
            chance.record(Said(key, at, host, tuple(json.loads(gpus)), hours, p0, bool(top),
                               follow, None if outcome is None else bool(outcome),
                               bool(followed), settled))  # fmt: skip
        waiting = {}
        for key, at, hours, request, actual in etas:
            eta.record(key, at, hours)
            if actual is not None:
                eta.settle(key, at + actual * 3600)
            else:
                waiting[key] = request
        return {k: r for k, r in waiting.items() if k in eta.estimates}
