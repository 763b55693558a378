"""`provision demo`: the engine on a real database row and a real rendered file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from provisioner.cli.common import execute, json_option, lock_timeout_option

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.engine.pipeline import Pipeline


@click.command("demo")
@click.option(
    "--name", default="hello", show_default=True, help="Name of the greeting (a-z, 0-9, -)."
)
@click.option("--message", default="Hello from provisioner", show_default=True)
@click.option("--plan", is_flag=True, help="Show what would change, with diffs; change nothing.")
@json_option
@lock_timeout_option
def demo(name: str, message: str, plan: bool, as_json: bool, lock_timeout: float | None) -> None:
    """Write a greeting row to PostgreSQL and render it into a page, as one reversible run."""

    def make(settings: Settings) -> Pipeline:
        from provisioner.engine.pipeline import build

        return build("demo", {"name": name, "message": message}, settings)

    execute(make, plan=plan, as_json=as_json, lock_timeout=lock_timeout)
