"""SQL that is the same on every backend but for the parameter placeholder, a cast and a lock
clause: the read API's queries, users, and the small token writes."""

from __future__ import annotations

import uuid
from typing import Any

from gpufleet.store.base import SERIES_METRICS, SeriesPoints, StoreError, TokenRecord, UserRecord
from gpufleet.store.schema import RAW_TABLES


class SqlReads:
    """Mixed into a backend that has ``_read(sql, params) -> list[tuple]``."""

    PARAM = "?"  # the driver's placeholder
    NULL_KEY = "NULL"  # a typed NULL where the dialect needs one
    FLOAT = ""  # cast of an aggregate to a float, where the dialect needs one
    LOCK = ""  # row lock for read-then-update (several server processes on one database)

    def _read(self, sql: str, params: list | None = None) -> list[tuple]:
        raise NotImplementedError

    def write(self, fn: Any) -> Any:
        raise NotImplementedError

    def series(
        self, host: str, metric: str, since: float, until: float, max_points: int = 1000
    ) -> list[SeriesPoints]:
        if metric not in SERIES_METRICS:
            raise StoreError(f"unknown metric {metric!r}")
        table, column, _ = SERIES_METRICS[metric]
        key = "gpu_index" if table == "gpu_samples" else self.NULL_KEY
        step = max((until - since) / max(max_points, 1), 0.0)
        bucket = f"floor(ts / {step!r}) * {step!r}" if step >= 1 else "ts"
        p = self.PARAM
        rows = self._read(
            f"SELECT {key} AS k, {bucket} AS t, avg({column}){self.FLOAT} FROM {table}"
            f" WHERE host = {p} AND ts >= {p} AND ts <= {p} GROUP BY 1, 2 ORDER BY 1, 2",
            [host, since, until],
        )
        out: dict[Any, list[tuple[float, float | None]]] = {}
        for k, t, v in rows:
            out.setdefault(k, []).append((t, v))
        return [SeriesPoints(k, pts) for k, pts in out.items()]

    def tokens(self) -> list[TokenRecord]:
        rows = self._read(
            "SELECT id, name, secret_sha256, created_at, revoked_at FROM agent_tokens ORDER BY name"
        )
        return [TokenRecord(*r) for r in rows]

    def batch_keys_since(self, since: float) -> list[bytes]:
        """The keys (16 bytes) of the batches received since ``since``: what an ingest
        worker needs to know to answer a re-sent batch "duplicate"."""
        rows = self._read(f"SELECT id FROM batches WHERE received_at >= {self.PARAM}", [since])
        return [
            r[0].bytes if isinstance(r[0], uuid.UUID) else uuid.UUID(str(r[0])).bytes for r in rows
        ]

    def count(self, table: str) -> int:
        if table not in (*RAW_TABLES, "batches", "hosts", "agent_tokens"):
            raise StoreError(f"unknown table {table!r}")
        return int(self._read(f"SELECT count(*) FROM {table}")[0][0])

    def create_token(self, token: TokenRecord) -> None:
        p = self.PARAM

        def fn(con):
            if con.execute(f"SELECT 1 FROM agent_tokens WHERE name = {p}", [token.name]).fetchall():
                raise StoreError(f"a token named {token.name!r} already exists")
            con.execute(
                f"INSERT INTO agent_tokens VALUES ({p}, {p}, {p}, {p}, {p})",
                [token.id, token.name, token.secret_sha256, token.created_at, token.revoked_at],
            )

        self.write(fn)

    def revoke_token(self, name: str, at: float) -> TokenRecord:
        p = self.PARAM

        def fn(con):
            row = con.execute(
                "SELECT id, name, secret_sha256, created_at, revoked_at FROM agent_tokens"
                f" WHERE name = {p}{self.LOCK}",
                [name],
            ).fetchall()
            if not row:
                raise StoreError(f"no token named {name!r}")
            if row[0][4] is not None:
                raise StoreError(f"token {name!r} is already revoked")
            con.execute(f"UPDATE agent_tokens SET revoked_at = {p} WHERE name = {p}", [at, name])
            tid, tname, secret, created = row[0][:4]
            return TokenRecord(tid, tname, secret, created, revoked_at=at)

        return self.write(fn)

    _USER_COLUMNS = "name, password_hash, role, created_at, last_login"

    def users(self) -> list[UserRecord]:
        rows = self._read(f"SELECT {self._USER_COLUMNS} FROM users ORDER BY name")
        return [UserRecord(*r) for r in rows]

    def update_user(
        self,
        name: str,
        *,
        role: str | None = None,
        password_hash: str | None = None,
        last_login: float | None = None,
    ) -> UserRecord:
        changes = {"role": role, "password_hash": password_hash, "last_login": last_login}
        changes = {k: v for k, v in changes.items() if v is not None}
        p = self.PARAM

        def fn(con):
            if changes:
                sets = ", ".join(f"{k} = {p}" for k in changes)
                con.execute(f"UPDATE users SET {sets} WHERE name = {p}", [*changes.values(), name])
            row = con.execute(
                f"SELECT {self._USER_COLUMNS} FROM users WHERE name = {p}", [name]
            ).fetchall()
            if not row:
                raise StoreError(f"no user named {name!r}")
            return UserRecord(*row[0])

        return self.write(fn)
