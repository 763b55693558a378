"""What every command shares: settings, the runner, printing results, and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NoReturn

import click

from provisioner.config import ConfigError, Settings, load_settings
from provisioner.engine import pipeline as pipelines
from provisioner.engine.backend import open_runner
from provisioner.engine.journal import JournalError
from provisioner.engine.locks import LockTimeout
from provisioner.engine.output import HumanReporter, dumps, human_lines, result_json
from provisioner.engine.pipeline import Pipeline, PipelineError
from provisioner.engine.runner import PreflightError, Reporter, Runner, RunResult, RunStateError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ROLLBACK_FAILED = 0, 1, 2, 3


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Machine output (Ansible conventions)."
    )(func)


def lock_timeout_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--lock-timeout",
        type=click.FloatRange(min=0),
        default=None,
        help="Seconds to wait for another run on the same target "
        "(default PROVISION_LOCK_TIMEOUT or 30).",
    )(func)


def fail(message: str, code: int, as_json: bool) -> NoReturn:
    """Report an error that stopped a command before or outside any step."""
    if as_json:
        click.echo(dumps({"changed": False, "failed": True, "msg": message, "rc": code}))
    else:
        click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def settings_or_exit(as_json: bool) -> Settings:
    try:
        settings = load_settings()
        pipelines.load_modules(settings.pipeline_modules)
        return settings
    except (ConfigError, PipelineError) as exc:
        fail(str(exc), EXIT_USAGE, as_json)


@contextmanager
def runner_for(settings: Settings, as_json: bool, lock_timeout: float | None) -> Iterator[Runner]:
    """A runner with the right reporter; every engine error becomes a clear exit."""
    reporter: Reporter = Reporter() if as_json else HumanReporter()
    if lock_timeout is not None:
        settings = replace(settings, lock_timeout=lock_timeout)
    try:
        runner = open_runner(settings, reporter)
    except JournalError as exc:
        fail(
            f"{exc}; check PROVISION_PG_DSN or start the stack (provision dev up)",
            EXIT_USAGE,
            as_json,
        )
    try:
        yield runner
    except (PipelineError, PreflightError, RunStateError) as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    except LockTimeout as exc:
        fail(str(exc), EXIT_FAILED, as_json)
    except JournalError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    finally:
        runner.journal.close()


def print_result(result: RunResult, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(dumps(result_json(result)))
    else:
        for line in human_lines(result, show_diffs=True):
            click.echo(line)
    sys.exit(result.exit_code)


def execute(
    build: Callable[[], Pipeline], *, plan: bool, as_json: bool, lock_timeout: float | None
) -> NoReturn:
    """Build a pipeline (bad parameters exit 2) and plan or run it, then print and exit."""
    settings = settings_or_exit(as_json)
    try:
        pipeline = build()
    except PipelineError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    with runner_for(settings, as_json, lock_timeout) as runner:
        result = runner.plan(pipeline) if plan else runner.run(pipeline)
    print_result(result, as_json)
