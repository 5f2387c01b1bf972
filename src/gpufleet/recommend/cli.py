"""``gpufleet recommend`` (ask where to run) and ``gpufleet evaluate-recommender`` (the harness)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from gpufleet.errors import GpufleetError
from gpufleet.http.local import SERVER_FILE, config_option, data_dir_option, settings_from
from gpufleet.i18n import _, render

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.I)


def parse_gib(text: str, flag: str = "--gpu-mem") -> float:
    """``40G``, ``40GB``, ``40GiB``, ``40`` (GiB), ``512M``, ``1T`` -> GiB: a "G" is 2^30 bytes
    here, as GPU makers count memory (an "80GB" A100 holds 80 GiB)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise click.BadParameter(_("{text!r} is not a size; write it like 40G, 40GB or 512M",
                                   text=text), param_hint=flag)  # fmt: skip
    value = float(m.group(1))
    unit = (m.group(2) or "g").lower()
    return value * {"k": 2**-20, "m": 2**-10, "g": 1.0, "t": 1024.0}[unit]


def _body(gpus: int, gpu_mem: str, hours: float, gpu_model: tuple[str, ...], model: str | None,
          data_size: str | None, data_host: str | None, multi_host: bool, limit: int) -> dict:  # fmt: skip
    body: dict[str, Any] = {"gpus": gpus, "gpu_mem_gib": parse_gib(gpu_mem), "hours": hours,
                            "limit": limit}  # fmt: skip
    if gpu_model:
        body["gpu_models"] = [m for g in gpu_model for m in g.split(",") if m.strip()]
    if model:
        body["model"] = model
    if data_size is not None:
        body["data_gib"] = parse_gib(data_size, "--data-size")
    if data_host:
        body["data_host"] = data_host
    if multi_host:
        body["multi_host"] = True
    return body


FLAG_OF = {"gpus": "--gpus", "gpu_mem_gib": "--gpu-mem", "hours": "--hours",
           "gpu_models": "--gpu-model", "model": "--model", "data_gib": "--data-size",
           "data_host": "--data-host", "multi_host": "--multi-host", "limit": "--limit"}  # fmt: skip


def _raise_invalid(details: list[dict], message: str) -> None:
    first = details[0] if details else {"loc": "", "msg": message}
    field = re.split(r"[.\[]", str(first.get("loc", "")))[0]
    flag = FLAG_OF.get(field, field or "request")
    raise GpufleetError(
        f"{flag}: {first.get('msg', message)}", hint=_("see `gpufleet recommend --help`")
    )


