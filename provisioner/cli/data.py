"""`provision data`: the AEIMS data layer's health and its outbox."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

import click

from provisioner.cli.common import EXIT_USAGE, fail, json_option, settings_or_exit

if TYPE_CHECKING:
    from provisioner.storage.datalayer import DataLayer

EXIT_DEGRADED = 1


def _layer(as_json: bool) -> DataLayer:
    """The data layer on an existing AEIMS root; a missing root is bad input, not an empty one."""
    from provisioner.storage.datalayer import DataLayer

    settings = settings_or_exit(as_json)
    if settings.data_dir is not None and not settings.data_dir.is_dir():
        fail(
            f"PROVISION_DATA_DIR={str(settings.data_dir)!r} does not exist; point it at the "
            "AEIMS application root (the folder holding data/*.json)",
            EXIT_USAGE,
            as_json,
        )
    try:
        return DataLayer.from_settings(settings)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE, as_json)


def _log_events_to_stderr() -> None:
    """The layer's one-line JSON events go to stderr, where cron and journald collect them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("provisioner.storage")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@click.group("data")
def data() -> None:
    """The AEIMS data layer: health, and replaying the outbox."""
    _log_events_to_stderr()


@data.command("health")
@json_option
def health(as_json: bool) -> None:
    """Phase, database reachability, circuit breaker and outbox depth; exit 1 when degraded."""
    from provisioner.cli.output import dumps
    from provisioner.storage.phase import PhaseError

    layer = _layer(as_json)
    try:
        report = layer.health()
    except PhaseError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    finally:
        layer.close()
    if as_json:
        click.echo(dumps(report))
    else:
        db = report["database"]
        if not db["configured"]:
            reach = "not configured (JSON only)"
        elif db["reachable"]:
            reach = "reachable"
        else:
            reach = f"UNREACHABLE ({db['error']})"
        override = f" (forced by {report['override']})" if report["override"] else ""
        click.echo(f"phase:        {report['phase']}{override}")
        click.echo(f"database:     {reach}")
        click.echo(f"breaker:      {report['breaker']}")
        click.echo(f"outbox depth: {report['outbox_depth']}")
        for error in report["json_file_errors"]:
            click.echo(f"json file:    {error}")
        click.echo("status:       " + ("DEGRADED" if report["degraded"] else "ok"))
    sys.exit(EXIT_DEGRADED if report["degraded"] else 0)


@data.command("reconcile")
@json_option
def reconcile(as_json: bool) -> None:
    """Replay the outbox into PostgreSQL now (it drains by itself too once the database is back)."""
    from provisioner.cli.output import dumps
    from provisioner.storage.datalayer import DataUnavailable

    layer = _layer(as_json)
    try:
        applied = layer.reconcile()
        depth = layer.outbox.depth()
    except DataUnavailable as exc:
        fail(
            f"could not replay the outbox: {exc}; it is kept for the next try",
            EXIT_DEGRADED,
            as_json,
        )
    finally:
        layer.close()
    if as_json:
        click.echo(
            dumps(
                {"changed": applied > 0, "failed": False, "applied": applied, "outbox_depth": depth}
            )
        )
    else:
        click.echo(f"replayed {applied} outbox entr{'y' if applied == 1 else 'ies'}; {depth} left")
