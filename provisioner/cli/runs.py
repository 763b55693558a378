"""`provision runs`: the journal of runs, and resuming or undoing one."""

from __future__ import annotations

import click

from provisioner.cli.common import (
    json_option,
    lock_timeout_option,
    print_result,
    runner_for,
    settings_or_exit,
)


@click.group("runs")
def runs() -> None:
    """List, inspect, resume or roll back runs recorded in the journal."""


@runs.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@json_option
def list_runs(limit: int, as_json: bool) -> None:
    """The most recent runs, newest last."""
    from provisioner.cli.output import dumps

    settings = settings_or_exit(as_json)
    with runner_for(settings, as_json, None) as runner:
        records = runner.journal.runs(limit)
        rows = [(r, str(runner.status_of(r))) for r in records]
    if as_json:
        listed = []
        for record, status in rows:
            line = {**record.summary_line(), "status": status}
            if record.error:
                line["error"] = record.error
            listed.append(line)
        click.echo(dumps(listed))
        return
    if not rows:
        click.echo("No runs yet.")
        return
    for record, status in rows:
        where = record.error if record.error else f"{record.pipeline:<10} {record.target}"
        click.echo(f"{record.run_id}  {status:<16} {where}")


@runs.command("show")
@click.argument("run_id")
@json_option
def show_run(run_id: str, as_json: bool) -> None:
    """One run: its steps and what each did."""
    from provisioner.cli.output import dumps, run_record_json

    settings = settings_or_exit(as_json)
    with runner_for(settings, as_json, None) as runner:
        record = runner.journal.get(run_id)
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
    if status in {"interrupted", "rollback_failed"}:
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
@click.option(
    "--force",
    is_flag=True,
    help="Roll back even if the pipeline's steps changed since the run: each journaled step "
    "is found by its name.",
)
@json_option
@lock_timeout_option
def rollback_run(run_id: str, force: bool, as_json: bool, lock_timeout: float | None) -> None:
    """Undo what a run applied, newest step first."""
    settings = settings_or_exit(as_json)
    with runner_for(settings, as_json, lock_timeout) as runner:
        result = runner.rollback(run_id, force=force)
    print_result(result, as_json)
