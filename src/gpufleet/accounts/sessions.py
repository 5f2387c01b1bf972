"""Sessions in signed cookies, and CSRF tokens bound to them. No session table: the cookie
carries the session, and an HMAC-SHA256 with the server's secret proves the server wrote it.

Cookie value: ``<payload, base64url JSON>.<HMAC-SHA256(secret, payload), base64url>`` with
payload ``{"u": user or null, "n": nonce, "pv": password fingerprint, "iat": t, "exp": t}``.

- Every visitor of the login page gets an anonymous session (``u`` null) so the login form
  can carry a CSRF token too; logging in rotates the nonce (no session fixation).
- ``pv`` is a short hash of the user's stored password hash: changing a password ends the
  user's other sessions. Deleting a user or lowering their role takes effect on the next
  request, since the role is looked up on every request, not taken from the cookie.
- Logging out deletes the cookie; a copied cookie stays valid until ``exp``
  (``web.session_max_age_seconds``), which is the trade-off of stateless sessions.
- CSRF token = HMAC(secret, "csrf:" + nonce): it differs per session, a page from another
  site cannot read it, and it needs no storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

SESSION_COOKIE = "gpufleet_session"
SECRET_FILE = "session.key"


def ensure_secret(data_dir: Path) -> bytes:
    """The signing secret in the data dir (created on first start, readable by its owner only)."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def password_fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Session:
    user: str | None
    nonce: str
    password_fp: str | None
    issued_at: float
    expires_at: float

    @classmethod
    def anonymous(cls, now: float, max_age: float) -> Session:
        return cls(None, secrets.token_urlsafe(16), None, now, now + max_age)

    @classmethod
    def for_user(cls, user: str, password_hash: str, now: float, max_age: float) -> Session:
        fp = password_fingerprint(password_hash)
        return cls(user, secrets.token_urlsafe(16), fp, now, now + max_age)


class SessionSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret is too short")
        self._secret = secret

    def _mac(self, purpose: str, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose.encode() + b"\0" + data, hashlib.sha256).digest()

    def dumps(self, s: Session) -> str:
        payload = {
            "u": s.user, "n": s.nonce, "pv": s.password_fp,
            "iat": round(s.issued_at, 3), "exp": round(s.expires_at, 3),
        }  # fmt: skip
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac('session', body.encode()))}"

    def loads(self, value: str | None, now: float) -> Session | None:
        """The session in a cookie value, or None when it is missing, forged or expired."""
        if not value or value.count(".") != 1 or len(value) > 4096:
            return None
        body, sig = value.split(".")
        try:
            if not hmac.compare_digest(_unb64(sig), self._mac("session", body.encode())):
                return None
            p = json.loads(_unb64(body))
            s = Session(p["u"], p["n"], p["pv"], float(p["iat"]), float(p["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if s.expires_at <= now or not isinstance(s.nonce, str):
            return None
        return s

    def csrf_token(self, s: Session) -> str:
        return _b64(self._mac("csrf", s.nonce.encode()))

    def check_csrf(self, s: Session | None, token: str | None) -> bool:
        if s is None or not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(s).encode())
