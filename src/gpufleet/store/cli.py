"""Store commands: ``gpufleet migrate-store`` (embedded DuckDB store -> PostgreSQL)."""

from __future__ import annotations

import sys

import click

from gpufleet.errors import GpufleetError
from gpufleet.i18n import _


@click.command("migrate-store")
@click.option(
    "--from", "source", required=True, metavar="PATH",
    help="The embedded store: a DuckDB file (e.g. gpufleet-data/gpufleet.duckdb) or duckdb:///PATH.",
)  # fmt: skip
@click.option(
    "--to", "target", required=True, metavar="URL",
    help="An empty PostgreSQL database, e.g. postgresql://gpufleet@db.example.org/gpufleet.",
)  # fmt: skip
def migrate_store(source: str, target: str) -> None:
    """Copy an embedded store into PostgreSQL without loss: agent tokens, web users, hosts, batch
    keys (so agents' retries stay duplicates), the raw tier and the usage tiers.

    The copy is one transaction whose row counts are checked before it commits: if anything
    fails, the target stays empty and the command can simply be run again. Stop the server
    that uses the store first; afterwards start it with `gpufleet server --database URL`.
    """
    from gpufleet.store import StoreError
    from gpufleet.store.postgres import redact
    from gpufleet.store.transfer import TargetNotEmpty, copy_to_postgres

    if not target.startswith(("postgresql://", "postgres://")):
        raise GpufleetError(
            _("--to must be a PostgreSQL URL, not {target!r}", target=target),
            hint=_("e.g. --to postgresql://USER@HOST/DBNAME"),
        )
    bar = click.progressbar(length=1, label="copying", show_pos=True, file=sys.stderr)
    shown = 0

    def progress(table: str, done: int, total: int) -> None:
        nonlocal shown
        bar.length = max(total, 1)
        bar.label = f"copying {table:<16}"
        bar.update(done - shown)
        shown = done

    try:
        with bar:
            counts = copy_to_postgres(source, target, progress)
    except TargetNotEmpty as exc:
        raise GpufleetError(
            str(exc),
            hint=_(
                "copy into an empty database: `createdb gpufleet`, then "
                "--to postgresql://USER@HOST/gpufleet (or drop the tables of the earlier copy)"
            ),
        ) from None
    except StoreError as exc:
        hint = (
            _("stop the gpufleet server that uses this store, then run the command again")
            if "cannot open the store" in str(exc)
            else _(
                "check the URL and that PostgreSQL is running; nothing was kept, so run it again"
            )
        )
        raise GpufleetError(str(exc), hint=hint) from None
    width = max(map(len, counts), default=0)
    for table, n in counts.items():
        click.echo(f"{table:<{width}}  " + _("{n} rows", n=f"{n:>12,}"))
    click.echo(
        _(
            "copied {n} rows into {target}; counts verified. Start the server with: "
            "gpufleet server --database {target}",
            n=f"{sum(counts.values()):,}", target=redact(target),
        ),
        err=True,
    )  # fmt: skip
