"""The `provision` command: parses, calls the engine or the data layer, prints."""

from __future__ import annotations

import importlib

import click

from provisioner.cli.demo import demo
from provisioner.cli.run import run
from provisioner.cli.runs import runs

# Command groups living in modules that pull in heavier dependencies, added when present.
_OPTIONAL_GROUPS = (("provisioner.cli.dev", "dev"), ("provisioner.cli.data", "data"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="provisioner")
def cli() -> None:
    """Onboard AEIMS sites and migrate AEIMS storage, one reversible step at a time.

    Exit codes: 0 ok, 1 a step failed (rolled back) or the target is busy, 2 bad input or
    usage (nothing changed), 3 a rollback failed (manual attention; the output names what).
    """


cli.add_command(runs)
cli.add_command(run)
cli.add_command(demo)
for module_name, attr in _OPTIONAL_GROUPS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        continue
    cli.add_command(getattr(module, attr))


def main() -> None:
    cli(prog_name="provision")
