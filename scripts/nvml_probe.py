"""Check the agent's NVML collection path on a real GPU host, against ``nvidia-smi``.

Run on a machine with an NVIDIA driver (no gpufleet server needed), from the repository root:

    python scripts/nvml_probe.py --out /tmp/probe [--load-seconds 40]

It writes, under ``--out``:

- ``nvml_raw.json``: every NVML call the agent makes, per GPU, with its answer (structures as
  dicts) or its error class, and how long it took; read once idle and once under load. This is
  what the fake NVML (``gpufleet.agent.fakenvml``) has to look like.
- ``samples.json``: the agent's own samples (``Collector.collect``) idle and under load, each
  next to what ``nvidia-smi --query-gpu`` / ``--query-compute-apps`` printed at the same moment,
  and the time each collection round took.
- with each of a few samples, the agent-less poller's script (what ``gpufleet server`` runs
  over SSH on a host without the agent) run on this machine, its output and its time.
- ``jobs.json`` (with ``--jobs``): real GPU jobs run under the job queue's supervisor
  (``queue/dispatch/supervisor.py``, what the SSH and local dispatchers start on a host): one
  that fits, and PyTorch, JAX and CuPy jobs that ask for more memory than the GPU has, each
  with its exit record (is it reported as ``oom``?) and the end of its output.
- ``agent.json``: ``gpufleet agent`` run as a process for a few rounds (pushing to a server
  that is not there, so batches spool) with its RSS and CPU time, and its ``/metrics`` page.

The load is a PyTorch matrix-product loop holding ``--load-gib`` of GPU memory, started as a
child process so that the agent has a real GPU process to attribute. Without PyTorch the load
steps are skipped and said so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

SMI_GPU_FIELDS = (
    "index,uuid,name,utilization.gpu,utilization.memory,memory.used,memory.total,"
    "temperature.gpu,power.draw,power.limit,enforced.power.limit,fan.speed,clocks.sm,pstate,"
    "ecc.errors.uncorrected.volatile.total,driver_version"
)

LOAD = r"""
import sys, time, torch
gib, seconds = float(sys.argv[1]), float(sys.argv[2])
hold = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print("load: started", flush=True)
end = time.time() + seconds
while time.time() < end:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
print("load: done", flush=True)
"""


def plain(value: Any) -> Any:
    """An NVML answer as JSON: ctypes structures as dicts, bytes decoded, lists kept."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    fields = getattr(value, "_fields_", None)
    if fields:
        return {
            name: plain(getattr(value, name, None))
            for name, *_ in fields
            if not name.startswith("_")
        }
    if hasattr(value, "__dict__"):  # pynvml's nvmlFriendlyObject (process lists)
        return {k: plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return repr(value)


def call(pynvml: Any, name: str, *args: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        value = getattr(pynvml, name)(*args)
        out: dict[str, Any] = {"value": plain(value)}
    except Exception as exc:  # we record every answer, errors included
        out = {"error": type(exc).__name__, "text": str(exc)}
    out["ms"] = round((time.perf_counter() - start) * 1000, 3)
    return out


def raw_nvml() -> dict[str, Any]:
    import pynvml  # noqa: TID251 -- the probe records NVML raw, beside the gate it checks

    pynvml.nvmlInit()
    record: dict[str, Any] = {
        "pynvml_file": getattr(pynvml, "__file__", ""),
        "system": {
            n: call(pynvml, n)
            for n in (
                "nvmlSystemGetDriverVersion",
                "nvmlSystemGetCudaDriverVersion",
                "nvmlSystemGetNVMLVersion",
                "nvmlDeviceGetCount",
            )
        },
        "gpus": [],
    }
    count = pynvml.nvmlDeviceGetCount()
    event_set = pynvml.nvmlEventSetCreate()
    for i in range(count):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        g: dict[str, Any] = {"index": i}
        for name, args in (
            ("nvmlDeviceGetUUID", ()),
            ("nvmlDeviceGetName", ()),
            ("nvmlDeviceGetIndex", ()),
            ("nvmlDeviceGetUtilizationRates", ()),
            ("nvmlDeviceGetMemoryInfo", ()),
            ("nvmlDeviceGetMemoryInfo", (pynvml.nvmlMemory_v2,)),
            ("nvmlDeviceGetTemperature", (pynvml.NVML_TEMPERATURE_GPU,)),
            ("nvmlDeviceGetPowerUsage", ()),
            ("nvmlDeviceGetEnforcedPowerLimit", ()),
            ("nvmlDeviceGetFanSpeed", ()),
            ("nvmlDeviceGetClockInfo", (pynvml.NVML_CLOCK_SM,)),
            ("nvmlDeviceGetMaxClockInfo", (pynvml.NVML_CLOCK_SM,)),
            ("nvmlDeviceGetPerformanceState", ()),
            (
                "nvmlDeviceGetTotalEccErrors",
                (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
            ),
            ("nvmlDeviceGetComputeRunningProcesses", ()),
            ("nvmlDeviceGetGraphicsRunningProcesses", ()),
            ("nvmlDeviceGetSupportedEventTypes", ()),
            ("nvmlDeviceGetMigMode", ()),
            ("nvmlDeviceGetPciInfo", ()),
        ):
            g[name + ("_v2" if name in g else "")] = call(pynvml, name, h, *args)
        g["nvmlDeviceRegisterEvents"] = call(
            pynvml, "nvmlDeviceRegisterEvents", h, pynvml.nvmlEventTypeXidCriticalError, event_set
        )
        record["gpus"].append(g)
    record["nvmlEventSetWait_0ms"] = call(pynvml, "nvmlEventSetWait", event_set, 0)
    pynvml.nvmlEventSetFree(event_set)
    pynvml.nvmlShutdown()
    return record


def smi() -> dict[str, Any]:
    if not shutil.which("nvidia-smi"):
        return {"error": "nvidia-smi not on PATH"}
    gpus = subprocess.run(
        ["nvidia-smi", f"--query-gpu={SMI_GPU_FIELDS}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    apps = subprocess.run(
        [
            "nvidia-smi",
            "--query-compute-apps=pid,gpu_uuid,used_memory,process_name",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    names = SMI_GPU_FIELDS.split(",")
    rows = [dict(zip(names, (c.strip() for c in line.split(",")), strict=False))
            for line in gpus.stdout.splitlines() if line.strip()]  # fmt: skip
    return {
        "gpus": rows,
        "apps": [line.strip() for line in apps.stdout.splitlines() if line.strip()],
        "stderr": (gpus.stderr + apps.stderr)[-2000:],
    }


def poll(script: Path | None) -> dict[str, Any] | None:
    """The agent-less poller's script run here (no SSH), its whole output and wall time."""
    if script is None:
        return None
    start = time.perf_counter()
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - start
    return {"ms": round(took * 1000, 1), "rc": done.returncode, "output": done.stdout}


def collect_rounds(
    collector: Any, n: int, pause: float, script: Path | None = None
) -> list[dict[str, Any]]:
    rounds = []
    for i in range(n):
        start = time.perf_counter()
        sample = collector.collect()
        took = time.perf_counter() - start
        rounds.append(
            {
                "collect_ms": round(took * 1000, 2),
                "sample": sample.model_dump(mode="json"),
                "smi": smi(),
                "poll": poll(script) if i in (1, n - 1) else None,
            }
        )
        time.sleep(pause)
    return rounds


JOBS = {
    "torch_fits": "import torch; x = torch.ones(2**28, device='cuda'); print('sum', x.sum().item(),"
    " 'devices', torch.cuda.device_count())",
    "torch_oom": "import torch; torch.empty(400 * 2**30, dtype=torch.uint8, device='cuda')",
    "jax_oom": "import jax.numpy as jnp; jnp.zeros((100 * 2**30,), jnp.float32).block_until_ready()",
    "cupy_oom": "import cupy; cupy.empty(400 * 2**30, dtype=cupy.uint8)",
    "plain_failure": "raise SystemExit(3)",
}


def run_jobs(seconds: float = 180.0) -> dict[str, Any]:
    """Each of JOBS launched through the supervisor's agent protocol; their exit records."""
    import select

    root = tempfile.mkdtemp(prefix="gpufleet-probe-jobs-")
    sup = ROOT / "src" / "gpufleet" / "queue" / "dispatch" / "supervisor.py"
    agent = subprocess.Popen([sys.executable, str(sup), "agent", root], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, bufsize=1)  # fmt: skip
    assert agent.stdin is not None and agent.stdout is not None
    env = {"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    for i, (name, code) in enumerate(JOBS.items()):
        spec = {"job_id": name, "rank": 0, "argv": [sys.executable, "-c", code], "env": env,
                "workdir": root, "host": "probe"}  # fmt: skip
        agent.stdin.write(json.dumps({"id": i, "op": "launch", "spec": spec}) + "\n")
    records: dict[str, Any] = {}
    deadline = time.time() + seconds
    while len(records) < len(JOBS) and time.time() < deadline:
        ready, _, _ = select.select([agent.stdout], [], [], 1.0)
        if not ready:
            continue
        line = agent.stdout.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg.get("event") == "exit":
            records[msg["job"]] = msg.get("record")
    out: dict[str, Any] = {}
    for name in JOBS:
        log = Path(root) / name / "0" / "output.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        out[name] = {"record": records.get(name), "output_tail": text[-3000:]}
    agent.stdin.close()
    agent.wait(timeout=30)
    return out


def run_agent(out: Path, seconds: float) -> dict[str, Any]:
    import urllib.request

    import psutil

    spool = Path(tempfile.mkdtemp(prefix="gpufleet-probe-spool-"))
    cmd = [
        sys.executable,
        "-c",
        "from gpufleet.agent.cli import agent; agent()",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "probe",
        "--interval",
        "1",
        "--spool-dir",
        str(spool),
        "--metrics-port",
        "9464",
    ]
    path = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    rss = []
    metrics = ""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        rss.append(ps.memory_info().rss)
        time.sleep(1)
    try:
        with urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=5) as r:
            metrics = r.read().decode()
    except Exception as exc:
        metrics = f"error: {exc}"
    cpu = ps.cpu_times() if proc.poll() is None else None
    proc.terminate()
    try:
        log, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
    return {
        "seconds": seconds,
        "exit": proc.returncode,
        "rss_bytes_max": max(rss) if rss else None,
        "rss_bytes_last": rss[-1] if rss else None,
        "cpu_user_s": cpu.user if cpu else None,
        "cpu_system_s": cpu.system if cpu else None,
        "spooled_files": sorted(p.name for p in spool.rglob("*") if p.is_file())[:50],
        "metrics": metrics[:20000],
        "log": log.decode(errors="replace")[-8000:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--load-seconds", type=float, default=40)
    ap.add_argument("--load-gib", type=float, default=24)
    ap.add_argument("--agent-seconds", type=float, default=12)
    ap.add_argument("--jobs", action="store_true", help="also run the GPU jobs (jobs.json)")
    ap.add_argument(
        "--poll-script",
        type=Path,
        help="the agent-less poller's script (gpufleet.poller.ssh.poll_script) to run too",
    )
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    def save(name: str, data: Any) -> None:
        (out / name).write_text(json.dumps(data, indent=1, default=repr))

    from gpufleet.agent.collect import Collector

    if args.poll_script is None:
        try:
            from gpufleet.poller.ssh import poll_script
        except ImportError as exc:  # asyncssh missing: the agent alone is checked
            print(f"agent-less poll skipped ({exc})", flush=True)
        else:
            args.poll_script = out / "poll.sh"
            args.poll_script.write_text(poll_script(10))

    raw: dict[str, Any] = {"idle": raw_nvml()}
    save("nvml_raw.json", raw)
    print("raw NVML idle: recorded", flush=True)

    collector = Collector(host_name="probe")
    samples: dict[str, Any] = {"idle": collect_rounds(collector, 6, 0.5, args.poll_script)}
    save("samples.json", samples)
    print("samples idle:", [r["collect_ms"] for r in samples["idle"]], flush=True)

    load = None
    try:
        import torch  # noqa: F401

        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, str(args.load_gib), str(args.load_seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = load.stdout.readline() if load.stdout else ""
        print(line.strip(), "pid", load.pid, flush=True)
        time.sleep(3)
    except ImportError:
        print("no PyTorch: load steps skipped", flush=True)
    if load is not None:
        samples["load_pid"] = load.pid
        samples["load"] = collect_rounds(collector, 10, 1.0, args.poll_script)
        save("samples.json", samples)
        print("samples under load:", [r["collect_ms"] for r in samples["load"]], flush=True)
        raw["load"] = raw_nvml()
        save("nvml_raw.json", raw)
        print("raw NVML under load: recorded", flush=True)
    collector.close()

    if args.jobs:
        save("jobs.json", run_jobs())
        print("jobs:", {k: (v["record"] or {}).get("reason") for k, v in
                        json.loads((out / "jobs.json").read_text()).items()}, flush=True)  # fmt: skip
    save("agent.json", run_agent(out, args.agent_seconds))
    print("agent run: recorded", flush=True)
    if load is not None:
        load.terminate()
        load.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
