"""One SSH round trip per poll: run a small POSIX ``sh`` script on the host and return its text.

The script (:func:`poll_script`) prints every source of a sample as a section (see
:mod:`gpufleet.poller.parse`): host metrics first, then ``nvidia-smi`` wrapped in ``timeout``, then
``ps`` and ``/proc/<pid>/cgroup`` of the GPU processes it found. So a host without
``nvidia-smi`` or with a hung one still reports its host metrics.

The script is fed to ``sh -s`` on standard input rather than passed as the command line, so it
runs the same whatever the account's login shell is (bash, zsh, csh, fish); it is still one
exec request and one answer.

:class:`SshHostClient` keeps one SSH connection per host between polls, reconnects when it has
dropped, bounds each poll (connect + command) by one timeout, and turns failures into a
:class:`PollError` whose ``reason`` tells an admin what to fix.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from gpufleet.poller.parse import QUERY_APPS_FIELDS, QUERY_GPU_FIELDS, SECTION_MARK

MAX_OUTPUT_CHARS = 8 * 1024 * 1024

_SCRIPT = r"""{
exec </dev/null
LC_ALL=C; export LC_ALL
T=__SMI_TIMEOUT__
s() { printf '\n__MARK__%s\n' "$1"; }
if command -v timeout >/dev/null 2>&1; then
  if timeout -k 1 5 true >/dev/null 2>&1; then TO="timeout -k 2 $T"; else TO="timeout $T"; fi
else
  TO=
fi
s smi_timeout_seconds; echo "$T"
s hostname; hostname 2>/dev/null || cat /proc/sys/kernel/hostname
s kernel; uname -r
s os_release; cat /etc/os-release 2>/dev/null
s cpuinfo; grep -m1 -E '^(model name|Model|Hardware)' /proc/cpuinfo 2>/dev/null
s stat; cat /proc/stat
s uptime; cat /proc/uptime
s netdev; cat /proc/net/dev
s loadavg; cat /proc/loadavg
s meminfo; cat /proc/meminfo
s who; who 2>/dev/null
s df
d=$($TO df -P -T -B1 -x tmpfs -x devtmpfs -x overlay -x squashfs 2>/dev/null)
[ -n "$d" ] || d=$($TO df -P -k 2>/dev/null)
printf '%s\n' "$d"
if command -v nvidia-smi >/dev/null 2>&1; then
  s smi_gpu
  $TO nvidia-smi --query-gpu=__GPU_FIELDS__ --format=csv,noheader,nounits 2>&1
  rc=$?
  s smi_gpu_rc; echo "$rc"
  if [ "$rc" -eq 0 ]; then
    s smi_apps
    a=$($TO nvidia-smi --query-compute-apps=__APP_FIELDS__ --format=csv,noheader,nounits 2>&1)
    rc=$?
    printf '%s\n' "$a"
    s smi_apps_rc; echo "$rc"
    if [ "$rc" -eq 0 ]; then
      p=$(printf '%s\n' "$a" | cut -d, -f1 | tr -d ' ' | grep -E '^[0-9]+$' | sort -un | head -n 4096)
      if [ -n "$p" ]; then
        l=$(printf '%s\n' "$p" | tr '\n' ',' | sed 's/,$//')
        s ps
        ps -ww -o pid=,uid=,user:64=,etime=,args= -p "$l" 2>/dev/null \
          || ps -o pid=,uid=,user=,etime=,args= -p "$l" 2>/dev/null
        dk=
        for x in $p; do
          s "cgroup $x"
          c=$(cat "/proc/$x/cgroup" 2>/dev/null)
          printf '%s\n' "$c"
          case "$c" in *docker*) dk=1;; esac
        done
        if [ -n "$dk" ] && command -v docker >/dev/null 2>&1; then
          s docker
          $TO docker ps --no-trunc --format '{{.ID}} {{.Names}}' 2>/dev/null
        fi
      fi
    fi
  fi
else
  s smi_missing
