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
from gpufleet.server.local import SERVER_FILE, config_option, data_dir_option, settings_from

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.I)


def parse_gb(text: str, flag: str = "--gpu-mem") -> float:
    """``40G``, ``40GB``, ``40GiB``, ``40`` (GB), ``512M``, ``1T`` -> GB (1 GB = 2^30 bytes, as
    GPU memory is counted)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size; write it like 40G, 40GB or 512M",
                                 param_hint=flag)  # fmt: skip
    value = float(m.group(1))
    unit = (m.group(2) or "g").lower()
    return value * {"k": 2**-20, "m": 2**-10, "g": 1.0, "t": 1024.0}[unit]


def _body(gpus: int, gpu_mem: str, hours: float, gpu_model: tuple[str, ...], model: str | None,
          data_gb: float | None, data_host: str | None, multi_host: bool, limit: int) -> dict:  # fmt: skip
    body: dict[str, Any] = {"gpus": gpus, "gpu_mem_gb": parse_gb(gpu_mem), "hours": hours,
                            "limit": limit}  # fmt: skip
    if gpu_model:
        body["gpu_models"] = [m for g in gpu_model for m in g.split(",") if m.strip()]
    if model:
        body["model"] = model
    if data_gb is not None:
        body["data_gb"] = data_gb
    if data_host:
        body["data_host"] = data_host
    if multi_host:
        body["multi_host"] = True
    return body


FLAG_OF = {"gpus": "--gpus", "gpu_mem_gb": "--gpu-mem", "hours": "--hours",
           "gpu_models": "--gpu-model", "model": "--model", "data_gb": "--data-gb",
           "data_host": "--data-host", "multi_host": "--multi-host", "limit": "--limit"}  # fmt: skip


def _raise_invalid(details: list[dict], message: str) -> None:
    first = details[0] if details else {"loc": "", "msg": message}
    field = re.split(r"[.\[]", str(first.get("loc", "")))[0]
    flag = FLAG_OF.get(field, field or "request")
    raise GpufleetError(
        f"{flag}: {first.get('msg', message)}", hint="see `gpufleet recommend --help`"
    )


def _ask_server(server: str, body: dict) -> dict:
    import httpx

    url = server.rstrip("/") + "/api/v1/recommendations"
    try:
        r = httpx.post(url, json=body, timeout=30)
    except httpx.HTTPError as exc:
        raise GpufleetError(
            f"cannot reach {url}: {exc}", hint="is the server running? check --server"
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
            f"{url}: {r.status_code}: {msg}", hint="see `gpufleet recommend --help`"
        )
    return r.json()


def _ask_local(settings: Any, body: dict) -> dict:
    """No server: the store's last sample of every host and its hour tier."""
    from pydantic import ValidationError

    from gpufleet.recommend.rank import FleetIndex, Weights, recommend
    from gpufleet.recommend.request import request_from_any
    from gpufleet.recommend.service import load_history, snapshot_from_live
    from gpufleet.server.errors import summarise, validation_details
    from gpufleet.server.live import LiveState
    from gpufleet.store import StoreError, open_store

    try:
        store = open_store(settings.database_url)
    except StoreError as exc:
        raise GpufleetError(str(exc), hint="a gpufleet server owns this store: ask it with "
                            "--server http://HOST:PORT (or set GPUFLEET_SERVER)") from None  # fmt: skip
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
    recs = data.get("recommendations") or []
    if not recs:
        click.echo(f"nothing fits now: {data.get('note') or ''}")
        eta = data.get("eta")
        if eta:
            click.echo(f"most likely soonest: {eta['host']} GPU {','.join(map(str, eta['gpus']))}"
                       f" in ~{eta['in_hours']} h ({eta['at_iso']})")  # fmt: skip
            click.echo(f"  {eta['reason']}")
        return
    for i, r in enumerate(recs, 1):
        click.echo(f"{i}. {r['host']}  GPU {','.join(map(str, r['gpus']))}  "
                   f"score {r['score']:.3f}  {round(100 * r['p_free_for_duration'])}% stays free")  # fmt: skip
        for why in r["reasons"]:
            click.echo(f"     - {why}")
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
@click.option("--data-gb", type=click.FloatRange(min=0), help="Size of the data set in GB.")
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
              data_gb: float | None, data_host: str | None, multi_host: bool, limit: int,
              as_json: bool, server: str | None, wait: bool, poll: float, timeout: float,
              config_path: str | None, data_dir: Path | None) -> None:  # fmt: skip
    """Where should a job run now? Ranked GPU sets with the reasons and a copy-paste
    ``CUDA_VISIBLE_DEVICES=... ssh HOST`` line; when nothing fits, when and where it likely will.

      gpufleet recommend --gpus 2 --gpu-mem 40G --hours 6 --model resnet50

      gpufleet recommend --gpus 1 --gpu-mem 24G --hours 2 --wait --timeout 1800
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
    body = _body(gpus, gpu_mem, hours, gpu_model, model, data_gb, data_host, multi_host, limit)
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
            click.echo(f"waiting (asking every {poll:g} s, up to {timeout:g} s)...", err=True)
            said = True
        if time.monotonic() + poll > deadline:
            if as_json:
                click.echo(json.dumps(data, indent=2))
            raise GpufleetError(
                f"nothing fitting freed up within {timeout:g} s",
                hint="raise --timeout, or relax --gpu-mem / --gpu-model / --gpus",
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
@click.option("--quick", is_flag=True, help="A small fleet and a few days (for tests): seconds.")
@click.option("--hosts", type=click.IntRange(4, 2000), help="Simulated hosts (default 40).")
@click.option(
    "--days", type=click.FloatRange(min=1), help="Evaluated days after the warm-up (default 35)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--trace",
    type=click.Path(dir_okay=False),
    help="philly_jobs.csv (default: the one shipped with gpufleet).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def evaluate_recommender(quick: bool, hosts: int | None, days: float | None, seed: int,
                         trace: str | None, as_json: bool) -> None:  # fmt: skip
    """Replay philly_jobs.csv onto a simulated fleet and score the recommender against four
    simple rules: hit rate, wait, load spread, latency at 1,000 hosts (docs/recommender.md)."""
    from gpufleet.demo.trace import load_trace
    from gpufleet.recommend.evaluate import Config, evaluate, table_text

    cfg = Config.quick() if quick else Config()
    if hosts is not None:
        cfg.hosts = hosts
    if days is not None:
        cfg.eval_days = days
    cfg.seed = seed
    jobs = load_trace(trace)
    say = (lambda m: click.echo(m, err=True)) if not as_json else None
    result = evaluate(jobs, cfg, progress=say)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    f = result["fleet"]
    click.echo(f"fleet: {cfg.hosts} hosts: " + ", ".join(
        f"{x['hosts']} x {x['gpus_per_host']}x {x['gpu']} ({x['gpu_memory_gb']} GB)" for x in f))  # fmt: skip
    click.echo(f"trace: {result['jobs']} jobs, {cfg.start} + {cfg.warmup_days:g} d warm-up,"
               f" {cfg.eval_days:g} d scored; fleet busy {result['shadow_fleet_busy_share']:.0%};"
               f" {result['requests_scored']} requests scored"
               f" ({result['requests_nothing_fits']} found nothing free)")  # fmt: skip
    click.echo(table_text(result))
    g = result["rows"][0]
    if g.get("latency_cold_p99_ms") is not None:
        click.echo(
            f"latency at {cfg.latency_hosts} hosts, one answer with its reasons: cached fleet "
            f"index p50 {g['latency_p50_ms']:.2f} ms, p99 {g['latency_p99_ms']:.2f} ms (CPU "
            f"{g['latency_cpu_p99_ms']:.2f} ms); index built for the answer p50 "
            f"{g['latency_cold_p50_ms']:.2f} ms, p99 {g['latency_cold_p99_ms']:.2f} ms (CPU "
            f"{g['latency_cold_cpu_p99_ms']:.2f} ms)"
        )
    click.echo(f"({result['wall_seconds']:.0f} s)")


def main() -> None:  # pragma: no cover - for python -m
    recommend(prog_name="gpufleet recommend")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("GPUFLEET_LOG_LEVEL", "warning")
    main()
