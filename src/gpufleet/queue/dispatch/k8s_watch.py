"""List-then-watch of one resource kind in a thread (the official client is synchronous),
handing every object to the event loop. Resumes from the last ``resourceVersion`` when the
server ends a watch, lists again on 410 Gone, retries after a second when the server is away.

The watch is the client's own ``list_namespaced_*(watch=True, _preload_content=False)`` read
line by line here, not ``kubernetes.watch.Watch``: objects stay JSON (a newer server's extra
fields cannot trip the client's strict models), and an ``ERROR`` event is handled (``Watch``
with ``deserialize=False`` fails on one with ``KeyError: 'raw_object'``, so it never lists
again after a 410)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]
Deliver = Callable[[str, str, Obj], None]  # (kind, event type, object), on the event loop


def call_json(method: Callable[..., Any], *args: Any, timeout: float, **kw: Any) -> Any:
    """One API call with its JSON body parsed, not deserialised into the client's models."""
    response = method(*args, _preload_content=False, _request_timeout=timeout, **kw)
    data = response.data
    return json.loads(data) if data else {}


class ResourceWatch:
    """``lister`` (e.g. ``BatchV1Api.list_namespaced_job``) for ``namespace`` and
    ``selector``: every listed object as ADDED, then every ADDED/MODIFIED/DELETED event."""

    def __init__(
        self, kind: str, lister: Callable[..., Any], namespace: str, selector: str, *,
        deliver: Deliver, loop: asyncio.AbstractEventLoop, watch_timeout_seconds: int,
        request_timeout_seconds: float,
    ) -> None:  # fmt: skip
        self.kind, self.lister = kind, lister
        self.namespace, self.selector = namespace, selector
        self.deliver, self.loop = deliver, loop
        self.watch_timeout_seconds = watch_timeout_seconds
        self.request_timeout_seconds = request_timeout_seconds
        self._stopping = threading.Event()
        self._response: Any = None  # the watch being read (urllib3 response)
        self._thread = threading.Thread(target=self._run, name=f"k8s-watch-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:  # unblock a read in progress
            getattr(response, "shutdown", response.close)()
        await asyncio.to_thread(self._thread.join, self.request_timeout_seconds)

    def _post(self, type_: str, obj: Obj) -> None:
        self.loop.call_soon_threadsafe(self.deliver, self.kind, type_, obj)

    def _run(self) -> None:
        version: str | None = None
        while not self._stopping.is_set():
            try:
                if version is None:
                    listed = call_json(self.lister, self.namespace, label_selector=self.selector,
                                       timeout=self.request_timeout_seconds)  # fmt: skip
                    version = str(listed["metadata"]["resourceVersion"])
                    for obj in listed.get("items") or []:
                        self._post("ADDED", obj)
                version = self._watch_from(version)
            except _Gone:
                version = None  # too old: list again
            except ApiException as exc:
                log.warning("kubernetes: watch %s: %s %s", self.kind, exc.status, exc.reason)
                self._stopping.wait(1.0)
            except Exception as exc:  # the API server went away: retry
                if self._stopping.is_set():
                    break
                log.warning("kubernetes: watch %s: %s: %s", self.kind, type(exc).__name__, exc)
                self._stopping.wait(1.0)

    def _watch_from(self, version: str) -> str:
        """One watch request, read line by line until the server ends it; the last version."""
        response = self.lister(
            self.namespace, label_selector=self.selector, watch=True, resource_version=version,
            timeout_seconds=self.watch_timeout_seconds, allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=(self.request_timeout_seconds,
                              self.watch_timeout_seconds + self.request_timeout_seconds),
        )  # fmt: skip
        self._response = response
        try:
            for line in _lines(response):
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self._post(event["type"], obj)
                if self._stopping.is_set():
                    break
        finally:
            self._response = None
            response.release_conn()
        return version


class _Gone(Exception):
    """The watch's resourceVersion is older than the server keeps (410 Gone / Expired)."""


def _lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer
