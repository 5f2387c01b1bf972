"""The program that runs on a GPU server: a per-host *agent* that launches, watches and cancels
jobs, and the per-job *supervisor* it forks.

This file is sent as is to remote hosts (the SSH dispatcher pipes it into ``python3 -c``), so it
uses the standard library only and needs **POSIX sh + Python >= 3.7 on Linux** (``/proc`` for
process identity and the boot id; ``sigtimedwait``). Nothing is installed on the host.

State of one job rank lives in ``<root>/<job_id>/<rank>/`` (root defaults to
``~/.gpufleet/jobs``)::

    spec.json      what to run (written before the job starts)
    started.json   pid, process start ticks, start time, supervisor pid, boot id (atomic)
    output.log     the job's stdout and stderr
    exit.json      exit code, signal, reason, end time -- written atomically at exit
    cancel         present once a cancel was asked

A launch of a rank that runs returns it (idempotent); of one whose run ended, archives that
run as ``<rank>~N`` and starts a new one (a preempted or requeued job).

The supervisor is detached (``setsid`` + double fork: it survives the agent, the SSH session
and the dispatcher); the job runs in its own process group so a cancel can signal all of it.
When the job ends the supervisor writes ``exit.json`` and sends one datagram to the agent's
socket ``<root>/.agent.sock``; the agent turns it into an event line. So completion is pushed,
never scanned for; an agent that (re)starts answers ``status`` from the state directories.

A job's state is kept ``KEEP_SECONDS`` (30 days) after it ended, then an agent that starts
deletes it. Agent protocol (``supervisor.py agent ROOT [KEEP_SECONDS]``): JSON lines. In, on
stdin: ``{"id", "op", ...}`` with op ``launch`` / ``status`` / ``cancel`` / ``logs``; out, on
stdout: ``{"hello": ...}`` once, then ``{"id", "ok", ...}`` replies and ``{"event": "exit",
"job", "rank", "record"}`` events. The agent exits when its stdin closes; jobs keep running.

(One module past the usual size on purpose: it ships to the hosts as one program.)
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

SOCK_NAME = ".agent.sock"
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# What the common frameworks print when an allocation on the GPU fails (the one list: the
# other dispatchers read job logs with ``dispatch/oom.py``, built from it), each as seen from
# a real job on an H200 where marked (docs/agent.md): PyTorch ("torch.OutOfMemoryError: CUDA out
# of memory", seen), the CUDA runtime and driver, cuBLAS/cuDNN allocation failures, JAX/XLA and
# TensorFlow ("RESOURCE_EXHAUSTED: Out of memory", seen; "OOM when allocating tensor"), CuPy
# ("cupy.cuda.memory.OutOfMemoryError: Out of memory allocating", seen).
OOM_MARKERS = (
    b"CUDA out of memory",
    b"CUDA error: out of memory",
    b"CUDA_ERROR_OUT_OF_MEMORY",
    b"cudaErrorMemoryAllocation",
    b"OutOfMemoryError: CUDA",
    b"torch.OutOfMemoryError",
    b"torch.cuda.OutOfMemoryError",
    b"CUBLAS_STATUS_ALLOC_FAILED",
    b"CUDNN_STATUS_ALLOC_FAILED",
    b"RESOURCE_EXHAUSTED: Out of memory",
    b"OOM when allocating tensor",
    b"cupy.cuda.memory.OutOfMemoryError",
)
OOM_SCAN_BYTES = 256 * 1024
MAX_LOG_BYTES = 16 * 1024 * 1024  # the most of a log one reply carries
LAUNCH_WAIT_SECONDS = 30.0
# The job outlives the SSH session that launched it, so it does not inherit the session's
# variables (with SSH_CLIENT set, bash also sources ~/.bashrc for every `bash -c`).
SSH_SESSION_VARS = frozenset(
    (
        "SSH_CLIENT",
        "SSH_CONNECTION",
        "SSH_TTY",
        "SSH_AUTH_SOCK",
        "SSH2_CLIENT",
        "SSH_ORIGINAL_COMMAND",
    )
)
if TYPE_CHECKING:  # annotations only: the hosts' python3 may be 3.7 (no dict[...] at run time)
    Json = dict[str, Any]


# ---- files -------------------------------------------------------------------------------


def write_json_atomic(path: str, obj: Json, durable: bool = True) -> None:
    """Write ``obj`` so that a reader sees the whole file or none of it; ``durable``: even
    after the host crashes (fsync; the exit record). What only matters while the host is up
    (the spec, the start record: a crash kills the job anyway) skips the fsyncs, which are
    most of a launch's time."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, json.dumps(obj).encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if not durable:
        return
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json(path: str) -> Json | None:
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def tail(path: str, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read(size)
    except OSError:
        return b""


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stat_fields(pid: int) -> list[bytes]:
    """``/proc/<pid>/stat`` after the command name: state, ppid, ... (empty: no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return []
    return stat[stat.rfind(b")") + 2 :].split()


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a pid from its reuse)."""
    fields = _stat_fields(pid)
    return fields[19].decode() if len(fields) > 19 else None


def alive(pid: int | None, ticks: str | None) -> bool:
    """Whether that very process runs (a zombie counts as ended: it is about to be reaped)."""
    fields = _stat_fields(int(pid)) if pid else []
    if len(fields) <= 19 or fields[0] == b"Z":
        return False
    return ticks is None or fields[19].decode() == ticks


def job_dir(root: str, job_id: str, rank: int) -> str:
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"job id {job_id!r} is not a safe name (letters, digits, '_.-')")
    return os.path.join(root, job_id, str(int(rank)))


