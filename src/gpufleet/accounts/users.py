"""Users and roles. Roles are ordered: viewer < user < admin; a role includes those below it.

- viewer: sees the dashboard and the read API (when ``web.require_login`` is on).
- user: also changes their own things (later: submit jobs, reservations).
- admin: also administers the fleet (agent tokens, hosts, users, settings).
"""

from __future__ import annotations

import re
import threading
import time

from gpufleet.accounts.passwords import check_password_policy, hash_password
from gpufleet.store import Store, UserRecord

ROLES = ("viewer", "user", "admin")
USER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


def role_rank(role: str) -> int:
    try:
        return ROLES.index(role)
    except ValueError:
        raise ValueError(f"unknown role {role!r}; one of: {', '.join(ROLES)}") from None


def has_role(role: str, needed: str) -> bool:
    """True when ``role`` is ``needed`` or above it."""
    return role in ROLES and role_rank(role) >= role_rank(needed)


def check_user_name(name: str) -> None:
    if not re.fullmatch(USER_NAME, name):
        raise ValueError(
            f"invalid user name {name!r}: use letters, digits, '.', '_', '@' and '-' (at most 64)"
        )


def new_user(name: str, password: str, role: str, now: float | None = None) -> UserRecord:
    """A validated record for a new user (raises ValueError with the reason)."""
    check_user_name(name)
    role_rank(role)
    check_password_policy(password)
    return UserRecord(
        name, hash_password(password), role, time.time() if now is None else now, None
    )


def user_view(u: UserRecord) -> dict:
    """A user as the API and the pages show it (never the hash)."""
    return {"name": u.name, "role": u.role, "created_at": u.created_at, "last_login": u.last_login}


class UserDirectory:
    """Users by name, loaded from the store and kept in step by every change made through it.

    The server reads it on every request with a session (role changes and deletions take effect
    at once); changes go to the store first, then here.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._by_name = {u.name: u for u in store.users()}

    def get(self, name: str) -> UserRecord | None:
        return self._by_name.get(name)

    def all(self) -> list[UserRecord]:
        return sorted(self._by_name.values(), key=lambda u: u.name)

    def _put(self, user: UserRecord) -> UserRecord:
        with self._lock:
            self._by_name[user.name] = user
        return user

    def create(self, user: UserRecord) -> UserRecord:
        self.store.create_user(user)
        return self._put(user)

    def update(
        self,
        name: str,
        *,
        role: str | None = None,
        password_hash: str | None = None,
        last_login: float | None = None,
    ) -> UserRecord:
        """Change the given fields (None: unchanged), as :meth:`Store.update_user`."""
        user = self.store.update_user(
            name, role=role, password_hash=password_hash, last_login=last_login
        )
        return self._put(user)

    def delete(self, name: str) -> None:
        self.store.delete_user(name)
        with self._lock:
            self._by_name.pop(name, None)

    def admins(self) -> list[str]:
        return [u.name for u in self._by_name.values() if u.role == "admin"]


__all__ = [
    "ROLES",
    "USER_NAME",
    "UserDirectory",
    "check_user_name",
    "has_role",
    "new_user",
    "role_rank",
    "user_view",
]
