"""Contract cases of the steps `site enable`, `disable`, `add-operators` and `remove-operators`
add to the site's family: activation (the record's state), operator links, the maintenance
page. (The files, nginx and health steps they reuse have their cases beside this file.)

The AEIMS fixture holds alpha.example.test (live, its domains.json entry active, four
operators linked), beta.example.test (an inactive operator site without a domains.json entry
or operators) and ghost.example.test (no site; four inactive links).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.engine.step import RunContext, Step
from provisioner.site.activation import ActivationStep
from provisioner.site.maintenance import PAGE, MaintenancePageStep, render_page
from provisioner.site.operator_links import LinkAction, OperatorLinksStep
from tests.contract.cases_site_data import aeims_files, data_case, site_world, spec
from tests.contract.harness import StepCase, World, tree

SITE = {"domain": "newflirts.aeims.test", "name": "New Flirts", "type": "customer"}
EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "site-enable": {**SITE, "template": "default", "operators": None},
    "site-disable": {**SITE, "template": "default", "operators": None},
    "site-add-operators": {**SITE, "template": "default", "operators": ["op_jade_001"]},
    "site-remove-operators": {**SITE, "template": "default", "operators": ["op_jade_001"]},
}

# --------------------------------------------------------------------------------------------
# activation: sites.json `active`, domains.json `status`
# --------------------------------------------------------------------------------------------


def activation(domain: str, active: bool) -> Any:
    def build(world: World) -> ActivationStep:
        return ActivationStep(spec(domain=domain), site_world(world).settings, active=active)

    return build


def only_the_site_saved(step: Step, ctx: RunContext, world: World) -> None:
    """Killed between the two records: the site saved, its domains.json entry not yet."""
    assert isinstance(step, ActivationStep)
    change = step.check(ctx)
    assert change is not None
    ctx.client(DATA_LAYER).save("sites", change.after["site"], step.spec.site_id)


def alpha_is_disabled(world: World) -> None:
    found = aeims_files(world)
    assert found["data/sites.json"]["sites"]["alpha_example_test"]["active"] is False
    assert found["data/domains.json"]["alpha.example.test"]["status"] == "disabled"


ACTIVATION_CASES = [
    data_case(
        "disable-a-live-site",
        ActivationStep,
        activation("alpha.example.test", active=False),
        after_apply=alpha_is_disabled,
        partial_apply=only_the_site_saved,
    ),
    data_case(
        "enable-without-a-domains-entry",
        ActivationStep,
        activation("beta.example.test", True),
    ),
    data_case(
        "already-live", ActivationStep, activation("alpha.example.test", True), converged=True
    ),
]

# --------------------------------------------------------------------------------------------
# operator links: added, removed, activated
# --------------------------------------------------------------------------------------------


def links(domain: str, action: LinkAction, operators: str | None = None) -> Any:
    def build(world: World) -> OperatorLinksStep:
        site = spec(domain=domain, operators=operators)
        return OperatorLinksStep(site, site_world(world).settings, action)

    return build


def first_link_changed(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after the first operator's link was changed."""
    assert isinstance(step, OperatorLinksStep)
    layer = ctx.client(DATA_LAYER)
    first = str(step.targets(layer)[0]["id"])
    if step.action is LinkAction.REMOVE:
        layer.remove_operator_site(first, step.spec.domain)
    else:
        layer.set_operator_site(first, step.spec.domain)


LINK_CASES = [
    data_case(
        "links-add-named",
        OperatorLinksStep,
        links("beta.example.test", LinkAction.ADD, "jade,op_zero"),
        partial_apply=first_link_changed,
    ),
    data_case(
        "links-remove-named",
        OperatorLinksStep,
        links("alpha.example.test", LinkAction.REMOVE, "testop1,op_jade_001"),
        partial_apply=first_link_changed,
    ),
    data_case(
        "links-activate-inactive-links",
        OperatorLinksStep,
        links("ghost.example.test", LinkAction.ACTIVATE),
        partial_apply=first_link_changed,
    ),
    data_case(
        "links-already-linked",
        OperatorLinksStep,
        links("alpha.example.test", LinkAction.ADD, "jade"),
        converged=True,
    ),
    data_case(
        "links-not-linked-to-remove",
        OperatorLinksStep,
        links("beta.example.test", LinkAction.REMOVE, "jade"),
        converged=True,
    ),
]

# --------------------------------------------------------------------------------------------
# the maintenance page
# --------------------------------------------------------------------------------------------

FOLDER = Path("sites/newflirts.com")


def page_step(world: World) -> MaintenancePageStep:
    return MaintenancePageStep(spec(), site_world(world).settings)


def site_folder(page: str | None = None) -> Any:
    """The site's folder, holding `page` as maintenance.html when given ("old": a render for
    the site's earlier name; else that text, as written by hand)."""

    def arrange(world: World) -> None:
        site_world(world)
        folder = world.root / FOLDER
        folder.mkdir(parents=True)
        (folder / "index.html").write_text("<h1>New Flirts</h1>\n")
        if page is not None:
            text = render_page(spec(name="Old Flirts")) if page == "old" else page
            (folder / PAGE).write_text(text)
            (folder / PAGE).chmod(0o640)

    return arrange


def page_shows_the_name(world: World) -> None:
    page = (world.root / FOLDER / PAGE).read_text()
    assert "<h1>New Flirts</h1>" in page and "maintenance" in page


def killed_mid_write(step: Step, ctx: RunContext, world: World) -> None:
    """Killed inside `write_atomically`: a torn temp file beside the page."""
    assert isinstance(step, MaintenancePageStep)
    torn = step.path.parent / f".{PAGE}.k1lled.tmp"
    torn.write_text(render_page(step.spec)[:40])


def page_case(name: str, arrange: Any, **expect: Any) -> StepCase:
    return StepCase(
        id=f"site-maintenance-page/{name}",
        kind=MaintenancePageStep,
        build=page_step,
        arrange=arrange,
        snapshot=lambda world: tree(world.root / "sites"),
        **expect,
    )


PAGE_CASES = [
    page_case(
        "new-page",
        site_folder(),
        after_apply=page_shows_the_name,
        partial_apply=killed_mid_write,
    ),
    page_case("renamed-site", site_folder("old"), after_apply=page_shows_the_name),
    page_case("written-by-hand-kept", site_folder("<h1>Back at 5</h1>\n"), converged=True),
    page_case("already-written", lambda world: _rendered(world), converged=True),
]


def _rendered(world: World) -> None:
    site_folder()(world)
    (world.root / FOLDER / PAGE).write_text(render_page(spec()))


CASES: list[StepCase] = [*ACTIVATION_CASES, *LINK_CASES, *PAGE_CASES]
