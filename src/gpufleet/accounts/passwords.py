"""Password hashing with scrypt (``hashlib.scrypt``, RFC 7914), pure and dependency-free.

Parameters: N = 2**15, r = 8, p = 1 (about 32 MiB of memory and ~50-100 ms of one core per
hash), a 16-byte random salt per password, a 32-byte key. These are the OWASP
password-storage minimum for scrypt. A stored hash names its own parameters::

    scrypt$n=32768,r=8,p=1$<salt, base64url>$<key, base64url>

so parameters can be raised later: old hashes keep verifying, and ``needs_rehash`` says when a
hash should be replaced at the next successful login. The password itself is never stored.
Agent tokens are different: they are 32 random bytes, so a plain SHA-256 suffices there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

ALGORITHM = "scrypt"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # a KDF over megabytes of "password" is a denial of service


@dataclass(frozen=True)
class ScryptParams:
    n: int = 2**15
    r: int = 8
    p: int = 1
    salt_bytes: int = 16
    key_bytes: int = 32

    @property
    def maxmem(self) -> int:
        # scrypt needs 128 * r * N * p bytes; OpenSSL's default cap (32 MiB) is exactly that
        # for the defaults, which is not enough with its own overhead.
        return 2 * 128 * self.r * self.n * self.p + 2**20


DEFAULT_PARAMS = ScryptParams()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, params: ScryptParams, key_bytes: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=params.n, r=params.r, p=params.p,
        maxmem=params.maxmem, dklen=key_bytes,
    )  # fmt: skip


def check_password_policy(password: str) -> None:
    """Raise ValueError with a readable reason when a new password is not acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")


def hash_password(password: str, params: ScryptParams = DEFAULT_PARAMS) -> str:
    salt = secrets.token_bytes(params.salt_bytes)
    key = _derive(password, salt, params, params.key_bytes)
    return f"{ALGORITHM}$n={params.n},r={params.r},p={params.p}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    try:
        algorithm, settings, salt, key = stored.split("$")
        if algorithm != ALGORITHM:
            raise ValueError(algorithm)
        values = dict(item.split("=", 1) for item in settings.split(","))
        params = ScryptParams(n=int(values["n"]), r=int(values["r"]), p=int(values["p"]))
        return params, _unb64(salt), _unb64(key)
    except (ValueError, KeyError) as exc:
        raise ValueError("not a gpufleet password hash") from exc


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; False for a wrong password or a bad hash."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    try:
        params, salt, key = _parse(stored)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(password, salt, params, len(key)), key)


def needs_rehash(stored: str, params: ScryptParams = DEFAULT_PARAMS) -> bool:
    try:
        old, _, _ = _parse(stored)
    except ValueError:
        return True
    return (old.n, old.r, old.p) != (params.n, params.r, params.p)


# Verified against when the user name is unknown, so that a wrong name takes as long as a wrong
# password and response times do not tell which names exist.
_DUMMY_HASH: str | None = None


def dummy_verify(password: str) -> bool:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
    verify_password(password, _DUMMY_HASH)
    return False
