"""``gpufleet submit | jobs | job | cancel | hold | release | logs | priority``: the job queue
from the command line. Run on the server's machine: they talk to the running server through
its data dir (the admin key), as ``gpufleet alerts`` does."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path
from typing import Any

import click
import yaml

from gpufleet.errors import GpufleetError
from gpufleet.http.local import config_option, data_dir_option, print_rows, settings_from
from gpufleet.i18n import N_, _, pgettext, render

API = "/api/v1/admin/jobs"


class _Server:
    def __init__(self, config_path: str | None, data_dir: Path | None) -> None:
        from gpufleet.http.local import running_server

        settings = settings_from(config_path, data_dir=data_dir)
        found = running_server(settings.server.data_dir)
        if found is None:
            raise GpufleetError(
                _(
                    "no gpufleet server is running with data dir {data_dir}",
                    data_dir=settings.server.data_dir,
                ),
                hint=_("start it (gpufleet server, with queue.dispatcher set) or pass --data-dir"),
            )
        self.url, self.key = found

    def call(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            r = httpx.request(method, self.url + path, timeout=30,
                              headers={"Authorization": f"Bearer {self.key}"}, **kw)  # fmt: skip
        except httpx.HTTPError as exc:
            raise GpufleetError(
                _("cannot reach the server at {url}: {error}", url=self.url, error=exc)
            ) from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            hint = _("gpufleet jobs lists the jobs") if r.status_code == 404 else None
            if r.status_code == 503:
                hint = _("set queue.dispatcher in the server's config (docs/queue.md)")
            raise GpufleetError(message, hint=hint)
        return (
            r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        )


def _fill_user(text: str, user: str) -> str:
    """A plain spec without ``user`` is submitted as ``user`` (the Unix user by default)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # the server names what is wrong
    if (
        isinstance(doc, dict)
        and "kind" not in doc
        and "apiVersion" not in doc
        and not doc.get("user")
    ):
        doc["user"] = user
        return json.dumps(doc)
    return text


@click.command("submit")
@click.argument("spec_file", type=click.File("r"))
@click.option("--hold", is_flag=True, help="Submit it held (release it with gpufleet release).")
@click.option("--user", default=getpass.getuser, show_default="your Unix user",
              help="Submit as this user when the spec names none.")  # fmt: skip
@config_option
@data_dir_option
def submit(spec_file: Any, hold: bool, user: str, config_path: str | None,
           data_dir: Path | None) -> None:  # fmt: skip
    """Submit a job: SPEC_FILE is a plain spec (YAML/JSON) or a Kubernetes batch/v1 Job with
    the model_name / data_size / epoch annotations ('-' reads stdin). Prints the job id."""
    text = _fill_user(spec_file.read(), user)
    job = _Server(config_path, data_dir).call("POST", API, content=text.encode(),
                                              params={"hold": "1"} if hold else {})  # fmt: skip
    click.echo(job["id"])


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@click.command("jobs")
@click.option("--state", help="Only jobs in this state (pending, running, succeeded, ...).")
@click.option("--user", help="Only this user's jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (what the API returns).")
@config_option
@data_dir_option
def jobs(state: str | None, user: str | None, as_json: bool, config_path: str | None,
         data_dir: Path | None) -> None:  # fmt: skip
    """The queue: waiting jobs (and why they wait), running jobs, recent history."""
    params = {k: v for k, v in (("state", state), ("user", user)) if v}
    data = _Server(config_path, data_dir).call("GET", API, params=params)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    now = data["now"]
    rows = []
    for j in data["jobs"]:
        where = "; ".join(f"{p['host']}:{','.join(map(str, p['gpu_indices']))}"
                          for p in j.get("placement") or [])  # fmt: skip
        # why it waits, in the CLI's language (a server without the message: its English)
        waits = render(j.get("waiting_reason_i18n") or j.get("waiting_reason"))
        note = waits or where or j.get("reason") or ""
        elapsed = j.get("elapsed_seconds") or j.get("runtime_seconds") or j.get("waited_seconds")
        state = pgettext("job state", j["state"])
        rows.append([j["id"], j["name"], j["user"], f"{j['gpus']:g}", state, _span(elapsed),
                     _span(j.get("predicted_runtime_seconds")), note])  # fmt: skip
    if not rows:
        click.echo(_("no jobs"))
        return
    print_rows(["id", _("name"), _("user"), _("GPUs"), _("state"), _("time"), _("predicted"),
                _("where / why")], rows)  # fmt: skip
    s = data["status"]
    click.echo(_("policy {policy}, dispatcher {dispatcher}; at {when}", policy=s["policy"],
                 dispatcher=s["dispatcher"], when=time.ctime(now)))  # fmt: skip


@click.command("job")
@click.argument("job_id", type=int)
@config_option
@data_dir_option
def job(job_id: int, config_path: str | None, data_dir: Path | None) -> None:
    """One job as JSON, with its event log."""
    click.echo(json.dumps(_Server(config_path, data_dir).call("GET", f"{API}/{job_id}"), indent=2))


def _action(name: str, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("job_id", type=int)
    @config_option
    @data_dir_option
    def command(job_id: int, config_path: str | None, data_dir: Path | None) -> None:
        done = _Server(config_path, data_dir).call("POST", f"{API}/{job_id}/{name}")
        click.echo(_("job {id}: {state}", id=job_id, state=done["state"]))

    return command


cancel = _action("cancel", N_("Cancel a job (a running one is stopped; CANCELLED follows)."))
hold = _action("hold", N_("Hold a pending job: it waits until released."))
release = _action("release", N_("Release a held job."))


@click.command("logs")
@click.argument("job_id", type=int)
@click.option("--tail-bytes", type=int, default=65536, show_default=True)
@config_option
@data_dir_option
def logs(job_id: int, tail_bytes: int, config_path: str | None, data_dir: Path | None) -> None:
    """The end of a job's output (stdout and stderr)."""
    text = _Server(config_path, data_dir).call("GET", f"{API}/{job_id}/logs",
                                               params={"tail_bytes": tail_bytes})  # fmt: skip
    click.echo(text, nl=False)


@click.command("priority")
@click.argument("job_id", type=int)
@click.argument("value", type=int)
@config_option
@data_dir_option
def priority(job_id: int, value: int, config_path: str | None, data_dir: Path | None) -> None:
    """Set a job's priority (admins): each step counts as submitting one hour earlier."""
    done = _Server(config_path, data_dir).call("PUT", f"{API}/{job_id}/priority",
                                               json={"priority": value})  # fmt: skip
    click.echo(f"job {job_id}: priority {done['priority']}")
