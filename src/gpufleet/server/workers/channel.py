"""The channel between the server and one ingest worker: a Unix stream socket pair.

Frames are ``<u8 kind><u32 length><payload>``. A ``CONN`` frame also carries one file
descriptor (``SCM_RIGHTS``): a client connection the server hands over, its payload the bytes
the server already read from it. The kernel attaches a descriptor to the first byte of the
``sendmsg`` that carried it, and frames arrive in order, so the receiver pairs descriptors
with ``CONN`` frames first come, first served.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

HELLO, CONN, TOKENS, TOKENS_OK, STATS, STOP, BYE, LOGGED, KEYS = range(1, 10)
_HEAD = struct.Struct("<BI")
_MAX_FDS = 64  # descriptors one recvmsg can take
_READ = 1 << 20


def frame(kind: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


class Channel:
    """One end of the channel on an event loop: frames in (``on_frame(kind, payload, fd)``,
    ``fd`` set for ``CONN``), frames out (queued while the socket is full). ``on_close`` is
    called once when the other end is gone."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        on_frame: Callable[[int, bytes, int | None], None],
        on_close: Callable[[], None],
    ) -> None:
        self.sock, self.loop = sock, loop
        self._on_frame, self._on_close = on_frame, on_close
        self._inbox = bytearray()
        self._fds: collections.deque[int] = collections.deque()
        # frames the socket did not take yet, each with the descriptor it carries (our dup)
        self._outbox: collections.deque[tuple[bytes, int | None]] = collections.deque()
        self._writing = False
        self.closed = False
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # room for a burst of new connections' first bytes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        loop.add_reader(sock.fileno(), self._readable)

    # -- out -----------------------------------------------------------------------------

    def send(self, kind: int, payload: bytes = b"") -> bool:
        """Queue one frame; False if the channel is closed."""
        return self._queue(frame(kind, payload), None)

    def send_conn(self, fd: int, payload: bytes) -> bool:
        """Hand a connection over (the caller may close its ``fd`` once this returns True);
        False if the channel is closed."""
        try:
            own = os.dup(fd)  # ours until the kernel has it, however long the socket is full
        except OSError:
            return False
        if not self._queue(frame(CONN, payload), own):
            os.close(own)
            return False
        return True

    def _queue(self, data: bytes, fd: int | None) -> bool:
        if self.closed:
            return False
        self._outbox.append((data, fd))
        if len(self._outbox) == 1:
            self._flush()
        return True

    def _flush(self) -> None:
        while self._outbox:
            data, fd = self._outbox[0]
            try:
                if fd is None:
                    sent = self.sock.send(data)
                else:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
                    sent = self.sock.sendmsg([data], anc)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._lost()
                return
            if sent and fd is not None:  # the descriptor went with the first byte
                os.close(fd)
                fd = None
            if sent < len(data):
                self._outbox[0] = (data[sent:], fd)
                if not self._writing:
                    self._writing = True
                    self.loop.add_writer(self.sock.fileno(), self._flush)
                return
            self._outbox.popleft()
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.sock.fileno())

    # -- in ------------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(_READ, socket.CMSG_SPACE(4 * _MAX_FDS))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancdata, flags = b"", [], 0
        for level, kind, blob in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(blob[: len(blob) - len(blob) % fds.itemsize])
                self._fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            log.error("ingest channel: descriptors were dropped (control data truncated)")
        if not data:
            self._lost()
            return
        self._inbox += data
        at = 0
        while len(self._inbox) - at >= _HEAD.size:
            kind, size = _HEAD.unpack_from(self._inbox, at)
            end = at + _HEAD.size + size
            if end > len(self._inbox):
                break
            payload = bytes(self._inbox[at + _HEAD.size : end])
            at = end
            fd = self._fds.popleft() if kind == CONN and self._fds else None
            try:
                self._on_frame(kind, payload, fd)
            except Exception:
                log.exception("ingest channel: handling a frame of kind %d failed", kind)
        del self._inbox[:at]

    # -- end -----------------------------------------------------------------------------

    def _lost(self) -> None:
        if self.closed:
            return
        self.close()
        self._on_close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        fileno = self.sock.fileno()
        if fileno >= 0:
            self.loop.remove_reader(fileno)
            self.loop.remove_writer(fileno)
        self.sock.close()
        while self._fds:  # handed over but never served
            os.close(self._fds.popleft())
        while self._outbox:
            _, fd = self._outbox.popleft()
            if fd is not None:
                os.close(fd)
