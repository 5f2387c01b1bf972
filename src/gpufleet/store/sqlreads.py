"""Reads that are the same SQL on every backend but for the parameter placeholder and a cast."""

from __future__ import annotations

from typing import Any

from gpufleet.store.base import SERIES_METRICS, SeriesPoints, StoreError, TokenRecord
from gpufleet.store.schema import RAW_TABLES


class SqlReads:
    """Mixed into a backend that has ``_read(sql, params) -> list[tuple]``."""

    PARAM = "?"  # the driver's placeholder
    NULL_KEY = "NULL"  # a typed NULL where the dialect needs one
    FLOAT = ""  # cast of an aggregate to a float, where the dialect needs one

    def _read(self, sql: str, params: list | None = None) -> list[tuple]:
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

    def count(self, table: str) -> int:
        if table not in (*RAW_TABLES, "batches", "hosts", "agent_tokens"):
            raise StoreError(f"unknown table {table!r}")
        return int(self._read(f"SELECT count(*) FROM {table}")[0][0])
