"""The queue from the command line against a real server process on loopback (replay
dispatcher), and the reliability test: SIGKILL the server while jobs run and wait."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import gpufleet_here, make_batch, make_sample

pytestmark = pytest.mark.slow


def config(tmp_path, **queue) -> str:
    path = tmp_path / "gpufleet.yaml"
    settings = {"dispatcher": "replay", "refresh_seconds": 0.2, **queue}
    path.write_text(json.dumps({"queue": settings}))
    return str(path)


class Heartbeat:
    """Hosts that keep reporting (idle GPUs) while the test runs, as agents would."""

    def __init__(self, srv, hosts: int, gpus: int) -> None:
        self.srv, self.hosts, self.gpus = srv, hosts, gpus
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def beat(self) -> None:
        samples = []
        for h in range(self.hosts):
            s = make_sample(f"node{h:02d}", ts=time.time(), gpus=self.gpus, procs=0)
            idle = [g.model_copy(update={"memory_used_bytes": 0}) for g in s.gpus]
            samples.append(s.model_copy(update={"gpus": idle, "interval_seconds": 1.0}))
        try:
            self.srv.post(make_batch(*samples))
        except Exception:
            pass  # the server is down for a moment (the reliability test)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.beat()

    def __enter__(self):
        self.beat()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def cli(srv, *args: str, **kw):
    r = gpufleet_here(*args, "--data-dir", str(srv.data_dir), **kw)
    return r


def wait(check, deadline: float = 120.0, step: float = 0.3):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(step)
    raise AssertionError("condition not met before the deadline")


def states(srv) -> dict[int, str]:
    r = cli(srv, "jobs", "--json")
    assert r.returncode == 0, r.stderr
    return {j["id"]: j["state"] for j in json.loads(r.stdout)["jobs"]}


def api_jobs(srv, **params) -> list[dict]:
    """The JSON ``gpufleet jobs --json`` prints, from the API: for the waits, which would
    otherwise start a CLI process (a second of CPU) every poll."""
    admin = {"Authorization": f"Bearer {(srv.data_dir / 'admin.key').read_text().strip()}"}
    r = httpx.get(srv.url + "/api/v1/admin/jobs", params=params, headers=admin, timeout=30)
    r.raise_for_status()
    return r.json()["jobs"]


def api_states(srv) -> dict[int, str]:
    return {j["id"]: j["state"] for j in api_jobs(srv)}


def test_submit_jobs_cancel_hold_release_logs(tmp_path, server_factory):
    srv = server_factory("--config", config(tmp_path))
    with Heartbeat(srv, hosts=1, gpus=2):
        spec = tmp_path / "job.yaml"
        spec.write_text("name: train\ngpus: 1\nmodel_name: resnet50\nepochs: 1\ncommand: sleep 1\n")
        r = cli(srv, "submit", str(spec), "--user", "ann")
        assert r.returncode == 0, r.stderr
        first = int(r.stdout)
        k8s = tmp_path / "k8s.yaml"
        k8s.write_text(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: k\n  namespace: lab\n"
            "  annotations: {model_name: bert, data_size: '2', epoch: '1'}\nspec:\n  template:\n"
            "    spec:\n      containers:\n      - name: c\n        command: [sleep, '600']\n"
            "        resources: {limits: {nvidia.com/gpu: 1}}\n"
        )
        long = int(cli(srv, "submit", str(k8s)).stdout)
        held = int(cli(srv, "submit", str(spec), "--hold").stdout)
        wait(lambda: api_states(srv).get(first) == "succeeded")
        wait(lambda: api_states(srv).get(long) == "running")
        assert states(srv)[held] == "held"
        assert "no logs kept" in cli(srv, "logs", str(first)).stdout
        assert cli(srv, "cancel", str(long)).returncode == 0
        wait(lambda: api_states(srv).get(long) == "cancelled")
        assert cli(srv, "release", str(held)).stdout.strip() == f"job {held}: pending"
        wait(lambda: api_states(srv).get(held) == "succeeded")
        job = json.loads(cli(srv, "job", str(long)).stdout)
        assert job["user"] == "lab" and job["events"][-1]["state"] == "cancelled"
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: x\ngpus: true\nmodel_name: m\nepochs: 1\ncommand: sleep 1\n")
        r = cli(srv, "submit", str(bad))
        assert r.returncode != 0 and "gpus: must be a non-negative number, got true" in r.stderr
        table = cli(srv, "jobs")
        assert table.returncode == 0 and "policy gpufleet" in table.stdout
        r = cli(srv, "cancel", str(first))
        assert r.returncode != 0 and "nothing to cancel" in r.stderr


def test_sigkill_the_server_while_jobs_run_and_wait(tmp_path, server_factory):
    """50 jobs run and 200 wait (local dispatcher: each job a real process under its detached
    supervisor, which outlives the server); SIGKILL the server; after the restart every job
    ends succeeded, each ran exactly once (the jobs write their id to a file), none is lost.
    The first 50 run until the test opens a gate after the restart (a file they wait for), so
    they are running across the kill however long the restart takes, and no longer."""
    ran = tmp_path / "ran.txt"
    gate = tmp_path / "gate"
    srv = server_factory("--config", config(tmp_path, dispatcher="local", policy="fifo"))

    def counts() -> dict[str, int]:
        got = [j["state"] for j in api_jobs(srv)]
        return {k: got.count(k) for k in set(got)}

    with Heartbeat(srv, hosts=25, gpus=2):
        admin = {"Authorization": f"Bearer {(srv.data_dir / 'admin.key').read_text().strip()}"}
        ids = []
        for k in range(250):  # FIFO: the first 50 run until the gate opens, 200 wait
            until = f"while [ ! -e {gate} ]; do sleep 0.5; done" if k < 50 else "sleep 1"
            command = ["sh", "-c", f'echo "$GPUFLEET_JOB_ID" >> {ran}; {until}']
            spec = {"name": f"w{k}", "user": "ann", "gpus": 1, "model_name": "m", "epochs": 1,
                    "command": command}  # fmt: skip
            r = httpx.post(srv.url + "/api/v1/admin/jobs", json=spec, headers=admin, timeout=30)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

        seen = wait(lambda: (c := counts()).get("running") == 50 and c, deadline=300, step=0.5)
        assert seen == {"running": 50, "pending": 200}, seen
        srv.kill()
        srv.start()
        seen = wait(lambda: (c := counts()).get("running") == 50 and c, deadline=300, step=0.5)
        assert seen == {"running": 50, "pending": 200}, seen  # nothing started twice or lost
        gate.touch()
        wait(lambda: len(api_jobs(srv, state="succeeded")) == len(ids), deadline=600, step=1.0)
    r = cli(srv, "jobs", "--state", "succeeded", "--json")  # and as the command line says it
    assert r.returncode == 0, r.stderr
    final = [j["id"] for j in json.loads(r.stdout)["jobs"]]
    assert sorted(final) == sorted(ids)
    lines = ran.read_text().split()
    assert sorted(int(x) for x in lines) == sorted(ids), "every job ran exactly once"
