"""`provision certs`: certificates over time, watched and renewed by the tool itself.

Let's Encrypt sends no expiry emails since 2025-06-04 and lifetimes shrink to 45 days by
2028: `certs renew` runs from a timer (contrib/systemd, contrib/cron) and `certs status` is
what a monitoring check runs. Exit codes: 0 all well, 1 an alert (status) or a failed renewal
(renew), 2 bad input or an unknown site.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    json_option,
    lock_timeout_option,
)

if TYPE_CHECKING:
    from provisioner.config import Settings
    from provisioner.site.cert_report import SiteEntry


@click.group("certs")
def certs() -> None:
    """Certificates over time: status with expiry alerts, and renewal of what is due."""


def _sites(as_json: bool, site_ref: str | None) -> tuple[Settings, list[SiteEntry]]:
    """The settings and the sites asked for; an unknown site exits 2 on one line."""
    from provisioner.cli.common import fail, settings_or_exit
    from provisioner.site.cert_report import all_sites, find_site

    settings = settings_or_exit(as_json)
    try:
        if site_ref is None:
            return settings, all_sites(settings)
        found = find_site(settings, site_ref)
    except Exception as exc:  # the data layer's own errors: its message says what is wrong
        fail(f"cannot read the site registry: {exc}", EXIT_FAILED, as_json)
    if found is None:
        fail(
            f"no site {site_ref!r} in the registry (`provision site list` shows them)",
            EXIT_USAGE,
            as_json,
        )
    return settings, [found]


def _site_lines(report: dict[str, Any]) -> list[str]:
    cert = report["certificate"]
    mark = "✗" if report["problems"] else "✓"
    if cert is None:
        return [f"· {report['domain']}: {report.get('note', 'no certificate')}"]
    served = report["served"] or {}
    same = served.get("serial") == cert["serial"]
    window = report["window"]
    attempt = report["last_attempt"]
    lines = [
        f"{mark} {report['domain']}: serial {cert['serial']}, {', '.join(cert['names'])}, "
        f"expires {cert['not_after'][:16]} UTC ({cert['days_left']} days left), "
        f"profile {cert['profile'] or 'unknown'}",
        f"    served: {'the stored certificate' if same else served.get('serial') or 'none'}"
        f"{'' if served.get('verified', True) else ' (not verified)'}"
        if report["served"] is not None
        else "    served: not checked",
        f"    renewal window ({window['source']}): {window['start'][:16]} to "
        f"{window['end'][:16]} UTC{' (due now)' if report['due'] else ''}",
        "    last renewal attempt: "
        + (f"{attempt['outcome']} at {attempt['at'][:16]} UTC" if attempt else "none")
        + (
            f" (replaces {attempt['replaces_outcome']})"
            if attempt and attempt.get("replaces_outcome")
            else ""
        ),
    ]
    if report.get("note"):
        lines.append(f"    note: {report['note']}")
    lines.extend(f"    ! {problem}" for problem in report["problems"])
    return lines


@certs.command("status")
@click.option("--site", "site_ref", default=None, help="A site_id or domain (default: every site).")
@json_option
def status(site_ref: str | None, as_json: bool) -> None:
    """Stored and served certificate of every site, its renewal window, the last renewal
    attempt and when `certs renew` last ran. Exit 0 all well; 1 a certificate under 14 days
    (a quarter of its lifetime if shorter), a failed renewal, nginx serving another
    certificate than the stored one, or no `certs renew` for 2 days; 2 bad input."""
    from provisioner.cli.output import dumps
    from provisioner.site.cert_report import status as gather

    settings, sites = _sites(as_json, site_ref)
    found = gather(settings, sites)
    code = EXIT_OK if found["ok"] else EXIT_FAILED
    if as_json:
        click.echo(dumps({**found, "changed": False, "failed": not found["ok"], "rc": code}))
        sys.exit(code)
    for report in found["sites"]:
        for line in _site_lines(report):
            click.echo(line)
    last = found["last_run"]
    click.echo(
        f"certs renew last ran: {last['finished'][:16]} UTC" if last else "certs renew: never ran"
    )
    for problem in found["problems"]:
        click.echo(f"ALERT: {problem}")
    sys.exit(code)


@certs.command("renew")
@click.option("--site", "site_ref", default=None, help="A site_id or domain (default: every site).")
@click.option("--force", is_flag=True, help="Renew even when not due (the ledger still applies).")
@json_option
@lock_timeout_option
def renew(site_ref: str | None, force: bool, as_json: bool, lock_timeout: float | None) -> None:
    """Renew what is due (inside the CA's ARI window, else a third of the lifetime left), each
    site as a locked, journaled run; nginx reloaded after `nginx -t` and the new certificate
    checked over TLS. Exit 0 nothing failed, 1 a renewal failed (its old certificate still
    serves), 2 bad input."""
    from provisioner.cli.common import runner_for
    from provisioner.cli.output import dumps
    from provisioner.site.renewal import renew_sites

    settings, sites = _sites(as_json, site_ref)
    with runner_for(settings, True, lock_timeout) as runner:  # quiet: one line per site here
        done = renew_sites(runner, settings, sites, force)
    failed = any(d.outcome == "failed" for d in done)
    code = EXIT_FAILED if failed else EXIT_OK
    if as_json:
        click.echo(
            dumps(
                {
                    "changed": any(d.outcome == "renewed" for d in done),
                    "failed": failed,
                    "sites": [d.as_json() for d in done],
                    "rc": code,
                }
            )
        )
        sys.exit(code)
    marks = {"renewed": "✓", "not_due": "·", "skipped": "·", "failed": "✗"}
    for item in done:
        click.echo(f"{marks[item.outcome]} {item.domain}: {item.outcome}: {item.message}")
    if not done:
        click.echo("no sites")
    sys.exit(code)