fi
s end
exit 0
}
"""


def poll_script(smi_timeout_seconds: int) -> str:
    """The shell script of one poll; ``nvidia-smi`` (and ``df``) are killed after the timeout."""
    return (
        _SCRIPT.replace("__MARK__", SECTION_MARK)
        .replace("__SMI_TIMEOUT__", str(max(1, int(smi_timeout_seconds))))
        .replace("__GPU_FIELDS__", ",".join(QUERY_GPU_FIELDS))
        .replace("__APP_FIELDS__", ",".join(QUERY_APPS_FIELDS))
    )


class PollError(Exception):
    """A poll that produced no sample. ``kind`` is one of: dns, refused, unreachable, network,
    timeout, auth, host_key, key, known_hosts, ssh, exit, error. ``reason`` is for people."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class RawPoll:
    text: str
    exit_status: int | None
    stderr: str
    timed_out: bool  # the poll timeout hit mid-command: ``text`` is what arrived before it
    latency_seconds: float
    reconnected: bool  # a new SSH connection was opened for this poll


class _StaleConnection(Exception):
    pass


def _errno_in(exc: OSError, code: int) -> bool:
    # asyncio joins the errors of several addresses (IPv6 + IPv4) into one plain OSError.
    return exc.errno == code or f"[Errno {code}]" in str(exc)


