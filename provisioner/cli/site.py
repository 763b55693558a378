"""`provision site`: onboard an AEIMS site end to end, as one planned, locked, reversible run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from provisioner.cli.common import (
    execute,
    json_option,
    lock_timeout_option,
    on_failure_option,
    scope_option,
)

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.engine.pipeline import Pipeline


@click.group("site")
def site() -> None:
    """Create AEIMS sites: record, files, nginx, DNS, certificate, operators, billing, health."""


@site.command("create")
@click.option("--domain", required=True, help="The site's domain, e.g. newflirts.com (IDN ok).")
@click.option("--name", required=True, help='The site\'s display name, e.g. "New Flirts".')
@click.option(
    "--type",
    "site_type",
    type=click.Choice(["customer", "operator"]),
    default="customer",
    show_default=True,
    help="A customer site or an operator site.",
)
@click.option(
    "--template",
    default="default",
    show_default=True,
    help="A folder name under templates/site/ (default: customer site; operator).",
)
@click.option(
    "--operators",
    default=None,
    help="Operator ids or usernames to link, comma-separated (default: the pool's active ones).",
)
@click.option("--plan", is_flag=True, help="Show what would change, with diffs; change nothing.")
@on_failure_option
@scope_option
@json_option
@lock_timeout_option
def create(
    domain: str,
    name: str,
    site_type: str,
    template: str,
    operators: str | None,
    plan: bool,
    on_failure: str,
    scope: str,
    as_json: bool,
    lock_timeout: float | None,
) -> None:
    """Create a site, ready for `provision site enable` (it answers "coming soon" until then)."""
    params = {
        "domain": domain,
        "name": name,
        "type": site_type,
        "template": template,
        "operators": None if operators is None else [o.strip() for o in operators.split(",")],
    }

    def make(settings: Settings) -> Pipeline:
        from provisioner.engine.pipeline import build

        return build("site-create", params, settings)

    execute(
        make,
        plan=plan,
        as_json=as_json,
        lock_timeout=lock_timeout,
        scope=scope,
        keep_on_failure=on_failure == "keep",
    )
