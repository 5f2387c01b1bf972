"""A keep-alive connection the server closed while idle is not an outage: the sender sends
again on a new connection, without a warning (no "Broken pipe" noise)."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gpufleet.agent.push import Sender
from gpufleet.agent.spool import Spool


class _ClosesAfterEachAnswer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive as far as the client can tell

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.hits += 1  # type: ignore[attr-defined]
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True  # then drop it without saying so, as an idle timeout does

    def log_message(self, *args) -> None:
        pass


def test_a_connection_closed_while_idle_is_reopened_quietly(tmp_path, caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ClosesAfterEachAnswer)
    server.hits = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spool = Spool(tmp_path / "spool")
    sender = Sender(spool, f"http://127.0.0.1:{server.server_address[1]}", "gft_x")
    try:
        with caplog.at_level(logging.INFO, logger="gpufleet"):
            for k in range(4):
                spool.put(f"batch-{k:04d}-abc", b'{"batch": %d}' % k)
                assert sender.send_one() is True
        assert server.hits == 4 and len(spool) == 0
        assert sender.last_error is None
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    finally:
        sender.close()
        server.shutdown()
        server.server_close()
