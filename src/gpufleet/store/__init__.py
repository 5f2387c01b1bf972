"""The store: one narrow interface (``Store``), an embedded DuckDB backend by default."""

from __future__ import annotations

from pathlib import Path

from gpufleet.store.base import (
    HostRecord,
    IngestItem,
    Store,
    StoreError,
    TokenRecord,
    UserRecord,
)


def open_store(url_or_path: str | Path) -> Store:
    """Open a store from a path (DuckDB file) or a URL (``duckdb:///path``,
    ``postgresql://user@host/dbname``)."""
    text = str(url_or_path)
    if text.startswith("duckdb://"):
        text = text.removeprefix("duckdb://")
    if text.startswith(("postgresql://", "postgres://")):
        try:
            from gpufleet.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"the PostgreSQL backend needs psycopg ({exc});"
                " install it with: pip install 'gpufleet[postgres]'"
            ) from None
        return PostgresStore(text)
    from gpufleet.store.duck import DuckDBStore

    return DuckDBStore(text)


__all__ = [
    "HostRecord",
    "IngestItem",
    "Store",
    "StoreError",
    "TokenRecord",
    "UserRecord",
    "open_store",
]
