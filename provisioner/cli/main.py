"""The `provision` command: parses, calls the engine or the data layer, prints.

Commands are loaded lazily (click's "Lazily Loading Subcommands"): `provision --help` imports
none of them, and `provision <group> --help` only its own module, so help and usage errors
come back at about the cost of importing click, whatever psycopg, boto3 or the ACME client cost.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, NoReturn

import click
from click.exceptions import NoArgsIsHelpError

EXIT_BUG = 70  # EX_SOFTWARE: an internal error, not the user's input

# name -> (module, attribute, one-line help shown by `provision --help` without importing it),
# and whether the module may be absent from an install (the local stack, the data layer).
LAZY_COMMANDS: dict[str, tuple[str, str, str, bool]] = {
    "certs": (
        "provisioner.cli.certs",
        "certs",
        "Certificates over time: status with expiry alerts, and renewal of what is due.",
        False,
    ),
    "data": (
        "provisioner.cli.data",
        "data",
        "The AEIMS data layer: health, and replaying the outbox.",
        True,
    ),
    "demo": (
        "provisioner.cli.demo",
        "demo",
        "Write a greeting row to PostgreSQL and render it into a page, as one reversible run.",
        False,
    ),
    "dev": (
        "provisioner.cli.dev",
        "dev",
        "Start, stop and inspect the local stack (PostgreSQL, nginx, pebble, moto) on loopback.",
        True,
    ),
    "migrate": (
        "provisioner.cli.migrate",
        "migrate",
        "Move AEIMS's storage from JSON files to PostgreSQL, phase by reversible phase.",
        True,
    ),
    "run": (
        "provisioner.cli.run",
        "run",
        "Run a registered pipeline with the given parameters.",
        False,
    ),
    "runs": (
        "provisioner.cli.runs",
        "runs",
        "List, inspect, resume or roll back runs recorded in the journal.",
        False,
    ),
    "site": (
        "provisioner.cli.site",
        "site",
        "Create AEIMS sites: record, files, nginx, DNS, certificate, operators, billing, health.",
        False,
    ),
}


def _present(name: str) -> bool:
    module, _, _, optional = LAZY_COMMANDS[name]
    return not optional or importlib.util.find_spec(module) is not None


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked (or asked for their help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name in LAZY_COMMANDS if _present(name)]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in LAZY_COMMANDS or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        if not _present(cmd_name):
            return None
        module, attr, _, _ = LAZY_COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module}.{attr} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from LAZY_COMMANDS' help lines, so listing imports nothing."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in LAZY_COMMANDS and name not in self.commands:
                stand_in = click.Command(name, help=LAZY_COMMANDS[name][2])
                text = stand_in.get_short_help_str(limit)
            else:
                command = self.commands[name]
                if command.hidden:
                    continue
                text = command.get_short_help_str(limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="provisioner")
def cli() -> None:
    """Onboard AEIMS sites and migrate AEIMS storage, one reversible step at a time.

    Exit codes: 0 ok, 1 a step failed (rolled back) or the target is busy, 2 bad input or
    usage (nothing changed), 3 a rollback failed (manual attention; the output names what),
    70 an internal error (a bug: please report it).
    """


def _one_line(exc: click.ClickException) -> str:
    """click's error as one line that says where to look, instead of usage + hint + error."""
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message = f"{message.rstrip('.')}; see '{ctx.command_path} --help'"
    return " ".join(message.split())


def _bug(exc: Exception, as_json: bool) -> NoReturn:
    """Last resort for an exception nothing else handled: one redacted line, exit 70."""
    from provisioner.cli.common import fail
    from provisioner.engine.redact import redact_dsn

    if os.environ.get("PROVISION_DEBUG") == "1":
        import traceback

        traceback.print_exc()
    text = redact_dsn(" ".join(str(exc).split()))
    if len(text) > 300:
        text = text[:297] + "..."
    line = f"{type(exc).__name__}: {text}; this is a bug, please report it"
    try:
        fail(line, EXIT_BUG, as_json)
    except Exception:  # the JSON printer itself is broken: plain text still gets out
        click.echo(f"Error: {line}", err=True)
        sys.exit(EXIT_BUG)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the command line; every failure ends in one line and a documented exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in args
    try:
        result: Any = cli.main(args=args, prog_name="provision", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        from provisioner.cli.common import fail

        fail(_one_line(exc), exc.exit_code, as_json)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except Exception as exc:
        _bug(exc, as_json)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
