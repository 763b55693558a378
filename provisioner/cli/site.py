"""`provision site`: onboard an AEIMS site end to end, as one planned, locked, reversible run."""

from __future__ import annotations

from pathlib import Path
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


# ------------------------------------------------------------------------ status, list, destroy
EXIT_SITE_NOT_FOUND = 4

if TYPE_CHECKING:
    from provisioner.site.registry import SiteRecord


def _registry(
    as_json: bool, site_ref: str | None, missing_code: int
) -> tuple[Settings, list[SiteRecord]]:
    """The settings and the sites asked for (all of them without `site_ref`); an unknown
    site exits `missing_code` on one line."""
    from provisioner.cli.common import fail, settings_or_exit
    from provisioner.site.registry import all_sites, find_site
    from provisioner.storage import DataLayer

    settings = settings_or_exit(as_json)
    try:
        with DataLayer.from_settings(settings) as layer:
            if site_ref is None:
                return settings, all_sites(layer)
            found = find_site(layer, site_ref)
    except Exception as exc:  # the data layer's own errors: its message says what is wrong
        fail(f"cannot read the site registry: {exc}", 1, as_json)
    if found is None:
        fail(
            f"no site {site_ref!r} in the registry (`provision site list` shows them)",
            missing_code,
            as_json,
        )
    return settings, [found]


@site.command("status")
@click.option("--site", "site_ref", default=None, help="A site_id or domain (default: every site).")
@click.option(
    "--screenshot",
    type=click.Path(path_type=Path),
    default=None,
    help="Also save the site's page as a browser shows it: PATH (a .png) at 1280 px and "
    "<stem>-390px.png beside it; in an existing folder, <domain>-<width>px.png.",
)
@json_option
def status(site_ref: str | None, screenshot: Path | None, as_json: bool) -> None:
    """Check every step of a site now and show drift as diffs (exit 0 converged, 1 drift or a
    step that could not be checked, 2 bad input, 4 no such site)."""
    import sys

    from provisioner.cli.common import EXIT_USAGE, fail
    from provisioner.cli.site_report import print_status, status_exit
    from provisioner.engine.backend import open_runner
    from provisioner.engine.errors import UsageError
    from provisioner.site.status import statuses

    if screenshot is not None:
        _check_screenshot_request(site_ref, screenshot, as_json)
    settings, records = _registry(as_json, site_ref, EXIT_SITE_NOT_FOUND)
    try:
        runner = open_runner(settings)  # silent: the report is printed whole at the end
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE, as_json)
    try:
        found = statuses(runner, records)
    finally:
        runner.journal.close()
    if screenshot is None:
        print_status(found, as_json)
        sys.exit(status_exit(found))
    from provisioner.cli.site_report import screenshots_of

    shots, code = screenshots_of(settings, records[0].domain, screenshot)
    print_status(found, as_json, shots)
    sys.exit(max(status_exit(found), code))


def _check_screenshot_request(site_ref: str | None, target: Path, as_json: bool) -> None:
    """A screenshot needs one site, a path it can write and a browser: checked first."""
    from provisioner.cli.common import EXIT_USAGE, fail
    from provisioner.site.screenshot import check_browser, check_target

    if site_ref is None:
        fail("--screenshot needs --site ID: it shows one site", EXIT_USAGE, as_json)
    problem = check_target(target) or check_browser()
    if problem is not None:
        fail(problem, EXIT_USAGE, as_json)


@site.command("list")
@json_option
def list_sites(as_json: bool) -> None:
    """Every site in the registry: status, certificate expiry, operators."""
    from provisioner.cli.common import fail, settings_or_exit
    from provisioner.cli.site_report import print_list
    from provisioner.site.registry import all_sites
    from provisioner.site.status import site_rows
    from provisioner.storage import DataLayer

    settings = settings_or_exit(as_json)
    try:
        with DataLayer.from_settings(settings) as layer:
            rows = site_rows(layer, settings, all_sites(layer))
    except Exception as exc:  # the data layer's own errors: its message says what is wrong
        fail(f"cannot read the site registry: {exc}", 1, as_json)
    print_list(rows, as_json)


@site.command("destroy")
@click.option("--site", "site_ref", required=True, help="The site_id or domain to remove.")
@click.option(
    "--keep-certificate",
    is_flag=True,
    help="Remove the certificate's files without revoking it with the CA.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation on a terminal.")
