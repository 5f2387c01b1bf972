"""Deliver spooled batches to the server, oldest first, with back-off and jitter.

Outcome of one POST, and what the sender does:
- 2xx: acknowledged (stored or a duplicate of a stored batch) -> remove from the spool;
- 400/413/415/422: the server will never accept it -> move aside (``rejected/``), go on;
- 401/403: the token is wrong or revoked -> keep everything, retry slowly, log why;
- anything else (5xx, timeout, refused): keep it, back off (exponential, full jitter).
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import random
import threading
import urllib.parse
from collections.abc import Callable

from gpufleet.agent.spool import Spool

log = logging.getLogger(__name__)

PERMANENT = {400, 413, 415, 422}


class Backoff:
    def __init__(self, base: float = 1.0, cap: float = 60.0, rng: random.Random | None = None):
        self.base, self.cap, self.failures = base, cap, 0
        self.rng = rng or random.Random()

    def next_delay(self) -> float:
        self.failures += 1
        return self.rng.uniform(0, min(self.cap, self.base * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0


# What a keep-alive connection the server closed while idle raises on its next request.
STALE = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)


class Sender:
    def __init__(
        self,
        spool: Spool,
        server_url: str,
        token: str,
        *,
        timeout_seconds: float = 10.0,
        compress: bool = True,
        backoff: Backoff | None = None,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.spool = spool
        url = urllib.parse.urlsplit(server_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"server URL must look like http://host:port, got {server_url!r}")
        self.url = url
        self.path = url.path.rstrip("/") + "/api/v1/ingest"
        self.token = token
        self.timeout = timeout_seconds
        self.compress = compress
        self.backoff = backoff or Backoff()
        self.stop_event = threading.Event()
        self._sleep = sleep or self.stop_event.wait
        self._conn: http.client.HTTPConnection | None = None
        self._used = False  # the connection has carried a request (a stale one may be closed)
        self.sent = 0
        self.last_error: str | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self.url.scheme == "https"
                else http.client.HTTPConnection
            )
            self._conn = cls(self.url.hostname or "", self.url.port, timeout=self.timeout)
        return self._conn

    def post(self, payload: bytes) -> tuple[int, bytes]:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
        }
        if self.compress:
            payload = gzip.compress(payload, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        for attempt in (1, 2):
            reused = self._conn is not None and self._used
            conn = self._connection()
            try:
                conn.request("POST", self.path, body=payload, headers=headers)
                resp = conn.getresponse()
                status, body = resp.status, resp.read()
            except BaseException as exc:
                conn.close()
                self._conn, self._used = None, False
                if isinstance(exc, STALE) and reused and attempt == 1:
                    # The server closed this keep-alive connection while it was idle (its
                    # keep-alive timeout): not an outage, so no warning; send once more on a
                    # new connection (ingest is idempotent: the batch is stored once anyway).
                    continue
                raise
            self._used = True
            return status, body
        raise AssertionError("unreachable")  # pragma: no cover

    def send_one(self) -> bool | None:
        """Try the oldest batch. True: delivered/settled; False: failed; None: spool empty."""
        item = self.spool.oldest()
        if item is None:
            return None
        path, payload = item
        try:
            status, body = self.post(payload)
        except (OSError, http.client.HTTPException) as exc:
            self._fail(f"cannot reach {self.url.geturl()}: {exc}")
            return False
        if 200 <= status < 300:
            self.spool.ack(path)
            self.sent += 1
            if self.last_error:
                log.info("delivering again (%d batch(es) spooled)", len(self.spool))
            self.last_error = None
            self.backoff.reset()
            return True
        message = _error_message(body)
        if status in PERMANENT:
            self.spool.reject(path, f"HTTP {status}: {message}")
            return True
        if status in (401, 403):
            self._fail(f"the server refused the token (HTTP {status}: {message}); "
                       "check --token / GPUFLEET_TOKEN")  # fmt: skip
            return False
        self._fail(f"server answered HTTP {status}: {message}")
        return False

    def _fail(self, reason: str) -> None:
        if reason != self.last_error:
            log.warning("%s; %d batch(es) kept in the spool, retrying", reason, len(self.spool))
        self.last_error = reason

    def run(self) -> None:
        """Deliver until ``stop_event`` is set."""
        while not self.stop_event.is_set():
            result = self.send_one()
            if result is None:
                self.spool.changed.wait(1.0)
                self.spool.changed.clear()
            elif result is False:
                self._sleep(self.backoff.next_delay())

    def close(self) -> None:
        self.stop_event.set()
        if self._conn is not None:
            self._conn.close()


def _error_message(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