class SshHostClient:
    """Polls one host over one reused SSH connection."""

    def __init__(
        self,
        *,
        host: str,
        port: int = 22,
        user: str,
        key_file: Path | str,
        known_hosts: Path | str | None = None,
        timeout_seconds: float = 10.0,
        smi_timeout_seconds: int | None = None,
        keepalive_seconds: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.key_file = Path(key_file).expanduser()
        self.known_hosts = Path(known_hosts).expanduser() if known_hosts is not None else None
        self.timeout_seconds = timeout_seconds
        # nvidia-smi gets a share of the poll's time; the rest covers SSH and /proc.
        self.smi_timeout_seconds = smi_timeout_seconds or max(1, int(timeout_seconds * 0.4))
        self.keepalive_seconds = keepalive_seconds
        self.connects = 0  # how many SSH connections were opened (tests check reuse)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._key: asyncssh.SSHKey | None = None
        self._script = poll_script(self.smi_timeout_seconds)

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 2)
            except (TimeoutError, asyncssh.Error, OSError):
                pass

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    def _load_key(self) -> asyncssh.SSHKey:
        if self._key is None:
            try:
                self._key = asyncssh.read_private_key(self.key_file)
            except (OSError, asyncssh.KeyImportError) as exc:
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise PollError(
                    "key", f"cannot read SSH key file {self.key_file}: {detail}"
                ) from None
        return self._key

    def _load_known_hosts(self) -> asyncssh.SSHKnownHosts | None:
        if self.known_hosts is None:
            return None
        try:
            return asyncssh.read_known_hosts(str(self.known_hosts))
        except (OSError, ValueError) as exc:
            raise PollError(
                "known_hosts", f"cannot read known_hosts file {self.known_hosts}: {exc}"
            ) from None

    async def _connect(self) -> asyncssh.SSHClientConnection:
        key = self._load_key()
        known_hosts = self._load_known_hosts()
        conn = await asyncssh.connect(
            self.host,
            self.port,
            username=self.user,
            client_keys=[key],
            known_hosts=known_hosts,  # None: accept any host key (see SshHostConfig)
            agent_path=None,
            config=[],  # ignore the server account's ~/.ssh/config: hosts come from our config
            preferred_auth=["publickey"],
            password=None,
            keepalive_interval=self.keepalive_seconds,
            keepalive_count_max=3,
        )
        self.connects += 1
        return conn

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The live connection to this host, opened within the timeout if there is none (the
        SSH job dispatcher runs its agent over the poller's connection); raises PollError."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._drop()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                self._conn = await self._connect()
        except TimeoutError:
            raise PollError(
                "timeout",
                f"timeout: no SSH session with {self.where} within {self.timeout_seconds:g} s",
            ) from None
        except (asyncssh.Error, OSError) as exc:
            raise self.classify(exc) from None
        return self._conn

    async def poll(self) -> RawPoll:
        """Run the poll script once; raise :class:`PollError` when no output could be had."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.timeout_seconds
        try:
            try:
                return await self._attempt(started, deadline)
            except _StaleConnection:
                self._drop()  # the reused connection had died: one fresh try, same deadline
                return await self._attempt(started, deadline)
        except PollError:
            self._drop()
            raise
        except asyncio.CancelledError:
            self._drop()
            raise

    async def _attempt(self, started: float, deadline: float) -> RawPoll:
        loop = asyncio.get_running_loop()
        reused = self._conn is not None and not self._conn.is_closed()
        if not reused:
            self._drop()
        chunks: list[str] = []
        phase = "connect"
        try:
            async with asyncio.timeout_at(deadline):
                if self._conn is None:
                    self._conn = await self._connect()
                conn = self._conn
                phase = "open"
                try:
                    process = await conn.create_process(
                        "sh -s", input=self._script, encoding="utf-8", errors="replace"
                    )
                except (asyncssh.Error, OSError) as exc:
                    if reused:
                        raise _StaleConnection from exc
                    raise
                phase = "command"
                stderr_task = asyncio.ensure_future(process.stderr.read(64 * 1024))
                try:
                    size = 0
                    while True:
                        chunk = await process.stdout.read(65536)
                        if not chunk:
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > MAX_OUTPUT_CHARS:
                            process.close()
                            raise PollError(
                                "error", f"poll output exceeded {MAX_OUTPUT_CHARS} characters"
                            )
                    completed = await process.wait()
                    stderr = await stderr_task
                finally:
                    stderr_task.cancel()
        except TimeoutError:
            text = "".join(chunks)
            if phase == "command" and SECTION_MARK in text:
                # Host metrics arrived; something after them hung. The parser says what.
                self._drop()
                return RawPoll(
                    text=text,
                    exit_status=None,
                    stderr="",
                    timed_out=True,
                    latency_seconds=loop.time() - started,
                    reconnected=not reused,
                )
            if phase == "connect":
                raise PollError(
                    "timeout",
                    f"timeout: no SSH session with {self.where} within {self.timeout_seconds:g} s"
                    " (host down, packets dropped by a firewall, or sshd stuck)",
                ) from None
            raise PollError(
                "timeout",
                f"timeout: connected to {self.where} but the poll command gave no answer within"
                f" {self.timeout_seconds:g} s",
            ) from None
        except _StaleConnection:
            raise
        except PollError:
            raise
        except (asyncssh.Error, OSError) as exc:
            if reused and phase != "connect" and isinstance(exc, asyncssh.ConnectionLost):
                raise _StaleConnection from exc
            raise self.classify(exc) from None

        text = "".join(chunks)
        status = completed.exit_status
        if SECTION_MARK not in text:
            detail = " ".join(stderr.split())[:300] or "no output"
            raise PollError(
                "exit",
                f"remote command failed on {self.where} (exit status {status}): {detail}",
            )
        return RawPoll(
            text=text,
            exit_status=status,
            stderr=stderr,
            timed_out=False,
            latency_seconds=loop.time() - started,
            reconnected=not reused,
        )

    def classify(self, exc: BaseException) -> PollError:
        """Turn a connection or session error into a :class:`PollError` with a clear reason."""
        where = f"{self.host}:{self.port}"
        if isinstance(exc, socket.gaierror):
            return PollError("dns", f"DNS lookup failed for {self.host!r}: {exc.strerror or exc}")
        if isinstance(exc, asyncssh.PermissionDenied):
            return PollError(
                "auth",
                f"auth failed: {where} rejected key {self.key_file} for user {self.user!r}"
                " (is its public key in that user's authorized_keys?)",
            )
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return PollError(
                "host_key",
                f"host key mismatch: {where} presented a key that is not in {self.known_hosts}"
                f" ({exc.reason}); if the host was reinstalled, update known_hosts",
            )
        if isinstance(exc, asyncssh.ConnectionLost):
            return PollError("ssh", f"connection to {where} lost: {exc.reason}")
        if isinstance(exc, asyncssh.DisconnectError):
            return PollError("ssh", f"SSH error from {where}: {exc.reason}")
        if isinstance(exc, asyncssh.ChannelOpenError):
            return PollError("ssh", f"{where} refused to open a session: {exc.reason}")
        if isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, OSError) and _errno_in(exc, errno.ECONNREFUSED)
        ):
            return PollError(
                "refused", f"connection refused by {where} (no SSH server on that port?)"
            )
        if isinstance(exc, OSError) and (
            _errno_in(exc, errno.EHOSTUNREACH) or _errno_in(exc, errno.ENETUNREACH)
        ):
            return PollError("unreachable", f"{where} unreachable: {exc.strerror or exc}")
        if isinstance(exc, OSError):
            return PollError("network", f"network error talking to {where}: {exc}")
        if isinstance(exc, asyncssh.Error):
            return PollError("ssh", f"SSH error from {where}: {exc.reason}")
        return PollError("error", f"{type(exc).__name__}: {exc}")