def oom_in(path: str) -> bool:
    data = tail(path, OOM_SCAN_BYTES)
    return any(marker in data for marker in OOM_MARKERS)


# ---- the supervisor (one per job rank, detached) -----------------------------------------


def fail(directory: str, spec: Json, report_fd: int, reason: str) -> None:
    """The job could not start: record why, tell the launcher and the agent, and exit."""
    record = {
        "pid": None,
        "exit_code": None,
        "signal": None,
        "reason": reason,
        "started_at": None,
        "ended_at": time.time(),
    }
    write_json_atomic(os.path.join(directory, "exit.json"), record)
    with contextlib.suppress(OSError):
        os.write(report_fd, json.dumps({"state": "exited", "record": record}).encode())
        os.close(report_fd)
    os.chdir(directory)
    _notify_agent(str(spec["job_id"]), int(spec["rank"]), None)
    os._exit(0)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)


def _notify_agent(job: str, rank: int, pid: int | None) -> None:
    """Tell the agent (if one listens) that this rank has an exit record. We are chdir'd into
    ``<root>/<job>/<rank>``: a relative path keeps clear of the 108-byte socket limit."""
    note = json.dumps({"job": job, "rank": rank, "pid": pid}).encode()
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(note, f"../../{SOCK_NAME}")


def _job_argv(spec: Json) -> list[str]:
    if spec.get("shell_command") is not None:
        shell = os.environ.get("SHELL") or "/bin/sh"
        return [shell, "-c", str(spec["shell_command"])]
    return [str(a) for a in spec["argv"]]