@click.option("--plan", is_flag=True, help="Show what would be removed; change nothing.")
@on_failure_option
@scope_option
@json_option
@lock_timeout_option
def destroy(
    site_ref: str,
    keep_certificate: bool,
    yes: bool,
    plan: bool,
    on_failure: str,
    scope: str,
    as_json: bool,
    lock_timeout: float | None,
) -> None:
    """Remove a site everywhere (folder archived under <sites_root>/_archived/ first);
    `provision runs rollback ID` brings it back, but a revoked certificate stays revoked."""
    import sys

    _, records = _registry(as_json, site_ref, 2)
    params = {**records[0].params(), "keep_certificate": keep_certificate}
    if not (yes or plan or as_json) and sys.stdin.isatty():
        click.confirm(f"Destroy {params['domain']} everywhere?", abort=True)

    def make(settings: Settings) -> Pipeline:
        from provisioner.engine.pipeline import build

        return build("site-destroy", params, settings)

    execute(
        make,
        plan=plan,
        as_json=as_json,
        lock_timeout=lock_timeout,
        scope=scope,
        keep_on_failure=on_failure == "keep",
    )


# -------------------------------------------------------------- enable, disable, operators
def _run_lifecycle(
    pipeline: str,
    params: dict[str, object],
    *,
    plan: bool,
    scope: str,
    as_json: bool,
    lock_timeout: float | None,
) -> None:
    """Build `pipeline` for a created site (`params["site"]` resolved from the registry by
    the factory: an unknown site or operator exits 2) and plan or run it."""

    def make(settings: Settings) -> Pipeline:
        from provisioner.engine.pipeline import build

        return build(pipeline, params, settings)

    execute(make, plan=plan, as_json=as_json, lock_timeout=lock_timeout, scope=scope)


_site_option = click.option(
    "--site", "site_ref", required=True, help="The site's site_id (newflirts_com) or domain."
)
_plan_option = click.option(
    "--plan", is_flag=True, help="Show what would change, with diffs; change nothing."
)


@site.command("enable")
@_site_option
@_plan_option
@scope_option
@json_option
@lock_timeout_option
def enable(
    site_ref: str, plan: bool, scope: str, as_json: bool, lock_timeout: float | None
) -> None:
    """Put a created site live: its pages served over HTTPS, its record and operator links
    active."""
    _run_lifecycle(
        "site-enable",
        {"site": site_ref},
        plan=plan,
        scope=scope,
        as_json=as_json,
        lock_timeout=lock_timeout,
    )


@site.command("disable")
@_site_option
@_plan_option
@scope_option
@json_option
@lock_timeout_option
def disable(
    site_ref: str, plan: bool, scope: str, as_json: bool, lock_timeout: float | None
) -> None:
    """Take a site down without destroying it: a 503 maintenance page with its name, the
    record inactive; the certificate is kept and still renewed."""
    _run_lifecycle(
        "site-disable",
        {"site": site_ref},
        plan=plan,
        scope=scope,
        as_json=as_json,
        lock_timeout=lock_timeout,
    )


_operator_option = click.option(
    "--operator",
    "operators",
    multiple=True,
    help="An operator's id or username (repeatable).",
)


@site.command("add-operators")
@_site_option
@_operator_option
@click.option("--all-active", is_flag=True, help="Every active operator of the pool.")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="The N active operators not yet linked to the site (in id order).",
)
@_plan_option
@json_option
@lock_timeout_option
def add_operators(
    site_ref: str,
    operators: tuple[str, ...],
    all_active: bool,
    count: int | None,
    plan: bool,
    as_json: bool,
    lock_timeout: float | None,
) -> None:
    """Link operators to a site (through the data layer: any migration phase)."""
    from provisioner.cli.common import EXIT_USAGE, fail

    if sum((bool(operators), all_active, count is not None)) != 1:
        fail("give --operator (repeatable), --all-active or --count N: one of them", EXIT_USAGE,
             as_json)  # fmt: skip
    params: dict[str, object] = {"site": site_ref, "operators": list(operators)}
    params.update(all_active=all_active, count=count)
    _run_lifecycle(
        "site-add-operators",
        params,
        plan=plan,
        scope="all",
        as_json=as_json,
        lock_timeout=lock_timeout,
    )


@site.command("remove-operators")
@_site_option
@_operator_option
@_plan_option
@json_option
@lock_timeout_option
def remove_operators(
    site_ref: str,
    operators: tuple[str, ...],
    plan: bool,
    as_json: bool,
    lock_timeout: float | None,
) -> None:
    """Unlink operators from a site (their link removed; `runs rollback` puts it back)."""
    from provisioner.cli.common import EXIT_USAGE, fail

    if not operators:
        fail("give at least one --operator (an id or a username)", EXIT_USAGE, as_json)
    _run_lifecycle(
        "site-remove-operators",
        {"site": site_ref, "operators": list(operators)},
        plan=plan,
        scope="all",
        as_json=as_json,
        lock_timeout=lock_timeout,
    )
