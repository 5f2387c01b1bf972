"""Login rate limiting: after ``max_attempts`` failed logins for one (client IP, user name)
within ``lockout_seconds``, that pair is locked out for ``lockout_seconds``; while locked, even
the right password is refused. A success clears the pair's failures. In memory, per server
process; the clock is injectable for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MAX_KEYS = 100_000  # pairs tracked at most; the oldest are forgotten first


class LoginLimiter:
    def __init__(
        self,
        max_attempts: int,
        lockout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_attempts = max_attempts
        self.lockout_seconds = lockout_seconds
        self.clock = clock
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._locked_until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(ip: str, user: str) -> tuple[str, str]:
        return ip, user.lower()

    def retry_after(self, ip: str, user: str) -> float:
        """Seconds until this pair may try again; 0 when it is not locked out."""
        key = self._key(ip, user)
        with self._lock:
            until = self._locked_until.get(key)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left <= 0:
                del self._locked_until[key]
                return 0.0
            return left

    def failed(self, ip: str, user: str) -> float:
        """Record a failure; returns the lockout it started (seconds) or 0."""
        key = self._key(ip, user)
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(key, []) if now - t < self.lockout_seconds]
            recent.append(now)
            self._failures.pop(key, None)  # re-insert: dict order is "least recently failed"
            locked = len(recent) >= self.max_attempts
            if locked:
                self._locked_until[key] = now + self.lockout_seconds
            else:
                self._failures[key] = recent
            self._forget_oldest()
            return self.lockout_seconds if locked else 0.0

    def succeeded(self, ip: str, user: str) -> None:
        key = self._key(ip, user)
        with self._lock:
            self._failures.pop(key, None)

    def _forget_oldest(self) -> None:
        for table in (self._failures, self._locked_until):
            while len(table) > MAX_KEYS:
                del table[next(iter(table))]