def supervise(directory: str, spec: Json, report_fd: int) -> None:
    """Run the job to its end (in the detached grandchild); never returns."""
    os.chdir(directory)
    os.closerange(3, report_fd)  # the agent's socket and pipes are not ours to hold
    os.closerange(report_fd + 1, max(report_fd + 2, os.sysconf("SC_OPEN_MAX")))
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open("supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # A cancel that comes before the signals are blocked (below) is remembered here. The job
    # gets default handlers and an empty mask (exec resets caught signals; nothing is blocked
    # yet), so Popen needs no preexec_fn and can use vfork.
    early: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda signum, _frame: early.append(signum))
    waited = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
    out = os.open("output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    env = {k: v for k, v in os.environ.items() if k not in SSH_SESSION_VARS}
    env.update({str(k): str(v) for k, v in spec.get("env", {}).items()})
    argv = _job_argv(spec)
    workdir = os.path.expanduser(spec.get("workdir") or "~")
    started_at = time.time()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=null,
            stdout=out,
            stderr=out,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        what = exc.strerror or str(exc)
        where = workdir if exc.filename == workdir else argv[0]
        fail(directory, spec, report_fd, f"launch failed: {what}: {where}")
    os.close(out)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)  # from here on: sigtimedwait below
    started = {
        "pid": proc.pid,
        "ticks": start_ticks(proc.pid),
        "started_at": started_at,
        "supervisor_pid": os.getpid(),
        "supervisor_ticks": start_ticks(os.getpid()),
        "boot_id": boot_id(),
        "host": socket.gethostname(),
    }
    write_json_atomic("started.json", started, durable=False)
    os.write(report_fd, json.dumps({"state": "running", **started}).encode())
    os.close(report_fd)

    grace = float(spec.get("kill_grace_seconds") or 10.0)
    limit = spec.get("time_limit_seconds")
    deadline = started_at + float(limit) if limit else None
    kill_at: float | None = None
    reason: str | None = None
    status = 0
    while True:
        done, status = os.waitpid(proc.pid, os.WNOHANG)
        if done:
            break
        now = time.time()
        if early and reason is None:  # cancelled (or the supervisor told to stop)
            reason = "cancelled" if os.path.exists("cancel") else "supervisor terminated"
            _killpg(proc.pid, signal.SIGTERM)
            kill_at, deadline = now + grace, None
        if kill_at is not None and now >= kill_at:
            _killpg(proc.pid, signal.SIGKILL)
            kill_at = None
        if deadline is not None and now >= deadline and reason is None:
            reason = "time limit"
            _killpg(proc.pid, signal.SIGTERM)
            kill_at, deadline = now + grace, None
        wakes = [t for t in (deadline, kill_at) if t is not None]
        if wakes:
            info = signal.sigtimedwait(waited, max(0.001, min(wakes) - time.time()))
        else:
            info = signal.sigwaitinfo(waited)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            early.append(info.si_signo)
    _killpg(proc.pid, signal.SIGKILL)  # what the job left behind in its group holds GPUs
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + (sig or 0)
    if reason is None and code != 0:
        if oom_in("output.log"):
            reason = "oom"
        elif sig is not None:
            reason = f"killed by signal {signal.Signals(sig).name}"
    record = {
        "pid": proc.pid,
        "exit_code": code,
        "signal": sig,
        "reason": reason,
        "started_at": started_at,
        "ended_at": time.time(),
    }
    write_json_atomic("exit.json", record)
    _notify_agent(str(spec["job_id"]), int(spec["rank"]), proc.pid)
    os._exit(0)


# ---- the agent (one per host and dispatcher connection) -----------------------------------


def rank_status(directory: str, job: str, rank: int) -> Json:
    """What a state directory says about one rank: running, exited (with the record),
    launching, vanished (no exit record and nothing alive: the reason says why) or missing."""
    spec = read_json(os.path.join(directory, "spec.json")) or {}
    base: Json = {"job": job, "rank": rank, "fleet_host": spec.get("host")}
    started = read_json(os.path.join(directory, "started.json"))
    record = read_json(os.path.join(directory, "exit.json"))
    if record is not None:
        return {**base, **(started or {}), "state": "exited", "record": record}
    if started is None:
        try:
            age = time.time() - os.stat(directory).st_mtime
        except OSError:
            return {**base, "state": "missing"}
        if age < LAUNCH_WAIT_SECONDS:
            return {**base, "state": "launching"}
        return {**base, "state": "vanished", "reason": "launch interrupted before the job started"}
    running = alive(started.get("supervisor_pid"), started.get("supervisor_ticks")) or alive(
        started.get("pid"), started.get("ticks")
    )
    record = read_json(os.path.join(directory, "exit.json"))  # it may have ended meanwhile
    if record is not None:
        return {**base, **started, "state": "exited", "record": record}
    if running:
        return {**base, "state": "running", **started}
    if started.get("boot_id") and started.get("boot_id") != boot_id():
        why = "host restarted while the job ran; exit code unknown"
    else:
        why = "supervisor died; exit code unknown"
    return {**base, "state": "vanished", "reason": why, **started}


def launch(root: str, spec: Json) -> Json:
    """Start one rank, unless it runs already (then say so: idempotent). A rank whose previous
    run has ended (a preempted or requeued job launched again) is archived as ``<rank>~N``
    and a new run starts. Returns the state, or ``{"pending": fd, ...}``: the supervisor
    reports on that pipe once the job runs (:func:`launch_result`)."""
    job, rank = str(spec["job_id"]), int(spec["rank"])
    directory = job_dir(root, job, rank)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    while True:
        try:
            os.mkdir(directory)
            break
        except FileExistsError:
            state = rank_status(directory, job, rank)
            if state["state"] in ("running", "launching"):
                return {**state, "existing": True}
            archive(directory)
    try:
        write_json_atomic(os.path.join(directory, "spec.json"), spec, durable=False)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
    except OSError:  # nothing started: leave no state behind, so a retry can start it
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() == 0:
                try:
                    supervise(os.path.abspath(directory), spec, write_fd)
                except BaseException as exc:
                    fail(os.path.abspath(directory), spec, write_fd, f"launch failed: {exc!r}")
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)  # the intermediate child exits at once
    deadline = time.monotonic() + LAUNCH_WAIT_SECONDS
    return {"pending": read_fd, "job": job, "rank": rank, "dir": directory, "deadline": deadline}


