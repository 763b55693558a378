"""Commands of `provision migrate` (see provisioner/cli/migrate.py): where the migration stands
(status), and moving it (advance, rollback, archive-json, unarchive, reconcile), each move an
engine run: planned with --plan, locked, journaled, resumable and undone through `provision runs`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli.common import (
    EXIT_USAGE,
    Seconds,
    execute,
    fail,
    json_option,
    lock_timeout_option,
    on_failure_option,
    settings_or_exit,
)

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.engine.pipeline import Pipeline
    from provisioner.migration.stages import Stage

PHASES = (
    "json_only, schema, backfill, dual_write_read_json, validated, dual_write_read_pg, "
    "pg_only, archived"
)


def plan_option(func: Any) -> Any:
    return click.option("--plan", is_flag=True, help="Show what would change; change nothing.")(
        func
    )


def _stage(name: str, as_json: bool) -> Stage:
    from provisioner.migration.stages import StageError, parse_stage

    try:
        return parse_stage(name)
    except StageError as exc:
        fail(str(exc), EXIT_USAGE, as_json)


def _where(settings: Settings) -> Stage:
    """The current rung, or a one-line PipelineError (exit 2)."""
    from provisioner.engine.pipeline import PipelineError
    from provisioner.migration.stages import Stage  # noqa: F401 - for the type
    from provisioner.migration.status import StatusError, current_stage
    from provisioner.migration.storage_access import PhaseError

    try:
        return current_stage(settings)
    except (StatusError, PhaseError) as exc:
        raise PipelineError(str(exc)) from None


def _run(pipeline_name: str, params: dict[str, Any], plan: bool, as_json: bool,
         lock_timeout: float | None, keep: bool = False) -> None:  # fmt: skip
    def make(settings: Settings) -> Pipeline:
        from provisioner.engine.pipeline import build

        if settings.data_dir is None:
            from provisioner.engine.pipeline import PipelineError

            raise PipelineError(
                "no AEIMS data folder configured: set PROVISION_DATA_DIR to the application "
                "root holding data/*.json"
            )
        return build(pipeline_name, params(settings) if callable(params) else params, settings)

    execute(make, plan=plan, as_json=as_json, lock_timeout=lock_timeout, keep_on_failure=keep)


# ------------------------------------------------------------------------------------ status
@click.command("status")
@json_option
def status(as_json: bool) -> None:
    """Phase, rung, records on each side, outbox, sync, shadow reads, last validation; reads
    only (safe on a live installation). Exit 0, or 2 on bad configuration."""
    from provisioner.cli.output import dumps
    from provisioner.migration.status import StatusError, gather
    from provisioner.migration.storage_access import PhaseError

    settings = settings_or_exit(as_json)
    try:
        report = gather(settings)
    except (StatusError, PhaseError) as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    if as_json:
        click.echo(dumps(report))
    else:
        for line in _status_lines(report):
            click.echo(line)
    sys.exit(0)


def _status_lines(report: dict[str, Any]) -> list[str]:
    db = report["database"]
    override = f" (forced by {report['override']})" if report["override"] else ""
    reach = (
        "not configured" if not db["configured"]
        else f"reachable, schema version {db['schema_version']}" if db["reachable"]
        else f"UNREACHABLE ({db['error']})"
    )  # fmt: skip
    lines = [
        f"stage:           {report['stage'] or 'unknown'} ({report['stage_description']})",
        f"phase:           {report['phase']}{override}",
        f"database:        {reach}",
        f"{'entity':<24}{'json':>10}{'postgresql':>12}",
    ]
    for entity, counts in report["counts"].items():
        js = "-" if counts["json"] is None else str(counts["json"])
        pg = "-" if counts["postgresql"] is None else str(counts["postgresql"])
        mark = "" if js == pg or "-" in (js, pg) else "  differs"
        lines.append(f"  {entity:<22}{js:>10}{pg:>12}{mark}")
    pending = report["pending"]
    lines.append(
        f"outbox:          {pending['outbox']} waiting, {pending['quarantined']} quarantined, "
        f"{pending['entities_with_intents']} entities with unfinished writes"
    )
    lines.append(f"sync:            {_short(report['sync'], 'not running / no state')}")
    lines.append(f"outside write:   {_short(report['last_outside_write'], 'none seen')}")
    lines.append(f"shadow reads:    {_short(report['shadow'], 'no differences recorded')}")
    last = report["last_validation"]
    if isinstance(last, dict) and last.get("started_at"):
        lines.append(
            f"last validation: {last.get('mismatches')} mismatch(es), began "
            f"{last['started_at']} ({last.get('age_seconds')} s ago)"
        )
    else:
        lines.append(f"last validation: {_short(last, 'none')}")
    gate = report["gate"]
    lines.append("gate:            " + ("open" if gate["open"] else f"closed: {gate['reason']}"))
    if report["archive"]:
        lines.append(f"archive:         {report['archive'].get('folder')}")
    return lines


def _short(value: Any, empty: str) -> str:
    if not value:
        return empty
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, dict | list))
    return str(value)


# ------------------------------------------------------------------------------------ moves
@click.command("advance")
@click.option("--to", "to", default=None, help=f"The phase to reach (default: the next). {PHASES}.")
@click.option(
    "--quiet-period",
    type=Seconds("lock_timeout"),
    default=300.0,
    show_default=True,
    help="Seconds with no write from outside the data layer that pg_only needs.",
)
@plan_option
@on_failure_option
@json_option
@lock_timeout_option
def advance(to: str | None, quiet_period: float, plan: bool, on_failure: str, as_json: bool,
            lock_timeout: float | None) -> None:  # fmt: skip
    """Climb to the next phase, or through each phase up to --to (schema, backfill, dual
    write, the validation gate, read switch, pg_only, archive)."""
    wanted = _stage(to, as_json) if to is not None else None

    def params(settings: Settings) -> dict[str, Any]:
        from provisioner.engine.pipeline import PipelineError
        from provisioner.migration.stages import Stage

        now = _where(settings)
        if wanted is None and now == Stage.ARCHIVED:
            raise PipelineError("the migration is at its last phase (archived); nothing to advance")
        target = wanted if wanted is not None else now.next
        if target.index < now.index:
            raise PipelineError(
                f"--to {target.value} is behind the current phase {now.value}: "
                f"`provision migrate rollback --to {target.value}` goes back"
            )
        return {"from": now.value, "to": target.value, "quiet_period": quiet_period}

    _run("migrate-advance", params, plan, as_json, lock_timeout, on_failure == "keep")  # type: ignore[arg-type]


@click.command("rollback")
@click.option(
    "--to", "to", default=None, help=f"The phase to go back to (default: the previous). {PHASES}."
)
@click.option("--force", is_flag=True, help="Drop the schema's tables even when they hold data.")
@plan_option
@on_failure_option
@json_option
@lock_timeout_option
def rollback(to: str | None, force: bool, plan: bool, on_failure: str, as_json: bool,
             lock_timeout: float | None) -> None:  # fmt: skip
    """Go down to the previous phase, or through each phase down to --to. Leaving pg_only
    writes PostgreSQL's data back into the JSON files; the dual-write phases go back without
    the database (use PROVISION_JOURNAL=files to roll back while it is down)."""
    wanted = _stage(to, as_json) if to is not None else None

    def params(settings: Settings) -> dict[str, Any]:
        from provisioner.engine.pipeline import PipelineError
        from provisioner.migration.stages import Stage

        now = _where(settings)
        if wanted is None and now == Stage.JSON_ONLY:
            raise PipelineError(
                "the migration is at its first phase (json_only); nothing to roll back"
            )
        target = wanted if wanted is not None else now.previous
        if target.index > now.index:
            raise PipelineError(
                f"--to {target.value} is ahead of the current phase {now.value}: "
                f"`provision migrate advance --to {target.value}` goes there"
            )
        return {"from": now.value, "to": target.value, "force": force}

    _run("migrate-rollback", params, plan, as_json, lock_timeout, on_failure == "keep")  # type: ignore[arg-type]


def _at(stage_name: str, verb: str) -> Any:
    def params(settings: Settings) -> dict[str, Any]:
        from provisioner.engine.pipeline import PipelineError

        now = _where(settings)
        if now.value not in stage_name.split("|"):
            raise PipelineError(
                f"{verb} needs the migration at {stage_name.replace('|', ' or ')}; "
                f"it is at {now.value}"
            )
        return {}

    return params


@click.command("archive-json")
@plan_option
@json_option
@lock_timeout_option
def archive_json(plan: bool, as_json: bool, lock_timeout: float | None) -> None:
    """Move the JSON files to backups/json-archive-YYYYMMDD/ with a sha256 manifest (pg_only)."""
    _run(
        "migrate-archive-json", _at("pg_only|archived", "archive-json"), plan, as_json, lock_timeout
    )


@click.command("unarchive")
@plan_option
@json_option
@lock_timeout_option
def unarchive(plan: bool, as_json: bool, lock_timeout: float | None) -> None:
    """Check the archive's manifest and put the JSON files back byte for byte."""
    _run("migrate-unarchive", _at("archived|pg_only", "unarchive"), plan, as_json, lock_timeout)


@click.command("reconcile")
@plan_option
@json_option
@lock_timeout_option
def reconcile(plan: bool, as_json: bool, lock_timeout: float | None) -> None:
    """Replay the outbox, unfinished writes and the quarantine into PostgreSQL, as a run."""
    _run("migrate-reconcile", {}, plan, as_json, lock_timeout)


# The click commands this module adds to `provision migrate`.
COMMANDS: list[click.Command] = [status, advance, rollback, reconcile, archive_json, unarchive]
