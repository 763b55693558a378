"""`provision data`: the AEIMS data layer's health and its outbox."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli.common import EXIT_USAGE, fail, json_option, settings_or_exit

if TYPE_CHECKING:
    from provisioner.storage.layer.datalayer import DataLayer

EXIT_DEGRADED = 1


def _layer(as_json: bool) -> DataLayer:
    """The data layer on an existing AEIMS root; a missing root is bad input, not an empty one."""
    from provisioner.storage.layer.datalayer import DataLayer

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
    """Phase, database, breaker, outbox, unfinished writes, quarantine; exit 1 when degraded."""
    from provisioner.cli.output import dumps
    from provisioner.storage.layer.phase import PhaseError

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
        for line in _pending_lines(report):
            click.echo(line)
        for error in report["json_file_errors"]:
            click.echo(f"json file:    {error}")
        click.echo("status:       " + ("DEGRADED" if report["degraded"] else "ok"))
    sys.exit(EXIT_DEGRADED if report["degraded"] else 0)


def _ago(seconds: float | None) -> str:
    return "" if seconds is None else f" (oldest {seconds:.1f} s ago)"


def _pending_lines(report: dict[str, Any]) -> list[str]:
    """What waits for PostgreSQL, what it refused, what PHP reverted: one line each."""
    outbox, intents, quarantine = report["outbox"], report["intents"], report["quarantine"]
    lines = [f"outbox depth: {outbox['depth']}{_ago(outbox['oldest_age_seconds'])}"]
    if outbox["error"]:
        lines.append(f"outbox:       UNREADABLE ({outbox['error']})")
    if outbox["corrupt_lines"]:
        lines.append(
            f"outbox:       {outbox['corrupt_lines']} damaged line(s), for a human: "
            ".provision/outbox.corrupt once drained"
        )
    if intents["abandoned"]:
        lines.append(
            f"intents:      {intents['abandoned']} left by unfinished writes"
            f"{_ago(intents['oldest_age_seconds'])}; `provision data reconcile` replays them"
        )
    if quarantine["count"] is None:
        lines.append(f"quarantine:   UNREADABLE ({quarantine.get('error')})")
    elif quarantine["count"]:
        per_entity = ", ".join(f"{e} {n}" for e, n in quarantine["by_entity"].items())
        lines.append(
            f"quarantine:   {quarantine['count']} record(s) PostgreSQL refuses ({per_entity}); "
            "--json lists them"
        )
    reapplied = report["reapplied_writes"]
    if reapplied.get("reapplied_writes"):
        lines.append(f"reapplied:    {reapplied['reapplied_writes']} write(s) PHP had reverted")
    for path in reapplied.get("interrupted_writes") or ():
        lines.append(f"interrupted:  {path} (a write cut short; the next access repairs it)")
    if reapplied.get("error"):
        lines.append(f"reapplied:    UNREADABLE ({reapplied['error']})")
    return lines


@data.command("reconcile")
@json_option
def reconcile(as_json: bool) -> None:
    """Write again what PHP's stale writes reverted and complete interrupted writes (run it
    every minute: docs/data-layer.md), then replay the outbox into PostgreSQL (it drains by
    itself too once the database is back) and retry quarantined records; exit 1 while a file
    could not be checked or PostgreSQL still refuses records."""
    from provisioner.cli.output import dumps
    from provisioner.storage.layer.datalayer import DataUnavailable
    from provisioner.storage.layer.outbox import OutboxUnreadable
    from provisioner.storage.phpjson.files import reconcile_recent_writes

    layer = _layer(as_json)
    try:
        reapplied, unchecked = reconcile_recent_writes(layer.data_dir)
        for problem in unchecked:
            click.echo(f"not checked: {problem}", err=True)
        applied = layer.reconcile()
        depth = layer.outbox.depth()
        quarantined = len(layer.quarantine.records())
    except (DataUnavailable, OutboxUnreadable) as exc:
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
                {
                    "changed": applied > 0 or reapplied > 0,
                    "failed": bool(unchecked),
                    "applied": applied,
                    "outbox_depth": depth,
                    "quarantined": quarantined,
                    "reapplied": reapplied,
                    "unchecked_files": unchecked,
                }
            )
        )
    else:
        plural = "" if reapplied == 1 else "s"
        click.echo(f"wrote again {reapplied} record{plural} PHP had reverted")
        click.echo(
            f"replayed {applied} record{'' if applied == 1 else 's'}; {depth} left in the outbox, "
            f"{quarantined} quarantined (PostgreSQL refuses them)"
        )
    if unchecked or quarantined:
        sys.exit(EXIT_DEGRADED)