def launch_result(pending: Json, report: bytes) -> Json:
    """The reply to a launch once its supervisor has reported (or closed the pipe silently)."""
    job, rank = pending["job"], pending["rank"]
    try:
        return {"job": job, "rank": rank, **json.loads(report)}
    except ValueError:
        return rank_status(pending["dir"], job, rank)


def archive(directory: str) -> None:
    """Move an ended run's rank directory aside as ``<rank>~N`` (its process is gone)."""
    base = os.path.basename(directory)
    parent = os.path.dirname(directory)
    taken = [n.split("~", 1)[1] for n in os.listdir(parent) if n.startswith(base + "~")]
    number = 1 + max((int(t) for t in taken if t.isdigit()), default=0)
    with contextlib.suppress(FileNotFoundError):
        os.rename(directory, os.path.join(parent, f"{base}~{number}"))


def find_run(root: str, job: str, rank: int, pid: Any) -> str:
    """The directory of the run of ``job``/``rank`` whose process was ``pid`` (the latest run
    when ``pid`` is None or matches it; else an archived one; else the latest)."""
    directory = job_dir(root, job, rank)
    if pid is None:
        return directory
    archived = glob.glob(glob.escape(directory) + "~*")
    for candidate in [directory, *archived]:
        started = read_json(os.path.join(candidate, "started.json")) or {}
        if started.get("pid") == pid:
            return candidate
    return directory


def cancel(root: str, job: str, rank: int, pid: Any = None) -> Json:
    directory = find_run(root, job, rank, pid)
    state = rank_status(directory, job, rank)
    if state["state"] != "running" or (pid is not None and state.get("pid") != pid):
        return state  # ended, or another run than the one asked about: leave it alone
    open(os.path.join(directory, "cancel"), "a").close()
    if alive(state.get("supervisor_pid"), state.get("supervisor_ticks")):
        os.kill(int(state["supervisor_pid"]), signal.SIGTERM)
    else:  # the supervisor is gone but the job is not: stop it and record why
        _killpg(int(state["pid"]), signal.SIGKILL)
        record = {
            "pid": state.get("pid"),
            "exit_code": 128 + signal.SIGKILL,
            "signal": int(signal.SIGKILL),
            "reason": "cancelled",
            "started_at": state.get("started_at"),
            "ended_at": time.time(),
        }
        write_json_atomic(os.path.join(directory, "exit.json"), record)
        return {**base_of(state), "state": "exited", "record": record}
    return state


def base_of(state: Json) -> Json:
    return {"job": state["job"], "rank": state["rank"]}


def status(root: str, jobs: list[list[Any]]) -> list[Json]:
    """Per ``[job, rank, pid]`` (rank None: every rank of the job's latest run; pid None: the
    latest run), what its directory says."""
    found: list[Json] = []
    for job, rank, *rest in jobs:
        pid = rest[0] if rest else None
        if rank is None:
            try:
                names = os.listdir(os.path.dirname(job_dir(root, job, 0)))
                ranks = sorted(int(r) for r in names if r.isdigit())
            except OSError:
                ranks = []
            found.extend(rank_status(job_dir(root, job, r), job, r) for r in ranks)
            if not ranks:
                found.append({"job": job, "rank": None, "state": "missing"})
        else:
            state = rank_status(find_run(root, job, int(rank), pid), job, int(rank))
            if pid is not None and state.get("pid") not in (None, pid):
                state = {"job": job, "rank": int(rank), "state": "missing"}
            found.append(state)
    return found


def handle(root: str, request: Json) -> Json:
    op = request.get("op")
    if op == "launch":
        return launch(root, request["spec"])
    if op == "status":
        return {"jobs": status(root, request["jobs"])}
    if op == "cancel":
        return cancel(root, str(request["job"]), int(request["rank"]), request.get("pid"))
    if op == "logs":
        directory = find_run(root, str(request["job"]), int(request["rank"]), request.get("pid"))
        size = min(int(request.get("tail_bytes", 65536)), MAX_LOG_BYTES)
        data = tail(os.path.join(directory, "output.log"), size)
        return {"text": data.decode("utf-8", "replace"), "found": os.path.isdir(directory)}
    raise ValueError(f"unknown op {op!r}")


