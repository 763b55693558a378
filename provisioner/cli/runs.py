"""`provision runs`: the journal of runs, and resuming or undoing one."""

from __future__ import annotations

import click

from provisioner.cli.common import (
    EXIT_USAGE,
    fail,
    json_option,
    lock_timeout_option,
    print_result,
    runner_for,
    settings_or_exit,
)
from provisioner.engine.journal import JournalError
from provisioner.engine.output import dumps, run_record_json


@click.group("runs")
def runs() -> None:
    """List, inspect, resume or roll back runs recorded in the journal."""


@runs.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@json_option
def list_runs(limit: int, as_json: bool) -> None:
    """The most recent runs, newest last."""
    settings = settings_or_exit(as_json)
    with runner_for(settings, as_json, None) as runner:
        records = runner.journal.runs(limit)
        rows = [(r, str(runner.status_of(r))) for r in records]
    if as_json:
        click.echo(dumps([{**r.summary_line(), "status": status} for r, status in rows]))
        return
    if not rows:
        click.echo("No runs yet.")
        return
    for record, status in rows:
        click.echo(f"{record.run_id}  {status:<16} {record.pipeline:<10} {record.target}")


@runs.command("show")
@click.argument("run_id")
@json_option
def show_run(run_id: str, as_json: bool) -> None:
    """One run: its steps and what each did."""
    settings = settings_or_exit(as_json)
    with runner_for(settings, as_json, None) as runner:
        try:
            record = runner.journal.get(run_id)
        except JournalError as exc:
            fail(str(exc), EXIT_USAGE, as_json)
        status = str(runner.status_of(record))
    data = run_record_json(record, status)
    if as_json:
        click.echo(dumps(data))
        return
    click.echo(f"Run {record.run_id}: {record.pipeline} on {record.target}, {status}")
    finished = record.finished_at or "-"
    click.echo(
        f"Started {record.started_at} by pid {record.pid} on {record.host}; finished {finished}"
    )
    for step in data["steps"]:
        detail = step["summary"] or ""
        if step["error"]:
            detail = f"{detail} — {step['error']}" if detail else step["error"]
        click.echo(f"  {step['index'] + 1}. {step['name']:<14} {step['state']:<16} {detail}")
    if status == "interrupted":
        click.echo(f"Continue with: provision runs resume {record.run_id}")
        click.echo(f"Or undo with:  provision runs rollback {record.run_id}")


@runs.command("resume")
@click.argument("run_id")
@json_option
@lock_timeout_option
def resume_run(run_id: str, as_json: bool, lock_timeout: float | None) -> None:
    """Continue an interrupted run from where its journal stops."""
    settings = settings_or_exit(as_json)
    with runner_for(settings, as_json, lock_timeout) as runner:
        result = runner.resume(run_id)
    print_result(result, as_json)


@runs.command("rollback")
@click.argument("run_id")
@json_option
@lock_timeout_option
def rollback_run(run_id: str, as_json: bool, lock_timeout: float | None) -> None:
    """Undo what a run applied, newest step first."""
    settings = settings_or_exit(as_json)
    with runner_for(settings, as_json, lock_timeout) as runner:
        result = runner.rollback(run_id)
    print_result(result, as_json)
