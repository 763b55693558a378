"""`provision migrate sync`: the PHP application's writes to the JSON files, into PostgreSQL."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fail, json_option

if TYPE_CHECKING:
    from provisioner.migration.sync import SyncReport


def _root_and_dsn(as_json: bool) -> tuple[Any, Path, str]:
    """Settings, the AEIMS root and the DSN; what is missing is bad input (exit 2)."""
    from provisioner.cli.common import settings_or_exit

    settings = settings_or_exit(as_json)
    root = settings.data_dir
    if root is None:
        fail("no AEIMS data folder configured: set PROVISION_DATA_DIR", EXIT_USAGE, as_json)
    if not (root / "data").is_dir():
        fail(
            f"PROVISION_DATA_DIR={str(root)!r} is not an AEIMS application root (no data/ "
            "folder); point it at the folder holding data/*.json",
            EXIT_USAGE,
            as_json,
        )
    if not settings.pg_dsn:
        fail("the sync writes to PostgreSQL: set PROVISION_PG_DSN", EXIT_USAGE, as_json)
    return settings, root, settings.pg_dsn


def _human(report: SyncReport) -> list[str]:
    if not report.applied and report.phase == "json_only":
        return ["phase json_only: nothing to sync (the backfill loads the files)"]
    head = (
        f"phase {report.phase}: {report.upserted} upserted, {report.deleted} deleted, "
        f"{report.unchanged} already in PostgreSQL, {len(report.deferred)} left to the layer"
    )
    if report.lag_seconds is not None:
        head += f"; lag {report.lag_seconds:.3f} s"
    lines = [head]
    for write in report.outside_writes:
        applied = "" if report.applied else " (not applied: pg_only)"
        lines.append(
            f"  outside write: {write.file} {write.entity} {write.key} {write.op}{applied}"
        )
    lines += [f"  refused: {r['entity']} {r['key']}: {r['reason']}" for r in report.refused]
    lines += [f"  error: {e}" for e in report.errors]
    return lines


def _print(report: SyncReport, as_json: bool) -> None:
    if as_json:  # one line per pass: a running service's output is JSON lines
        import json

        payload = report.as_json() | {"changed": bool(report.outside_writes)}
        click.echo(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        for line in _human(report):
            click.echo(line)


@click.command("sync")
@click.option("--once", is_flag=True, help="One pass over the files, then exit.")
@json_option
def sync(once: bool, as_json: bool) -> None:
    """Carry writes made to the JSON files outside the data layer (the PHP application's) into
    PostgreSQL during the dual-write phases; runs until SIGTERM, or one pass with --once.

    Exit 0 when every change was applied (or left to the layer's own replay), 1 when a pass
    failed (PostgreSQL unreachable, an unreadable file: retried while running), 2 on bad
    settings.
    """
    import signal
    import threading

    from provisioner.migration import sync as sync_module

    settings, root, dsn = _root_and_dsn(as_json)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("provisioner.migration.sync", "provisioner.storage"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    if once:
        try:
            report = sync_module.sync_once(settings)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE, as_json)
        _print(report, as_json)
        sys.exit(EXIT_OK if report.ok else EXIT_FAILED)

    stop = threading.Event()

    def stop_on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)

    def show(report: SyncReport) -> None:
        _print(report, as_json)
        sys.stdout.flush()

    try:
        sync_module.watch(
            root,
            dsn,
            stop=stop,
            on_report=show,
            use_database=settings.use_database,
            use_json=settings.use_json,
        )
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    sys.exit(EXIT_OK)


# The click commands this module adds to `provision migrate`.
COMMANDS: list[click.Command] = [sync]
