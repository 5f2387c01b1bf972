"""Agent tokens and the local admin key.

An agent token looks like ``gft_<id>_<secret>``; only sha256(secret) is stored (the secret is
32 random bytes, so a fast hash is the right tool here; passwords get a slow KDF). The admin
key is a random file in the data dir, readable by its owner only: whoever can read the data
dir may administer this server from the same machine (``gpufleet token create``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from gpufleet.http.errors import ApiError
from gpufleet.store import Store, TokenRecord

TOKEN_PREFIX = "gft_"
ADMIN_KEY_FILE = "admin.key"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def new_token(name: str) -> tuple[str, TokenRecord]:
    """A fresh token (shown once) and the record that stores only its hash."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    record = TokenRecord(token_id, name, _sha256(secret), time.time(), None)
    return f"{TOKEN_PREFIX}{token_id}_{secret}", record


class TokenCache:
    """Token records by id, loaded from the store and kept in step by the admin API."""

    def __init__(self, store: Store | None) -> None:
        self._by_id = {t.id: t for t in store.tokens()} if store is not None else {}
        self.listeners: list[Callable[[], None]] = []  # called after each change

    @classmethod
    def of(cls, records: list[TokenRecord]) -> TokenCache:
        cache = cls(None)
        cache.replace(records)
        return cache

    def records(self) -> list[TokenRecord]:
        return list(self._by_id.values())

    def replace(self, records: list[TokenRecord]) -> None:
        self._by_id = {t.id: t for t in records}

    def put(self, record: TokenRecord) -> None:
        self._by_id[record.id] = record
        for listener in self.listeners:
            listener()

    def check(self, authorization: str | None) -> TokenRecord:
        """The token record for a ``Bearer`` header; 401 when missing/wrong, 403 when revoked."""
        if not authorization:
            raise ApiError(
                401,
                "unauthorized",
                "missing agent token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
            raise ApiError(
                401,
                "unauthorized",
                "malformed agent token: expected 'Bearer gft_...'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token_id, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
        record = self._by_id.get(token_id)
        if record is None or not hmac.compare_digest(record.secret_sha256, _sha256(secret)):
            raise ApiError(
                401, "unauthorized", "unknown agent token", headers={"WWW-Authenticate": "Bearer"}
            )
        if record.revoked_at is not None:
            raise ApiError(403, "token_revoked", f"agent token {record.name!r} has been revoked")
        return record


def ensure_admin_key(data_dir: Path) -> str:
    path = data_dir / ADMIN_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def check_admin(authorization: str | None, admin_key: str) -> None:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.encode(), admin_key.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "admin key required (the CLI reads it from the data dir)",
            headers={"WWW-Authenticate": "Bearer"},
        )
