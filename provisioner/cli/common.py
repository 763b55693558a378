"""What every command shares: settings, the runner, printing results, and exit codes.

Imported by every command module, even for `--help`, so it imports only click at load: the
engine, the settings and rich come in inside the functions that use them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.engine.pipeline import Pipeline
    from provisioner.engine.results import RunResult
    from provisioner.engine.runner import Runner

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ROLLBACK_FAILED = 0, 1, 2, 3


class Seconds(click.ParamType):
    """A duration option checked like its setting: finite, within the setting's bounds.

    click.FloatRange lets `nan` and `inf` through, and a NaN lock timeout waits for ever.
    """

    name = "seconds"

    def __init__(self, setting: str) -> None:
        self.setting = setting

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        from provisioner.config import ConfigError, check_seconds

        label = param.get_error_hint(ctx) if param is not None and ctx is not None else "value"
        try:
            return check_seconds(self.setting, value, label=label)
        except ConfigError as exc:
            self.fail(str(exc).removeprefix(label).lstrip("="), param, ctx)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Machine output (Ansible conventions)."
    )(func)


def scope_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--scope",
        type=click.Choice(["all", "global", "host"]),
        default="all",
        show_default=True,
        help="Run only the steps done once per target (global) or on every web host (host).",
    )(func)


def on_failure_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--on-failure",
        type=click.Choice(["rollback", "keep"]),
        default="rollback",
        show_default=True,
        help="When a step fails: undo everything this run made, or keep it for inspection "
        "(`provision runs rollback ID` removes it later).",
    )(func)


def lock_timeout_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--lock-timeout",
        type=Seconds("lock_timeout"),
        default=None,
        help="Seconds to wait for another run on the same target "
        "(default PROVISION_LOCK_TIMEOUT or 30).",
    )(func)


def fail(message: str, code: int, as_json: bool) -> NoReturn:
    """Report an error that stopped a command before or outside any step, on one line."""
    message = " ".join(message.split())
    if as_json:
        from provisioner.cli.output import dumps

        click.echo(dumps({"changed": False, "failed": True, "msg": message, "rc": code}))
    else:
        click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def settings_or_exit(as_json: bool) -> Settings:
    """The checked settings, with the tool's pipelines registered; bad ones exit 2."""
    from provisioner import app
    from provisioner.config import ConfigError, load_settings
    from provisioner.engine.errors import UsageError

    try:
        settings = load_settings()
        app.prepare(settings)
        return settings
    except (ConfigError, UsageError) as exc:
        fail(str(exc), EXIT_USAGE, as_json)


@contextmanager
def runner_for(settings: Settings, as_json: bool, lock_timeout: float | None) -> Iterator[Runner]:
    """A runner with the right reporter; every engine error becomes a clear exit."""
    from dataclasses import replace

    from provisioner.cli.output import HumanReporter
    from provisioner.engine.backend import open_runner
    from provisioner.engine.errors import RunBlocked, UsageError
    from provisioner.engine.locks import LockTimeout
    from provisioner.engine.runner import Reporter

    reporter: Reporter = Reporter() if as_json else HumanReporter()
    if lock_timeout is not None:
        settings = replace(settings, lock_timeout=lock_timeout)
    try:
        runner = open_runner(settings, reporter)
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    try:
        yield runner
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    except LockTimeout as exc:
        fail(
            f"{exc}. Wait for it to finish, or raise --lock-timeout / PROVISION_LOCK_TIMEOUT",
            EXIT_FAILED,
            as_json,
        )
    except RunBlocked as exc:
        fail(str(exc), EXIT_FAILED, as_json)
    finally:
        runner.journal.close()


def print_result(result: RunResult, as_json: bool) -> NoReturn:
    from provisioner.cli.output import dumps, human_lines, result_json

    if as_json:
        click.echo(dumps(result_json(result)))
    else:
        for line in human_lines(result, show_diffs=True):
            click.echo(line)
    sys.exit(result.exit_code)


def execute(
    build: Callable[[Settings], Pipeline],
    *,
    plan: bool,
    as_json: bool,
    lock_timeout: float | None,
    scope: str = "all",
    keep_on_failure: bool = False,
) -> NoReturn:
    """Build a pipeline (bad parameters exit 2) and plan or run it, then print and exit.

    `scope` limits the run to the steps done once per target (`global`), or to those done on
    every web host (`host`); `all` runs both.
    """
    from provisioner.engine.errors import UsageError
    from provisioner.engine.step import Scope

    scopes = list(Scope) if scope == "all" else [Scope(scope)]

    settings = settings_or_exit(as_json)
    try:
        pipeline = build(settings)
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    with runner_for(settings, as_json, lock_timeout) as runner:
        runner.keep_on_failure = keep_on_failure
        result = runner.plan(pipeline, scopes) if plan else runner.run(pipeline, scopes)
    print_result(result, as_json)