def _write(line: Json) -> None:
    data = (json.dumps(line) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def prune(root: str, keep_seconds: float) -> int:
    """Delete the state of jobs whose every rank ended more than ``keep_seconds`` ago."""
    removed, now = 0, time.time()
    for job in os.listdir(root):
        path = os.path.join(root, job)
        if not JOB_ID_RE.match(job) or not os.path.isdir(path):
            continue
        ranks = [os.path.join(path, r) for r in os.listdir(path) if r.isdigit()]
        records = [read_json(os.path.join(r, "exit.json")) for r in ranks]
        ended = [float(rec.get("ended_at") or now) for rec in records if rec is not None]
        if ranks and len(ended) == len(ranks) and now - max(ended) > keep_seconds:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _answer_launches(launching: dict[int, Json], ready: list[int]) -> None:
    """Read the supervisors' reports that arrived; answer the launches that are complete."""
    for fd, pending in list(launching.items()):
        chunk = os.read(fd, 65536) if fd in ready else b""
        if chunk:
            pending["report"] += chunk
            continue
        if fd not in ready and time.monotonic() < pending["deadline"]:
            continue
        os.close(fd)
        del launching[fd]
        _write({"id": pending["id"], "ok": True, **launch_result(pending, pending["report"])})


def agent(root: str, keep_seconds: float = 30 * 86400) -> None:
    root = os.path.abspath(os.path.expanduser(root))
    os.makedirs(root, exist_ok=True)
    os.chdir(root)
    prune(root, keep_seconds)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tmp = f"{SOCK_NAME}.{os.getpid()}"
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    sock.bind(tmp)
    os.rename(tmp, SOCK_NAME)  # a newer agent takes over from one left behind
    mine = os.stat(SOCK_NAME).st_ino
    _write({"hello": 1, "root": root, "boot_id": boot_id(), "host": socket.gethostname()})
    buffered = b""
    launching: dict[int, Json] = {}  # pipe fd -> a launch waiting for its supervisor's report
    try:
        while True:
            wait = min((p["deadline"] for p in launching.values()), default=None)
            ready, _, _ = select.select(
                [*launching, 0, sock.fileno()],
                [],
                [],
                None if wait is None else max(0.0, wait - time.monotonic()),
            )
            _answer_launches(launching, ready)  # replies before exit events
            if sock.fileno() in ready:
                try:
                    note = json.loads(sock.recv(65536))
                    job, rank = str(note["job"]), int(note["rank"])
                    directory = find_run(root, job, rank, note.get("pid"))
                    record = read_json(os.path.join(directory, "exit.json"))
                except (ValueError, KeyError, TypeError):
                    record = None
                if record is not None:
                    _write(
                        {
                            "event": "exit",
                            "job": note["job"],
                            "rank": note["rank"],
                            "record": record,
                        }
                    )
            if 0 in ready:
                chunk = os.read(0, 65536)
                if not chunk:
                    return
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    if not line.strip():
                        continue
                    request: Json = {}
                    try:
                        request = json.loads(line)
                        result = handle(root, request)
                        if "pending" in result:  # answered when the supervisor reports
                            launching[result["pending"]] = {
                                **result,
                                "id": request.get("id"),
                                "report": b"",
                            }
                            now, _, _ = select.select(list(launching), [], [], 0)
                            _answer_launches(launching, now)  # a burst: answer as we go
                            continue
                        reply = {"id": request.get("id"), "ok": True, **result}
                    except Exception as exc:  # one bad request must not end the agent
                        reply = {
                            "id": request.get("id"),
                            "ok": False,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    _write(reply)
    except BrokenPipeError:
        return
    finally:
        with contextlib.suppress(OSError):
            if os.stat(SOCK_NAME).st_ino == mine:
                os.unlink(SOCK_NAME)


def main(argv: list[str]) -> int:
    if len(argv) in (2, 3) and argv[0] == "agent":
        agent(argv[1], *(float(a) for a in argv[2:]))
        return 0
    sys.stderr.write("usage: supervisor.py agent ROOT [KEEP_SECONDS]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
