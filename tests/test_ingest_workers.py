"""Ingest workers (gpufleet.server.workers): agents' connections served by worker processes.

The channel and the log tailer are tested on their own, then a real server with workers on
loopback: batches stored once and live, other requests sent back to the server, tokens
revoked everywhere at once, a killed worker replaced, a killed server's worker logs moved at
the next start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import duckdb
import httpx
import psutil
import pytest

from gpufleet.config import IngestSection, Settings
from gpufleet.http.auth import TokenCache
from gpufleet.http.context import Context
from gpufleet.live.state import LiveState
from gpufleet.server.workers import channel, logwriter
from gpufleet.server.workers.logwriter import LogWriter
from gpufleet.server.workers.pool import Tailer
from gpufleet.store import IngestItem, StoreError, ingestlog
from gpufleet.store.duck import DuckDBStore
from gpufleet.store.rows import batch_key
from tests.conftest import create_token, gpufleet, gpufleet_here, make_batch, make_sample


def wait_until(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def item(host: str = "h1", batch_id: str | None = None) -> IngestItem:
    batch = make_batch(make_sample(host), batch_id=batch_id)
    return IngestItem(batch, "t", time.time(), 0.0, batch.model_dump_json().encode())


# -- the channel -----------------------------------------------------------------------------


def test_channel_carries_frames_and_a_live_connection_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        got: list = []
        done = asyncio.Event()

        def on_frame(kind, payload, fd):
            got.append((kind, payload, fd))
            if kind == channel.STOP:
                done.set()

        sender = channel.Channel(a, loop, lambda *f: None, lambda: None)
        receiver = channel.Channel(b, loop, on_frame, lambda: None)
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        big = os.urandom(3 << 20)  # more than the socket takes at once: queued, in order
        assert sender.send(channel.TOKENS, b"first")
        assert sender.send_conn(conn.fileno(), b"already read")
        conn.close()  # ours is closed; the receiver's copy keeps the connection open
        assert sender.send(channel.STATS, big)
        assert sender.send(channel.STOP)
        await asyncio.wait_for(done.wait(), 10)
        kinds = [k for k, _, _ in got]
        assert kinds == [channel.TOKENS, channel.CONN, channel.STATS, channel.STOP]
        assert got[0][1] == b"first" and got[2][1] == big
        _, prefix, fd = got[1]
        assert prefix == b"already read" and fd is not None
        handed = socket.socket(fileno=fd)
        handed.sendall(b"hello from the worker")
        client.settimeout(5)
        assert client.recv(100) == b"hello from the worker"
        handed.close()
        client.close()
        listener.close()
        receiver.close()
        sender.close()
        assert sender.send(channel.STOP) is False  # closed: says so

    asyncio.run(main())


def test_channel_reports_the_other_end_gone():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        gone = asyncio.Event()
        ch = channel.Channel(a, loop, lambda *f: None, gone.set)
        b.close()
        await asyncio.wait_for(gone.wait(), 5)
        assert ch.closed

    asyncio.run(main())


# -- the worker's log and the server's tailer --------------------------------------------------


def test_log_writer_logs_acknowledges_and_knows_duplicates(tmp_path):
    async def main():
        writer = LogWriter(tmp_path)
        one, two = item(batch_id="batch-0001"), item(batch_id="batch-0002")
        assert await writer.ingest(one) is True
        assert await writer.ingest(one) is False  # this worker logged it already
        writer.remember([batch_key(two.batch.batch_id).bytes])  # stored elsewhere
        assert await writer.ingest(two) is False
        writer.close()

    asyncio.run(main())
    items = [it for p in sorted(tmp_path.glob("*.log")) for it in ingestlog.read_records(p)]
    assert [it.batch.batch_id for it in items] == ["batch-0001"]


def test_log_writer_counts_what_the_server_has_not_moved(tmp_path, monkeypatch):
    monkeypatch.setattr(logwriter, "ROTATE_SECONDS", 0.05)

    async def main():
        writer = LogWriter(tmp_path)
        for i in range(5):
            assert await writer.ingest(item(batch_id=f"batch-{i:04d}"))
        assert writer.queue_depth() == 5  # back-pressure counts them (ingest.max_queue)
        await asyncio.sleep(0.3)
        assert writer.queue_depth() == 5  # rotated, but nobody moved them
        for path in sorted(tmp_path.glob("*.log"))[:-1]:  # the server moves finished files
            path.unlink()
        await asyncio.sleep(0.3)
        assert writer.queue_depth() == 0
        writer.close()

    asyncio.run(main())


@pytest.fixture
def ctx(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    yield Context(Settings(), store, LiveState(), TokenCache(store), "k")
    store.close()


def test_tailer_moves_complete_records_and_deletes_finished_files(ctx, tmp_path):
    folder = tmp_path / "w0"
    folder.mkdir()
    first = [item(f"h{i}") for i in range(3)]
    records = [ingestlog.encode(it) for it in first]
    cur = folder / "000000000001.log"
    cur.write_bytes(records[0] + records[1] + records[2][:30])  # the third is mid-write
    moved: list = []
    tailer = Tailer(ctx, folder, moved.extend)

    async def main():
        assert await tailer.move() == 2
        assert {"h0", "h1"} <= set(ctx.live.hosts) and "h2" not in ctx.live.hosts
        assert await asyncio.to_thread(ctx.store.count, "batches") == 2
        assert len(moved) == 2 and cur.exists()  # still being written: kept
        with open(cur, "ab") as f:
            f.write(records[2][30:])
        later = item("h9")
        (folder / "000000000002.log").write_bytes(ingestlog.encode(later) + b"\x07\x00")  # torn
        assert await tailer.move() == 2  # the rest of file 1, and file 2's whole record
        # the worker moved on to file 2: file 1 goes once all of it is in the database
        await asyncio.gather(*tailer.commits[cur])
        assert await tailer.move() == 0
        assert not cur.exists()
        assert await tailer.move(final=True) == 0  # no worker: the torn tail is dropped
        assert not list(folder.glob("*.log"))
        assert await asyncio.to_thread(ctx.store.count, "batches") == 4
        assert "h9" in ctx.live.hosts

    asyncio.run(main())


def test_tailer_keeps_a_file_until_its_batches_are_committed(ctx, tmp_path):
    """A finished worker log stays on disk while the store has not committed what it held
    (its batches are durable nowhere else: the store does not log them again), and a
    commit that failed has the file read again."""
    folder = tmp_path / "w0"
    folder.mkdir()
    old = folder / "000000000001.log"
    old.write_bytes(ingestlog.encode(item("a1")) + ingestlog.encode(item("a2")))
    (folder / "000000000002.log").write_bytes(b"")  # the worker writes here now
    calls = []

    class Flaky:
        """The real store, but the first commit fails and the second is held back."""

        def __init__(self, store):
            self.store, self.gate = store, asyncio.Event()

        def apply_durable(self, items):
            calls.append(len(items))
            if len(calls) == 1:
                fut = asyncio.get_running_loop().create_future()
                fut.set_exception(StoreError("database unreachable"))
                return fut
            real = self.store.apply_durable(items)

            async def held():
                await self.gate.wait()
                return await real

            return asyncio.ensure_future(held())

    async def main():
        flaky = Flaky(ctx.store)
        tailer = Tailer(Context(ctx.settings, flaky, ctx.live, ctx.tokens, "k"), folder)
        assert await tailer.move() == 2
        assert old.exists()  # the commit failed
        assert await tailer.move() == 2  # read again, from the start
        assert old.exists()  # committing
        flaky.gate.set()
        await asyncio.gather(*tailer.commits[old])
        await tailer.move()
        assert not old.exists()
        assert calls == [2, 2]
        assert await asyncio.to_thread(ctx.store.count, "batches") == 2
        assert set(ctx.live.hosts) == {"a1", "a2"}

    asyncio.run(main())


def test_tailer_stores_a_batch_logged_by_two_workers_once(ctx, tmp_path):
    same = item("twice")
    for slot in ("0", "1"):
        (tmp_path / slot).mkdir()
        (tmp_path / slot / "000000000001.log").write_bytes(ingestlog.encode(same))
    for slot in ("0", "1"):
        asyncio.run(Tailer(ctx, tmp_path / slot).move(final=True))
    assert ctx.store.count("batches") == 1 and ctx.store.count("host_samples") == 1


# -- a server with workers ---------------------------------------------------------------------


@pytest.fixture
def served(server_factory):
    srv = server_factory("--ingest-workers", "2")
    wait_until(lambda: health(srv)["ingest_workers"]["up"] == 2, 30, "both workers up")
    return srv


def health(srv) -> dict:
    return httpx.get(srv.url + "/healthz", timeout=10).json()


def worker_pids(srv) -> list[int]:
    return [
        p.pid
        for p in psutil.Process(srv.proc.pid).children()
        if "workers.worker" in " ".join(p.cmdline())
    ]


def post(client: httpx.Client, srv, batch, token: str | None = None) -> httpx.Response:
    return client.post(
        "/api/v1/ingest", content=batch.model_dump_json(),
        headers={"Authorization": f"Bearer {token or srv.token}", "Content-Type": "application/json"},
    )  # fmt: skip


def stored_ids(srv) -> list[str]:
    """Batch keys in the store, one per sample row (each test batch has one sample)."""
    con = duckdb.connect(str(srv.db_path), read_only=True)
    try:
        keys = [str(r[0]) for r in con.execute("SELECT id FROM batches").fetchall()]
        samples = con.execute("SELECT count(*) FROM host_samples").fetchone()[0]
    finally:
        con.close()
    assert samples == len(keys)
    return sorted(keys)


def keys(batch_ids: list[str]) -> list[str]:
    return sorted(str(batch_key(b)) for b in batch_ids)


def test_batches_through_workers_are_stored_once_and_live(served):
    ids = []
    with httpx.Client(base_url=served.url, timeout=10) as client:  # keep-alive, like an agent
        for i in range(20):
            batch = make_batch(make_sample(f"node{i % 4}", ts=time.time() + i))
            r = post(client, served, batch)
            assert r.status_code == 200 and r.json()["status"] == "stored", r.text
            ids.append(batch.batch_id)
        again = post(client, served, batch)
        assert again.json()["status"] == "duplicate"
    assert health(served)["ingest_workers"]["connections_handed_over"] >= 1
    hosts = wait_until(
        lambda: {h["name"] for h in httpx.get(served.url + "/api/v1/hosts").json()["hosts"]}
        >= {"node0", "node1", "node2", "node3"} or None, 5, "live state",
    )  # fmt: skip
    assert hosts
    metrics = wait_until(
        lambda: 'gpufleet_server_ingest_batches_total{result="stored"} 20' in (
            t := httpx.get(served.url + "/metrics").text) and t, 5, "the workers' counters",
    )  # fmt: skip
    assert "gpufleet_server_ingest_workers_up 2" in metrics
    # the workers' backlog (acknowledged, not stored yet) drains once the server moved it
    wait_until(lambda: health(served)["ingest_workers"]["backlog"] == 0, 5, "backlog drained")
    assert "gpufleet_server_ingest_workers_backlog 0" in httpx.get(served.url + "/metrics").text
    served.stop()
    assert stored_ids(served) == keys(ids)  # each once, nothing else
    assert not list((served.data_dir / "ingest-workers").glob("*/*.log"))


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response's head (lower case); its body (Content-Length) is read and dropped."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    head = head.lower()
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_other_requests_on_a_worker_connection_are_sent_back(served):
    batch = make_batch(make_sample("redirected"))
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        body = batch.model_dump_json().encode()
        sock.sendall(
            b"POST /api/v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {served.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert read_response(sock).startswith(b"http/1.1 200")
        sock.sendall(b"GET /api/v1/hosts?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(sock)
        assert head.startswith(b"http/1.1 307")
        assert b"location: /api/v1/hosts?x=1" in head and b"connection: close" in head
    with httpx.Client(base_url=served.url, follow_redirects=True) as client:
        post(client, served, make_batch(make_sample("again")))
        r = client.get("/api/v1/hosts")  # on the handed-over connection: redirected, then served
        assert r.status_code == 200 and "hosts" in r.json()


def test_the_servers_background_threads_yield_to_the_workers(served):
    pid = served.proc.pid

    def nices() -> dict[int, int]:
        return {
            int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")
        }

    base = os.getpriority(os.PRIO_PROCESS, pid)  # the event loop's thread id is the pid
    lowered = wait_until(
        lambda: (n := nices()) and all(v == base + 10 for t, v in n.items() if t != pid) and n,
        10, "the background threads' priority",
    )  # fmt: skip
    assert lowered[pid] == base and len(lowered) > 3  # the writer, the applier, DuckDB's...
    for worker in worker_pids(served):
        assert os.getpriority(os.PRIO_PROCESS, worker) == base  # spawned by the event loop


def test_a_revoked_token_is_refused_by_every_worker_at_once(served):
    other = create_token(served.data_dir, "second")
    with (
        httpx.Client(base_url=served.url, timeout=10) as a,
        httpx.Client(base_url=served.url, timeout=10) as b,
    ):
        for client in (a, b):  # two connections: round robin gives one to each worker
            assert post(client, served, make_batch(make_sample()), other).status_code == 200
        r = gpufleet_here("token", "revoke", "second", "--data-dir", str(served.data_dir))
        assert r.returncode == 0, r.stderr
        for client in (a, b):
            refused = post(client, served, make_batch(make_sample()), other)
            assert refused.status_code == 403, refused.text
            assert "revoked" in refused.json()["error"]["message"]
        assert post(a, served, make_batch(make_sample())).status_code == 200  # others still fine


def test_a_killed_worker_is_replaced_and_loses_nothing_acknowledged(served):
    acked = []

    def push(n: int) -> None:
        for _ in range(n):
            batch = make_batch(make_sample("k", ts=time.time()))
            for _attempt in range(20):  # as an agent does: retry until acknowledged
                try:
                    with httpx.Client(base_url=served.url, timeout=5) as client:
                        if post(client, served, batch).status_code == 200:
                            acked.append(batch.batch_id)
                            break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)

    push(10)
    victim = worker_pids(served)[0]
    os.kill(victim, signal.SIGKILL)
    push(10)  # taken by the other worker, or by the server itself
    wait_until(
        lambda: (w := health(served)["ingest_workers"])["restarts"] >= 1 and w["up"] == 2,
        30, "the worker to be replaced",
    )  # fmt: skip
    assert victim not in worker_pids(served)
    push(10)
    served.stop()
    assert stored_ids(served) == keys(acked) and len(acked) == 30


def test_a_connection_the_server_kept_goes_to_a_worker_once_one_is_up(server_factory):
    """An agent connected while no worker was up (here: the only one killed) is served by the
    server; once a worker is back, the server's next answer closes that connection, and the
    agent's next batch, on a new connection, goes to the worker, which knows that the server
    stored the first one."""
    srv = server_factory("--ingest-workers", "1")
    wait_until(lambda: health(srv)["ingest_workers"]["up"] == 1, 30, "the worker up")
    os.kill(worker_pids(srv)[0], signal.SIGKILL)
    wait_until(lambda: health(srv)["ingest_workers"]["up"] == 0, 10, "the worker seen gone")
    batch = make_batch(make_sample("kept"))
    handed = health(srv)["ingest_workers"]["connections_handed_over"]
    # one agent, keep-alive (httpx drops a connection idle for 5 s by default: on a busy
    # machine the worker's replacement may take longer, and the next post would go out on a
    # new connection, which is handed to the worker)
    limits = httpx.Limits(keepalive_expiry=60)
    with httpx.Client(base_url=srv.url, timeout=10, limits=limits) as client:
        kept = post(client, srv, batch)  # no worker: the server keeps the connection
        assert kept.json()["status"] == "stored"
        assert kept.headers.get("connection") != "close"
        wait_until(lambda: health(srv)["ingest_workers"]["up"] == 1, 30, "the worker replaced")
        later = make_batch(make_sample("kept"))
        last = post(client, srv, later)  # still on the kept connection: the server's answer
        assert last.json()["status"] == "stored" and last.headers["connection"] == "close"
        assert health(srv)["ingest_workers"]["connections_handed_over"] == handed
        again = post(client, srv, batch)  # a new connection: handed to the new worker
        assert again.json()["status"] == "duplicate"
        assert "connection" not in again.headers  # the worker keeps it
    assert health(srv)["ingest_workers"]["connections_handed_over"] == handed + 1
    srv.stop()
    assert stored_ids(srv) == keys([batch.batch_id, later.batch_id])


@pytest.mark.slow
def test_a_killed_servers_worker_logs_are_moved_at_the_next_start(server_factory):
    srv = server_factory("--ingest-workers", "2")
    wait_until(lambda: health(srv)["ingest_workers"]["up"] == 2, 30, "both workers up")
    pids = worker_pids(srv)
    acked = []
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        for i in range(50):
            batch = make_batch(make_sample(f"n{i % 5}"))
            assert post(client, srv, batch).status_code == 200
            acked.append(batch.batch_id)
    srv.kill()  # SIGKILL: no shutdown; the workers see the channel close and stop
    for pid in pids:
        wait_until(lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie", 10, "the workers to stop")  # fmt: skip
    srv.extra_args = ("--ingest-workers", "0")  # moved even by a server that runs none
    srv.start()
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        for batch_id in acked[::7]:  # known: a re-send is a duplicate
            again = make_batch(make_sample("n0"), batch_id=batch_id)
            assert post(client, srv, again).json()["status"] == "duplicate"
    srv.stop()
    assert stored_ids(srv) == keys(acked)
    assert not list((srv.data_dir / "ingest-workers").glob("*/*.log"))


def test_worker_count_setting(tmp_path):
    assert IngestSection(workers=0).worker_count() == 0
    assert IngestSection(workers=3).worker_count() == 3
    assert IngestSection().worker_count(cpus=1) == 0  # one core: the server alone
    assert IngestSection().worker_count(cpus=2) == 1
    assert IngestSection().worker_count(cpus=32) == 4
    bad = tmp_path / "g.yaml"
    bad.write_text("ingest:\n  workers: many\n")
    r = gpufleet("server", "--config", str(bad), "--data-dir", str(tmp_path))
    assert r.returncode != 0 and "ingest.workers" in r.stderr
