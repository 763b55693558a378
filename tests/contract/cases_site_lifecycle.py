"""Contract cases of the steps `site enable`, `disable`, `add-operators` and `remove-operators`
add to the site's family: activation (the record's state), operator links, the maintenance
page. (The files, nginx and health steps they reuse have their cases beside this file.)

The AEIMS fixture holds alpha.example.test (live, its domains.json entry active, four
operators linked), beta.example.test (an inactive operator site without a domains.json entry
or operators) and ghost.example.test (no site; four inactive links). Neither site record keeps
intended operators (a site made before they were kept); `kept(...)` arranges one that does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioner.clients import DATA_LAYER
from provisioner.engine.step import RunContext, Step
from provisioner.site.activation import ActivationStep
from provisioner.site.intended_links import IntendedLinksStep
from provisioner.site.intended_operators import FIELD
from provisioner.site.maintenance import PAGE, MaintenancePageStep, render_page
from provisioner.site.operator_links import LinkAction, OperatorLinksStep
from provisioner.site.operators import OperatorsStep
from provisioner.storage import DataLayer
from tests.contract.cases_site_data import aeims_files, aeims_root, data_case, site_world, spec
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


def only_the_set_written(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after the site's intended operators were written, before any link changed."""
    change = step.check(ctx)
    assert change is not None and "intended" in change.after
    site_id = step.spec.site_id  # type: ignore[attr-defined]
    layer = ctx.client(DATA_LAYER)
    layer.save("sites", {**layer.get("sites", site_id), FIELD: change.after["intended"]}, site_id)


def kept(domain: str, ids: list[str], unlinked: tuple[str, ...] = ()) -> Any:
    """The fixture, with the site of `domain` keeping `ids` as its intended operators and the
    operators `unlinked` unlinked from it (by hand, behind the tool's back)."""

    def arrange(world: World) -> None:
        aeims_root(world)
        with DataLayer(site_world(world).data_dir) as layer:
            site_id = domain.replace(".", "_")
            layer.save("sites", {**layer.get("sites", site_id), FIELD: ids}, site_id)
            for op_id in unlinked:
                layer.remove_operator_site(op_id, domain)

    return arrange


def keeps(domain: str, ids: list[str] | None, linked: list[str] | None = None) -> Any:
    """after_apply: the site keeps `ids` (None: no set) and exactly `linked` actively linked
    (default: `ids`)."""

    def after_apply(world: World) -> None:
        found = aeims_files(world)
        site = found["data/sites.json"]["sites"][domain.replace(".", "_")]
        assert site.get(FIELD) == ids, site.get(FIELD)
        now = sorted(
            str(op["id"])
            for op in found["operators"]
            if ((op.get("domains") or {}).get(domain) or {}).get("active") is True
        )
        assert now == sorted(ids if linked is None else linked), now

    return after_apply


ALL_FOUR = ["op_agents_only", "op_jade_001", "op_test_001", "op_zero"]


def kept_case(name: str, kind: type[Step], build: Any, arrange: Any, **expect: Any) -> StepCase:
    return StepCase(
        id=f"site-{kind.name}/{name}",
        kind=kind,
        build=build,
        arrange=arrange,
        snapshot=aeims_files,
        **expect,
    )


