"""How `site status` and `site list` print: a line per step with its diff, a rich table, JSON."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from provisioner.cli.output import dumps
from provisioner.engine.redact import redact
from provisioner.site.status import DRIFT, ERROR, OK, SKIPPED, SiteStatus

MARKS = {OK: "✓", SKIPPED: "–", DRIFT: "✗", ERROR: "?"}
EXIT_DRIFT = 1


def status_exit(sites: list[SiteStatus]) -> int:
    return 0 if all(site.converged for site in sites) else EXIT_DRIFT


def print_status(sites: list[SiteStatus], as_json: bool) -> None:
    code = status_exit(sites)
    if as_json:
        payload = {
            "converged": code == 0,
            "failed": code != 0,
            "rc": code,
            "sites": [site.as_json() for site in sites],
        }
        click.echo(dumps(redact(payload)))
        return
    if not sites:
        click.echo("No sites in the registry.")
    for site in sites:
        drifted = [s for s in site.steps if s.state in {DRIFT, ERROR}]
        verdict = (
            "converged"
            if site.converged
            else (site.error or f"{len(drifted)} step(s) drifted or could not be checked")
        )
        state = site.vhost_state.replace("_", " ")
        click.echo(f"{site.domain} ({site.site_id}, {site.status}, vhost {state}): {verdict}")
        for step in site.steps:
            state = {DRIFT: "drift: ", ERROR: ""}.get(step.state, "")
            if step.state == DRIFT and step.present is False:
                state = "missing: "
            click.echo(f"  {MARKS[step.state]} {step.label}: {state}{step.summary}")
            if step.diff:
                click.echo("\n".join("      " + line for line in step.diff.rstrip().splitlines()))


def print_list(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(dumps({"sites": rows, "count": len(rows)}))
        return
    table = Table(title=f"{len(rows)} site(s)")
    for column in ("Site", "Domain", "Name", "Status", "Certificate expires", "Operators"):
        table.add_column(column, justify="right" if column == "Operators" else "left")
    for row in rows:
        expires = row["certificate_expires"]
        table.add_row(
            row["site_id"],
            row["domain"],
            str(row["name"] or ""),
            row["status"],
            expires[:16].replace("T", " ") + " UTC" if expires else "none",
            str(row["operators"]),
        )
    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: whole rows, not 80 columns
        console.width = 240
    console.print(table)
