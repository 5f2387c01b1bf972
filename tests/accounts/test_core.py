"""Pure parts of the accounts: password KDF, roles, signed sessions, CSRF, login limiter."""

from __future__ import annotations

import pytest

from gpufleet.accounts.passwords import (
    ScryptParams,
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_password,
)
from gpufleet.accounts.ratelimit import LoginLimiter
from gpufleet.accounts.sessions import Session, SessionSigner, ensure_secret
from gpufleet.accounts.users import ROLES, check_user_name, has_role, new_user, role_rank

FAST = ScryptParams(n=2**10)  # the format and logic, without 100 ms a hash


def test_kdf_round_trip_and_wrong_password():
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$n=32768,r=8,p=1$")
    assert "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("", stored)
    assert not needs_rehash(stored)


def test_kdf_salted_and_self_describing():
    a, b = hash_password("same password", FAST), hash_password("same password", FAST)
    assert a != b  # a fresh salt each time
    assert a.startswith("scrypt$n=1024,r=8,p=1$")
    # Verifying reads the parameters from the hash, so older hashes keep working...
    assert verify_password("same password", a)
    # ...and are flagged for an upgrade at the next login.
    assert needs_rehash(a)


@pytest.mark.parametrize(
    "stored", ["", "plain", "bcrypt$x$y$z", "scrypt$n=x$aa$bb", "scrypt$n=1024,r=8$aa$bb"]
)
def test_kdf_bad_hash_never_verifies(stored):
    assert not verify_password("anything", stored)
    assert needs_rehash(stored)


def test_password_policy():
    with pytest.raises(ValueError, match="at least 8"):
        check_password_policy("short")
    with pytest.raises(ValueError, match="at most"):
        check_password_policy("x" * 2000)
    check_password_policy("long enough")
    assert not verify_password("x" * 2000, hash_password("x" * 8, FAST))


def test_roles_are_ordered():
    assert ROLES == ("viewer", "user", "admin")
    assert has_role("admin", "viewer") and has_role("admin", "admin")
    assert has_role("user", "viewer") and not has_role("user", "admin")
    assert has_role("viewer", "viewer") and not has_role("viewer", "user")
    assert not has_role("root", "viewer")
    with pytest.raises(ValueError, match="unknown role 'root'"):
        role_rank("root")


def test_user_names_and_new_user():
    check_user_name("alice.smith@lab")
    for bad in ("", "-x", "a b", "x" * 65, "a/b"):
        with pytest.raises(ValueError, match="invalid user name"):
            check_user_name(bad)
    u = new_user("alice", "a long password", "user", now=5.0)
    assert (u.name, u.role, u.created_at, u.last_login) == ("alice", "user", 5.0, None)
    assert verify_password("a long password", u.password_hash)
    with pytest.raises(ValueError, match="unknown role"):
        new_user("alice", "a long password", "owner")


def test_session_secret_file(tmp_path):
    secret = ensure_secret(tmp_path / "data")
    path = tmp_path / "data" / "session.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(secret) >= 32
    assert ensure_secret(tmp_path / "data") == secret  # made once, then reused


def test_signed_session_round_trip_tamper_expiry():
    signer = SessionSigner(b"k" * 32)
    s = Session.for_user("alice", "scrypt$hash", now=100.0, max_age=60)
    value = signer.dumps(s)
    assert signer.loads(value, now=120.0) == s
    assert signer.loads(value, now=160.0) is None  # expired
    body, sig = value.split(".")
    assert signer.loads(body + "." + sig[:-2] + "AA", now=120.0) is None  # wrong signature
    forged = value.replace(body, body[:-2] + "xx")
    assert signer.loads(forged, now=120.0) is None
    assert SessionSigner(b"o" * 32).loads(value, now=120.0) is None  # another server's secret
    for junk in (None, "", "a", "a.b.c", "!!.!!"):
        assert signer.loads(junk, now=120.0) is None


def test_csrf_token_bound_to_session():
    signer = SessionSigner(b"k" * 32)
    a = Session.anonymous(now=0.0, max_age=60)
    b = Session.anonymous(now=0.0, max_age=60)
    token = signer.csrf_token(a)
    assert signer.check_csrf(a, token)
    assert not signer.check_csrf(b, token)
    assert not signer.check_csrf(a, "")
    assert not signer.check_csrf(a, None)
    assert not signer.check_csrf(None, token)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_limiter_locks_after_n_failures_and_lifts_after_window():
    clock = FakeClock()
    lim = LoginLimiter(max_attempts=3, lockout_seconds=60, clock=clock)
    assert lim.failed("10.0.0.1", "alice") == 0
    assert lim.failed("10.0.0.1", "alice") == 0
    assert lim.retry_after("10.0.0.1", "alice") == 0
    assert lim.failed("10.0.0.1", "Alice") == 60  # names compare case-insensitively
    assert lim.retry_after("10.0.0.1", "alice") == 60
    # Only this pair: another address or another user is not locked.
    assert lim.retry_after("10.0.0.2", "alice") == 0
    assert lim.retry_after("10.0.0.1", "bob") == 0
    clock.t += 59
    assert lim.retry_after("10.0.0.1", "alice") == pytest.approx(1)
    clock.t += 1
    assert lim.retry_after("10.0.0.1", "alice") == 0
    # The count starts afresh after a lockout.
    assert lim.failed("10.0.0.1", "alice") == 0


def test_limiter_old_failures_age_out_and_success_resets():
    clock = FakeClock()
    lim = LoginLimiter(max_attempts=2, lockout_seconds=60, clock=clock)
    lim.failed("ip", "u")
    clock.t += 61
    assert lim.failed("ip", "u") == 0  # the first failure is outside the window
    lim.succeeded("ip", "u")
    assert lim.failed("ip", "u") == 0  # success cleared the count
    assert lim.failed("ip", "u") == 60