LINK_CASES = [
    data_case(
        "links-add-named-starts-the-set",
        OperatorLinksStep,
        links("beta.example.test", LinkAction.ADD, "jade,op_zero"),
        after_apply=keeps("beta.example.test", ["op_jade_001", "op_zero"]),
        partial_apply=first_link_changed,
    ),
    data_case(
        "links-remove-named-starts-the-set-from-the-links",
        OperatorLinksStep,
        links("alpha.example.test", LinkAction.REMOVE, "testop1,op_jade_001"),
        after_apply=keeps("alpha.example.test", ["op_agents_only", "op_zero"]),
        partial_apply=first_link_changed,
    ),
    data_case(
        "links-activate-inactive-links",
        OperatorLinksStep,
        links("ghost.example.test", LinkAction.ACTIVATE),
        partial_apply=first_link_changed,
    ),
    data_case(
        "links-already-linked-starts-the-set",
        OperatorLinksStep,
        links("alpha.example.test", LinkAction.ADD, "jade"),
        after_apply=keeps("alpha.example.test", ALL_FOUR),
    ),
    kept_case(
        "links-add-to-the-kept-set",
        OperatorLinksStep,
        links("beta.example.test", LinkAction.ADD, "op_zero,jade"),
        kept("beta.example.test", ["op_jade_001"]),
        after_apply=keeps("beta.example.test", ["op_jade_001", "op_zero"]),
        partial_apply=only_the_set_written,
    ),
    kept_case(
        "links-remove-from-the-kept-set",
        OperatorLinksStep,
        links("alpha.example.test", LinkAction.REMOVE, "jade"),
        kept("alpha.example.test", ALL_FOUR),
        after_apply=keeps("alpha.example.test", ["op_agents_only", "op_test_001", "op_zero"]),
        partial_apply=only_the_set_written,
    ),
    kept_case(
        "links-already-linked-and-kept",
        OperatorLinksStep,
        links("alpha.example.test", LinkAction.ADD, "jade"),
        kept("alpha.example.test", ALL_FOUR),
        converged=True,
    ),
    kept_case(
        "links-not-linked-to-remove",
        OperatorLinksStep,
        links("beta.example.test", LinkAction.REMOVE, "jade"),
        kept("beta.example.test", []),
        converged=True,
    ),
]

# --------------------------------------------------------------------------------------------
# create's operators step and status's, once the site keeps its intended operators
# --------------------------------------------------------------------------------------------


def operators_step(kind: type[OperatorsStep], domain: str) -> Any:
    def build(world: World) -> OperatorsStep:
        return kind(spec(domain=domain), site_world(world).settings)

    return build


def first_intended_link_changed(step: Step, ctx: RunContext, world: World) -> None:
    """Killed after the first link was taken away (a link nobody intended), nothing else."""
    assert isinstance(step, IntendedLinksStep)
    ctx.client(DATA_LAYER).remove_operator_site("op_agents_only", step.spec.domain)


INTENDED_CASES = [
    kept_case(
        "create-relinks-the-kept-set-only",
        OperatorsStep,
        operators_step(OperatorsStep, "alpha.example.test"),
        kept("alpha.example.test", ["op_jade_001", "op_zero"], unlinked=("op_jade_001",)),
        after_apply=keeps("alpha.example.test", ["op_jade_001", "op_zero"], ALL_FOUR),
    ),
    data_case(
        "create-starts-the-set-with-the-pool",
        OperatorsStep,
        operators_step(OperatorsStep, "beta.example.test"),
        after_apply=keeps("beta.example.test", ALL_FOUR),
        partial_apply=only_the_set_written,
    ),
    kept_case(
        "intended-links-drift-unlinked-gone-and-unintended",
        IntendedLinksStep,
        operators_step(IntendedLinksStep, "alpha.example.test"),
        kept(
            "alpha.example.test",
            ["op_gone_404", "op_jade_001", "op_test_001", "op_zero"],
            unlinked=("op_test_001",),
        ),
        after_apply=keeps("alpha.example.test", ["op_jade_001", "op_test_001", "op_zero"]),
        partial_apply=first_intended_link_changed,
    ),
    kept_case(
        "intended-links-as-kept",
        IntendedLinksStep,
        operators_step(IntendedLinksStep, "alpha.example.test"),
        kept("alpha.example.test", ALL_FOUR),
        converged=True,
    ),
    data_case(
        "intended-links-without-a-set-held-to-the-pool",
        IntendedLinksStep,
        operators_step(IntendedLinksStep, "beta.example.test"),
        after_apply=keeps("beta.example.test", ALL_FOUR),
    ),
    data_case(
        "intended-links-without-a-set-converged",
        IntendedLinksStep,
        operators_step(IntendedLinksStep, "alpha.example.test"),
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


CASES: list[StepCase] = [*ACTIVATION_CASES, *LINK_CASES, *INTENDED_CASES, *PAGE_CASES]