def _ask_server(server: str, body: dict) -> dict:
    import httpx

    url = server.rstrip("/") + "/api/v1/recommendations"
    try:
        r = httpx.post(url, json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise GpufleetError(
            _("cannot reach {url}: {error}", url=url, error=exc),
            hint=_("is the server running? check --server"),
        ) from None
    if r.status_code == 422:
        err = r.json()["error"]
        _raise_invalid(err.get("details") or [], err["message"])
    if r.status_code != 200:
        try:
            msg = r.json()["error"]["message"]
        except Exception:
            msg = r.text[:200]
        raise GpufleetError(
            f"{url}: {r.status_code}: {msg}", hint=_("see `gpufleet recommend --help`")
        )
    return r.json()


def _ask_local(settings: Any, body: dict) -> dict:
    """No server: the store's last sample of every host and its hour tier."""
    from pydantic import ValidationError

    from gpufleet.http.errors import summarise, validation_details
    from gpufleet.live.state import LiveState
    from gpufleet.recommend.rank import FleetIndex, Weights, recommend
    from gpufleet.recommend.request import request_from_any
    from gpufleet.recommend.service import load_history, snapshot_from_live
    from gpufleet.store import StoreError, open_store

    try:
        store = open_store(settings.database_url)
    except StoreError as exc:
        raise GpufleetError(str(exc), hint=_(
            "a gpufleet server owns this store: ask it instead with "
            "--server http://HOST:PORT (or set GPUFLEET_SERVER)")) from None  # fmt: skip
    try:
        now = time.time()
        live = LiveState(status_cfg={
            "stale_after_intervals": settings.status.stale_after_intervals,
            "offline_after_seconds": settings.status.offline_after_seconds,
        })  # fmt: skip
        live.load(store.hosts())
        try:
            hist = load_history(store, now, settings.recommend.history_days)
        except StoreError:
            from gpufleet.recommend.history import FleetHistory

            hist = FleetHistory()
    finally:
        store.close()
    snap = snapshot_from_live(live, now)
    try:
        req = request_from_any(body, snap)
    except ValidationError as exc:
        details = validation_details(exc)
        _raise_invalid(details, summarise(details))
        raise  # unreachable
    w = Weights(copy_gbit_per_second=settings.recommend.copy_gbit_per_second)
    ans = recommend(req, snap, hist, weights=w, tz=settings.warehouse.timezone,
                    index=FleetIndex(snap, hist))  # fmt: skip
    return ans.as_json()


def _print_answer(data: dict) -> None:
    from gpufleet.recommend.rank import pct

    recs = data.get("recommendations") or []
    if not recs:
        note = render(data.get("note_i18n") or data.get("note"))  # the CLI's language
        click.echo(_("nothing fits now: {note}", note=note))
        eta = data.get("eta")
        if eta:
            click.echo(_(
                "most likely soonest: {host} GPU {gpus} in ~{hours} h (80% range {low}-{high} h;"
                " {at})", host=eta["host"], gpus=",".join(map(str, eta["gpus"])),
                hours=eta["in_hours"], low=eta["low_hours"], high=eta["high_hours"],
                at=eta["at_iso"],
            ))  # fmt: skip
            click.echo(f"  {render(eta.get('reason_i18n') or eta['reason'])}")
        return
    click.echo(_("(order: the places about as safe as the safest first, the least used host"
                 " first; then by score)"))  # fmt: skip
    for i, r in enumerate(recs, 1):
        where = " + ".join(f"{p['host']}  GPU {','.join(map(str, p['gpus']))}" for p in r["hosts"])
        why = (
            _(
                "about as safe as the safest, {hours} GPU-h served",
                hours=f"{r['gpu_hours_served'] or 0:.0f}",
            )
            if r.get("order") == "safe band"
            else _("score {score}", score=f"{r['score']:.3f}")
        )
        free = _("{percent} stays free", percent=pct(r["p_free_for_duration"]))
        click.echo(f"{i}. {where}  {free}  ({why})")  # fmt: skip
        # the reasons in the CLI's language (a server without reasons_i18n: its English)
        for why in r.get("reasons_i18n") or r["reasons"]:
            click.echo(f"     - {render(why)}")
        click.echo(f"     {r['command']}")


@click.command()
@click.option("--gpus", type=click.IntRange(1, 512), required=True, help="How many GPUs.")
@click.option(
    "--gpu-mem", required=True, metavar="SIZE", help="GPU memory per GPU: 40G, 24GB, 80GiB."
)
@click.option(
    "--hours",
    type=click.FloatRange(min=0, min_open=True),
    required=True,
    help="Expected run time in hours.",
)
@click.option(
    "--gpu-model",
    multiple=True,
    metavar="MODEL",
    help="Acceptable GPU model (repeat, or A100,V100).",
)
@click.option(
    "--model",
    metavar="TYPE",
    help="Model type (resnet50, bert, lstm, ...): prefer GPUs fast for it.",
)
@click.option(
    "--data-size",
    metavar="SIZE",
    help="Size of the data set: 120G, 1.5T, 800M (G = GiB, as --gpu-mem).",
)
@click.option("--data-host", metavar="HOST", help="The host the data set is on now.")
@click.option("--multi-host", is_flag=True, help="The GPUs may be on several hosts.")
@click.option("--limit", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.option("--server", envvar="GPUFLEET_SERVER", metavar="URL",
              help="Ask this server (default: $GPUFLEET_SERVER, the server running on the data "
              "dir, else the local store).")  # fmt: skip
@click.option("--wait", is_flag=True, help="When nothing fits, ask again until something does.")
@click.option(
    "--poll",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds between asks with --wait.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Give up waiting after this many seconds.",
)
@config_option
@data_dir_option
def recommend(gpus: int, gpu_mem: str, hours: float, gpu_model: tuple[str, ...], model: str | None,
              data_size: str | None, data_host: str | None, multi_host: bool, limit: int,
              as_json: bool, server: str | None, wait: bool, poll: float, timeout: float,
              config_path: str | None, data_dir: Path | None) -> None:  # fmt: skip
    """Where should a job run now? Ranked GPU sets with the reasons and a copy-paste
    ``CUDA_VISIBLE_DEVICES=... ssh HOST`` line; when nothing fits, when and where it likely will.

      gpufleet recommend --gpus 2 --gpu-mem 40G --hours 6 --model resnet50

      gpufleet recommend --gpus 1 --gpu-mem 24G --hours 2 --wait --timeout 1800
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
    body = _body(gpus, gpu_mem, hours, gpu_model, model, data_size, data_host, multi_host, limit)
    settings = settings_from(config_path, data_dir=data_dir)
    if not server:
        announced = Path(settings.server.data_dir) / SERVER_FILE
        if announced.is_file():
            try:
                server = json.loads(announced.read_text())["url"]
            except (OSError, ValueError, KeyError):
                server = None

    def ask() -> dict:
        return _ask_server(server, body) if server else _ask_local(settings, body)

    deadline = time.monotonic() + timeout
    data = ask()
    said = False
    while wait and not data.get("recommendations"):
        if not said and not as_json:
            _print_answer(data)
            click.echo(_("waiting (asking every {poll} s, up to {timeout} s)...",
                         poll=f"{poll:g}", timeout=f"{timeout:g}"), err=True)  # fmt: skip
            said = True
        if time.monotonic() + poll > deadline:
            if as_json:
                click.echo(json.dumps(data, indent=2))
            raise GpufleetError(
                _("nothing fitting freed up within {timeout} s", timeout=f"{timeout:g}"),
                hint=_("raise --timeout, or relax --gpu-mem / --gpu-model / --gpus"),
            )
        time.sleep(poll)
        data = ask()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _print_answer(data)
    if not data.get("recommendations") and not wait:
        sys.exit(3)


@click.command("evaluate-recommender")
@click.option("--vc", "vcs", multiple=True, metavar="ID",
              help="Virtual cluster(s) of the trace to replay (repeat); 'training' = the seven "
              "large ones of philly_jobs.csv, 'all' = every job together. Default: training.")  # fmt: skip
@click.option("--load", "loads", type=click.FloatRange(min=0.05, max=5), multiple=True,
              help="Arrival scaling: offered GPU-time / the lab's GPUs, averaged over the "
              "cluster's trace (repeat). Default: 1.0.")  # fmt: skip
@click.option("--habit", "habits", type=click.Choice(["lowest", "highest", "random", "popular",
              "mixed", "every"]), multiple=True,
              help="How everyone who does not ask picks hosts and GPUs (repeat; 'every' = all "
              "five). Default: every.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="The first seed.")
@click.option("--seeds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Seeds per scenario (the intervals are over seeds).")  # fmt: skip
@click.option("--trace", type=click.Path(dir_okay=False),
              help="A trace CSV (timestamp,duration,num_gpus,cluster; plain or .gz). Default: "
              "$GPUFLEET_TRACE, else the Philly trace shipped with gpufleet.")  # fmt: skip
@click.option("--hosts", type=click.IntRange(4, 200), help="Lab hosts (default 16).")
@click.option("--scored-jobs", type=click.IntRange(50, 100000),
              help="Jobs in the scored days (default 1200; the days follow from it).")  # fmt: skip
@click.option("--calibration/--no-calibration", default=True, show_default=True,
              help="Also measure the calibration of p_free_for_duration (a replay per seed "
              "where nobody follows the answers).")  # fmt: skip
@click.option("--latency/--no-latency", default=True, show_default=True,
              help="Also time answers at 1,000 hosts per path.")  # fmt: skip
@click.option("--quick", is_flag=True, help="A small lab and few jobs (for tests): seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def evaluate_recommender(vcs: tuple[str, ...], loads: tuple[float, ...], habits: tuple[str, ...],
                         seed: int, seeds: int, trace: str | None, hosts: int | None,
                         scored_jobs: int | None, calibration: bool, latency: bool, quick: bool,
                         as_json: bool) -> None:  # fmt: skip
    """Closed-loop evaluation: replay a trace's jobs onto a simulated lab where requesters go
    where each recommender says and hold those GPUs for their real run time, while everyone
    else follows a habit. Per cluster x load x habit: hit rate with 95% intervals over seeds,
    waits, load spread, utilisation; then calibration, time-to-free error and latency
    (docs/recommender.md).

      gpufleet evaluate-recommender --vc 11cb48 --load 0.8 --habit lowest --seeds 3
    """
    from gpufleet.philly import load_trace as read_trace
    from gpufleet.recommend.evalreport import run_grid, summary_text
    from gpufleet.recommend.evaluate import TRAINING_VCS, Config
    from gpufleet.recommend.evaluate import latency as time_latency
    from gpufleet.recommend.lab import HABITS

    cfg = Config.quick() if quick else Config()
    if hosts is not None:
        cfg.hosts = hosts
    if scored_jobs is not None:
        cfg.scored_jobs = scored_jobs
    jobs = read_trace(trace)
    known = sorted({j.cluster for j in jobs})
    chosen: list[str | None] = []
    for v in vcs or ("training",):
        if v == "training":
            chosen += [c for c in TRAINING_VCS if c in known]
        elif v == "all":
            chosen.append(None)
        elif v in known:
            chosen.append(v)
        else:
            raise GpufleetError(f"--vc: no cluster {v!r} in the trace",
                                hint=f"the trace has: {', '.join(known)}")  # fmt: skip
    if not chosen:
        raise GpufleetError("--vc: none of the training clusters is in this trace",
                            hint=f"name one with --vc; the trace has: {', '.join(known)}")  # fmt: skip
    hs = list(HABITS) if not habits or "every" in habits else list(dict.fromkeys(habits))

    def say(message: str) -> None:  # progress on stderr, also with --json
        click.echo(message, err=True)

    result = run_grid(jobs, cfg, chosen, list(loads or (1.0,)), hs,
                      list(range(seed, seed + seeds)), calibration=calibration, say=say)  # fmt: skip
    result["config"] = {"hosts": cfg.hosts, "scored_jobs": cfg.scored_jobs,
                        "request_every": cfg.request_every}  # fmt: skip
    if latency:
        n = 200 if quick else 1000
        say(f"timing answers at {n} hosts ...")
        result["latency"] = time_latency(n, 100 if quick else 300, seed)
        result["latency_hosts"] = n
    if as_json:
        click.echo(json.dumps(result, indent=1, default=str))
    else:
        click.echo(summary_text(result))


def main() -> None:  # pragma: no cover - for python -m
    recommend(prog_name="gpufleet recommend")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("GPUFLEET_LOG_LEVEL", "warning")
    main()
