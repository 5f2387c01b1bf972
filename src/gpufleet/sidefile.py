"""A capability's own SQLite file beside the store (alerts' state, the recommender's settled
answers): opened in WAL mode and brought to the newest schema version, one numbered script per
version (``PRAGMA user_version`` says which ran), each in its own transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path


def open_sidefile(
    path: Path | str, schema: Sequence[str], *, fsync_each_commit: bool = True
) -> sqlite3.Connection:
    """The connection (autocommit, shareable between threads under the caller's lock) with
    every schema script past the file's version run; ``":memory:"`` for a file that is not
    kept. Without ``fsync_each_commit`` a commit is durable at the next checkpoint (WAL's
    ``synchronous=NORMAL``: a power cut may lose the last commits, never corrupt the file)."""
    text = str(path)
    if text != ":memory:":
        Path(text).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(text, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    if not fsync_each_commit:
        db.execute("PRAGMA synchronous=NORMAL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for i, script in enumerate(schema[version:], start=version + 1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version={i}; COMMIT;")
    return db
