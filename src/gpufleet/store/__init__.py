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
    """Open a store from a path (DuckDB file) or a URL (``duckdb:///path``)."""
    text = str(url_or_path)
    if text.startswith("duckdb://"):
        text = text.removeprefix("duckdb://")
    if text.startswith(("postgresql://", "postgres://")):
        raise StoreError("the PostgreSQL backend is not available yet; use a DuckDB file")
    from gpufleet.store.duck import DuckDBStore

    return DuckDBStore(text)


__all__ = ["HostRecord", "IngestItem", "Store", "StoreError", "TokenRecord", "UserRecord", "open_store"]
