"""`provision migrate backfill` and `provision migrate validate` (see provisioner/cli/migrate.py).

Both only parse and print: the work is provisioner/migration/backfill.py and validation.py.
Exit codes: 0 done (validate: 0 mismatches), 1 failed (an entity could not be loaded, or
validate found mismatches), 2 bad input (no data folder, PostgreSQL not configured or down).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from provisioner.cli.common import EXIT_FAILED, EXIT_USAGE, fail, json_option, settings_or_exit

if TYPE_CHECKING:
    from provisioner.config import Settings


def _targets(as_json: bool) -> tuple[Settings, str, Path]:
    """The checked settings with a DSN and an existing data folder, or exit 2."""
    settings = settings_or_exit(as_json)
    if not settings.pg_dsn:
        fail(
            "PROVISION_PG_DSN is not set; point it at the PostgreSQL database to migrate into",
            EXIT_USAGE,
            as_json,
        )
    if settings.data_dir is None or not settings.data_dir.is_dir():
        where = (
            "is not set" if settings.data_dir is None else f"({settings.data_dir}) does not exist"
        )
        fail(
            f"PROVISION_DATA_DIR {where}; point it at the AEIMS application root (the folder "
            "holding data/*.json)",
            EXIT_USAGE,
            as_json,
        )
    return settings, settings.pg_dsn, settings.data_dir


def _database_down(exc: Exception, as_json: bool) -> NoReturn:
    from provisioner.engine.redact import redact_dsn

    detail = " ".join(redact_dsn(str(exc)).split()) or type(exc).__name__
    fail(
        f"cannot reach PostgreSQL ({detail}); check PROVISION_PG_DSN and that the server is up",
        EXIT_USAGE,
        as_json,
    )


@contextmanager
def _errors_as_exits(as_json: bool) -> Iterator[None]:
    """Bad input and an unreachable database: one line, exit 2; a failure midway: exit 1."""
    import psycopg

    from provisioner.migration.backfill import BackfillInputError
    from provisioner.migration.storage_bridge import MigrationError

    try:
        yield
    except BackfillInputError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    except psycopg.OperationalError as exc:
        _database_down(exc, as_json)
    except MigrationError as exc:
        fail(str(exc), EXIT_FAILED, as_json)
    except psycopg.Error as exc:
        detail = exc.diag.message_primary or type(exc).__name__
        fail(
            f"PostgreSQL failed during the run: {detail}; batches already committed are kept "
            "and running the command again completes it",
            EXIT_FAILED,
            as_json,
        )


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich bar per entity on a terminal; nothing otherwise."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    tasks: dict[str, Any] = {}
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:

        def update(entity: str, done: int, total: int) -> None:
            if entity not in tasks:
                tasks[entity] = bar.add_task(entity, total=max(total, 1))
            bar.update(tasks[entity], completed=done if total else 1)

        yield update


@click.command("backfill")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1_000_000),
    default=5000,
    show_default=True,
    help="Records per COPY and upsert (each batch is one transaction).",
)
@click.option(
    "--quarantine",
    "quarantine_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where records PostgreSQL cannot take are written (JSON lines, 0600; default "
    "<data dir>/.provision/backfill-quarantine.jsonl).",
)
@click.option("--plan", is_flag=True, help="Count what a backfill would do; write nothing.")
@json_option
def backfill_command(
    batch_size: int, quarantine_path: Path | None, plan: bool, as_json: bool
) -> None:
    """Load every AEIMS JSON record into PostgreSQL (COPY, then upsert); safe to run again."""
    from provisioner.cli.output import dumps
    from provisioner.migration.backfill import backfill

    _, dsn, data_dir = _targets(as_json)
    show_bar = not as_json and sys.stderr.isatty()
    with _errors_as_exits(as_json), _progress_bar(show_bar) as progress:
        report = backfill(
            dsn,
            data_dir,
            batch_size=batch_size,
            quarantine_path=quarantine_path,
            progress=progress,
            dry_run=plan,
        )
    if as_json:
        click.echo(
            dumps(
                {
                    "changed": report.changed and not plan,
                    "failed": not report.ok,
                    "msg": _backfill_summary(report),
                    **report.to_json(),
                }
            )
        )
    else:
        for line in _backfill_lines(report):
            click.echo(line)
    sys.exit(0 if report.ok else EXIT_FAILED)


def _backfill_summary(report: Any) -> str:
    t = report.totals
    verb = "would insert" if report.dry_run else "inserted"
    return (
        f"{t['records']} records: {verb} {t['inserted']}, updated {t['updated']}, "
        f"unchanged {t['unchanged']}, quarantined {t['quarantined']}; "
        f"{t['plaintext_dropped']} plaintext password field(s) left out"
    )


def _backfill_lines(report: Any) -> list[str]:
    lines = ["Plan (nothing written):" if report.dry_run else "Backfill:"]
    lines.append(
        f"  {'entity':<22} {'records':>9} {'inserted':>9} {'updated':>9} "
        f"{'unchanged':>9} {'quarant.':>9} {'plaintext':>9}"
    )
    for name, e in report.entities.items():
        if e.error:
            lines.append(f"  {name:<22} FAILED: {e.error}")
        elif e.records:
            lines.append(
                f"  {name:<22} {e.records:>9} {e.inserted:>9} {e.updated:>9} "
                f"{e.unchanged:>9} {e.quarantined:>9} {e.plaintext_dropped:>9}"
            )
    lines.append(_backfill_summary(report) + f" in {report.seconds:.1f} s")
    if report.totals["quarantined"] and report.quarantine_path:
        lines.append(f"quarantined records: {report.quarantine_path}")
    if report.schema_applied:
        lines.append(f"schema applied: {', '.join(report.schema_applied)}")
    return lines


@click.command("validate")
@click.option(
    "--limit",
    type=click.IntRange(0),
    default=50,
    show_default=True,
    help="Mismatches listed (0: all); the count is always exact.",
)
@json_option
def validate_command(limit: int, as_json: bool) -> None:
    """Compare every record of JSON and PostgreSQL field by field; exit 1 on any mismatch.

    Read only (apart from storing its result for the gate), safe against a live installation.
    """
    from provisioner.cli.output import dumps
    from provisioner.migration.validation import validate

    _, dsn, data_dir = _targets(as_json)
    with _errors_as_exits(as_json):
        report = validate(dsn, data_dir)
    shown = report.mismatches if limit == 0 else report.mismatches[:limit]
    if as_json:
        body = report.to_json(None if limit == 0 else limit)
        click.echo(
            dumps({"changed": False, "failed": not report.ok, "msg": _verdict(report), **body})
        )
    else:
        for line in report.lines():
            click.echo(line)
        for mismatch in shown:
            click.echo(f"  {mismatch.line()}")
        hidden = len(report.mismatches) - len(shown)
        if hidden:
            click.echo(f"  ... and {hidden} more (--limit 0 lists all, --json for machines)")
    sys.exit(0 if report.ok else EXIT_FAILED)


def _verdict(report: Any) -> str:
    return (
        f"{report.records_checked} records validated, {len(report.mismatches)} mismatches "
        f"found, data integrity {report.integrity_text()}"
    )


# The click commands this module adds to `provision migrate`.
COMMANDS: list[click.Command] = [backfill_command, validate_command]
