"""How `site status` and `site list` print: a line per step with its diff, a rich table, JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from provisioner.cli.output import dumps
from provisioner.engine.redact import redact
from provisioner.site.status import DRIFT, ERROR, OK, SKIPPED, SiteStatus

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.site.screenshot import Shot

MARKS = {OK: "✓", SKIPPED: "–", DRIFT: "✗", ERROR: "?"}
EXIT_DRIFT, EXIT_USAGE = 1, 2


@dataclass
class Screenshots:
    """`site status --screenshot`: the PNGs taken, or why none could be (and its exit code)."""

    url: str
    shots: list[Shot] = field(default_factory=list)
    error: str | None = None
    code: int = 0

    def as_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"url": self.url, "error": self.error}
        return {
            "url": self.url,
            "shots": [
                {"path": str(s.path), "width": s.width, "status": s.status, "problems": s.problems}
                for s in self.shots
            ],
        }

    def lines(self) -> list[str]:
        if self.error is not None:
            return [f"No screenshot taken: {self.error}"]
        found = [f"Screenshots of {self.url} (headless Chromium, verified HTTPS):"]
        for shot in self.shots:
            found.append(f"  {shot.width:>4} px: {shot.path} (answered {shot.status})")
            found += [f"          ! {problem}" for problem in shot.problems]
        return found


def screenshots_of(settings: Settings, domain: str, target: Path) -> tuple[Screenshots, int]:
    """The site's page at a phone's and a desktop's width; the exit code it adds (2: no
    browser could be started, 1: the page did not load)."""
    from provisioner.site.screenshot import (
        BrowserUnavailable,
        PageUnreachable,
        SiteBrowser,
        take_screenshots,
    )

    report = Screenshots(url=SiteBrowser(settings, [domain]).url(domain))
    try:
        report.shots = take_screenshots(settings, domain, target)
    except BrowserUnavailable as exc:
        report.error, report.code = str(exc), EXIT_USAGE
    except PageUnreachable as exc:
        report.error, report.code = str(exc), EXIT_DRIFT
    return report, report.code


def status_exit(sites: list[SiteStatus]) -> int:
    return 0 if all(site.converged for site in sites) else EXIT_DRIFT


def print_status(
    sites: list[SiteStatus], as_json: bool, screenshots: Screenshots | None = None
) -> None:
    code = status_exit(sites)
    if as_json:
        payload: dict[str, Any] = {
            "converged": code == 0,
            "failed": code != 0,
            "rc": code,
            "sites": [site.as_json() for site in sites],
        }
        if screenshots is not None:
            rc = max(code, screenshots.code)
            payload.update(failed=rc != 0, rc=rc, screenshots=screenshots.as_json())
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
    if screenshots is not None:
        click.echo("\n".join(screenshots.lines()), err=screenshots.error is not None)


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
