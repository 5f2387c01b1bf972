"""The ``gpufleet`` command. Sub-commands live beside the capability they drive and are imported
only when used, so ``gpufleet agent`` never loads the server, the database or scikit-learn."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import click

from gpufleet import __version__, i18n
from gpufleet.i18n import N_, clickhelp

# name -> (module, attribute, one-line help shown in `gpufleet --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "server": (
        "gpufleet.server.cli",
        "server",
        N_("Run the gpufleet server (ingest, API, SSH poller)."),
    ),
    "token": ("gpufleet.server.cli", "token", N_("Create, list and revoke agent tokens.")),
    "user": ("gpufleet.accounts.cli", "user", N_("Create, list, change and delete web users.")),
    "migrate-store": (
        "gpufleet.store.cli",
        "migrate_store",
        N_("Copy an embedded (DuckDB) store into PostgreSQL without loss."),
    ),
    "agent": (
        "gpufleet.agent.cli",
        "agent",
        N_("Collect this machine's GPU and host metrics and push them."),
    ),
    "demo": (
        "gpufleet.demo.cli",
        "demo",
        N_("Start a server, a local agent and a replayed fleet of GPU servers."),
    ),
    "simulate": (
        "gpufleet.sched.cli",
        "simulate",
        N_("Replay a job trace through scheduling policies."),
    ),
    "predictor": (
        "gpufleet.sched.cli",
        "predictor",
        N_("Train and evaluate the job runtime/memory predictor."),
    ),
    "report": (
        "gpufleet.reports.cli",
        "report",
        N_("Usage report (GPU-hours, utilisation, energy, idle) by period and user/host/GPU."),
    ),
    "recommend": (
        "gpufleet.recommend.cli",
        "recommend",
        N_("Where to run a job now: ranked GPUs with reasons (or when something frees up)."),
    ),
    "evaluate-recommender": (
        "gpufleet.recommend.cli",
        "evaluate_recommender",
        N_("Score the recommender against simple rules on the replayed Philly trace."),
    ),
    "rollup": (
        "gpufleet.reports.cli",
        "rollup",
        N_("Roll raw samples up into the warehouse tiers (backfill; the server does it itself)."),
    ),
    "alerts": (
        "gpufleet.alerts.cli",
        "alerts",
        N_("Firing and pending alerts (and --history), with what mutes them."),
    ),
    "silence": (
        "gpufleet.alerts.cli",
        "silence",
        N_("Silence alerts for a while: add, list, expire."),
    ),
    "usermap": (
        "gpufleet.usermap.cli",
        "usermap",
        N_("Map Unix users to people, groups and e-mail addresses (reports, idle-GPU notices)."),
    ),
    "submit": (
        "gpufleet.queue.cli",
        "submit",
        N_("Submit a job to the queue (spec or Kubernetes Job)."),
    ),
    "jobs": (
        "gpufleet.queue.cli",
        "jobs",
        N_("The job queue: waiting (and why), running, history."),
    ),
    "job": ("gpufleet.queue.cli", "job", N_("One queued job with its event log.")),
    "cancel": ("gpufleet.queue.cli", "cancel", N_("Cancel a queued or running job.")),
    "hold": ("gpufleet.queue.cli", "hold", N_("Hold a pending job.")),
    "release": ("gpufleet.queue.cli", "release", N_("Release a held job.")),
    "logs": ("gpufleet.queue.cli", "logs", N_("The end of a job's output.")),
    "priority": ("gpufleet.queue.cli", "priority", N_("Set a queued job's priority (admins).")),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Show the one-line help without importing every sub-command's dependencies.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="gpufleet")
@click.option(
    "--log-level",
    default=lambda: os.environ.get("GPUFLEET_LOG_LEVEL", "info"),
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    show_default="info, or $GPUFLEET_LOG_LEVEL",
    help="How much to log (to stderr).",
)
def cli(log_level: str) -> None:
    """gpufleet watches a lab's GPU servers: live state, usage warehouse, recommendations,
    alerts and a job scheduler.

    Start with `gpufleet server` on one machine and `gpufleet agent --server URL --token TOKEN`
    on each GPU server (create the token with `gpufleet token create NAME`).
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if log_level.upper() != "DEBUG":  # one INFO line per HTTP request is noise, not news
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


def configured_language(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """``ui.language`` of the config file the command will read (``--config``/``-c`` or
    ``$GPUFLEET_CONFIG``), or None. Read before the command runs, so that its ``--help`` and
    usage errors are already in that language; a broken file is left for the command to
    report (in English, then)."""
    path = environ.get("GPUFLEET_CONFIG")
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    if not path:
        return None
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        value = data["ui"]["language"]
    except Exception:
        return None
    return i18n.normalize(value) if isinstance(value, str) else None


def main() -> None:
    """``gpufleet``: in the language of ``$GPUFLEET_LANG``, the config's ``ui.language``, or
    the locale (``LC_ALL``, ``LC_MESSAGES``, ``LANG``), docs/i18n.md."""
    environ = os.environ
    i18n.current.set(i18n.cli_language(environ, configured_language(sys.argv[1:], environ)))
    clickhelp.install()
    cli(prog_name="gpufleet")
